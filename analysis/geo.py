"""IP-to-ASN and IP-to-country lookups from MaxMind-format (MMDB) databases, and `vantage geo
update`, which downloads DB-IP's free "IP to ASN Lite" and "IP to Country Lite" (CC BY 4.0).

The lookup reads DB-IP lite and MaxMind GeoLite2 layouts (``autonomous_system_number`` /
``autonomous_system_organization``, ``country.iso_code``) and IPinfo's flat one (``asn``,
``as_name``, ``country_code``).
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from analysis import downloads
from analysis.downloads import DownloadError
from probe.errors import VantageError

UPSTREAM = "https://download.db-ip.com/free"
URL_BASE_ENV = "VANTAGE_GEO_URL_BASE"
ASN_FILE = "asn.mmdb"
COUNTRY_FILE = "country.mmdb"
# (what, file name here, DB-IP's monthly file name pattern)
DATABASES = (
    ("asn", ASN_FILE, "dbip-asn-lite-{month}.mmdb.gz"),
    ("country", COUNTRY_FILE, "dbip-country-lite-{month}.mmdb.gz"),
)
LABELS = {"asn": "IP-to-ASN", "country": "IP-to-country"}
ATTRIBUTION = '<a href="https://db-ip.com">IP Geolocation by DB-IP</a> (CC BY 4.0)'


class GeoError(VantageError):
    """A geo database cannot be used (missing, corrupt, or not the kind asked for); the message
    names the file."""


@dataclass(frozen=True, slots=True)
class GeoInfo:
    asn: str | None  # "AS13335"
    org: str | None  # the AS's organisation name
    country: str | None  # ISO 3166 alpha-2, upper case


def geo_dir() -> Path:
    """Where `vantage geo update` keeps the databases (user data directory)."""
    return Path(platformdirs.user_data_dir("vantage", appauthor=False)) / "geo"


def default_asn_db(data_dir: Path | None = None) -> Path | None:
    """The ASN database `vantage geo update` downloaded, or None when there is none."""
    p = (data_dir if data_dir is not None else geo_dir()) / ASN_FILE
    return p if p.is_file() else None


def default_country_db(data_dir: Path | None = None) -> Path | None:
    """The country database `vantage geo update` downloaded, or None when there is none."""
    p = (data_dir if data_dir is not None else geo_dir()) / COUNTRY_FILE
    return p if p.is_file() else None


# --------------------------------------------------------------------------- reading


def _asn_of(rec: dict[str, Any]) -> tuple[str | None, str | None]:
    n = rec.get("autonomous_system_number", rec.get("asn"))
    org = rec.get("autonomous_system_organization", rec.get("as_name"))
    asn: str | None = None
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        asn = f"AS{n}"
    elif isinstance(n, str) and n.strip():
        s = n.strip().upper()
        asn = s if s.startswith("AS") else f"AS{s}"
    return asn, org if isinstance(org, str) and org else None


def _country_of(rec: dict[str, Any]) -> str | None:
    c = rec.get("country")
    code = c.get("iso_code") if isinstance(c, dict) else rec.get("country_code")
    if code is None and isinstance(rec.get("registered_country"), dict):
        code = rec["registered_country"].get("iso_code")
    return code.upper() if isinstance(code, str) and len(code) == 2 else None


def _kind_of_record(rec: object) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "autonomous_system_number" in rec or "asn" in rec:
        return "asn"
    if isinstance(rec.get("country"), dict) or "country_code" in rec or "registered_country" in rec:
        return "country"
    return None


def open_reader(path: Path | str, kind: str) -> object:
    """An open maxminddb reader for an ``kind`` ("asn" or "country") database; GeoError (naming
    the file) when it is not a readable MMDB database of that kind."""
    import maxminddb

    path = Path(path)
    try:
        reader = maxminddb.open_database(str(path))
    except FileNotFoundError:
        raise GeoError(f"{path}: no such file") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"{path}: not a MaxMind-format (MMDB) database ({exc})") from None
    try:
        found = _database_kind(reader)
    except (ValueError, OSError, maxminddb.InvalidDatabaseError) as exc:
        reader.close()
        raise GeoError(f"{path}: corrupt MMDB database ({exc})") from None
    if found != kind:
        dtype = reader.metadata().database_type
        reader.close()
        what = f"an {LABELS[found]}" if found else "an unknown kind of"
        raise GeoError(f"{path}: {what} database, not an {LABELS[kind]} one (type {dtype!r})")
    return reader


def _database_kind(reader: object) -> str | None:
    """ "asn" or "country" (City databases count as country): from the type name, else from
    the records themselves (a test or third-party file may be named anything)."""
    dtype = str(reader.metadata().database_type).lower()  # type: ignore[attr-defined]
    if "asn" in dtype:
        return "asn"
    if "country" in dtype or "city" in dtype:
        return "country"
    for probe_ip in ("1.1.1.1", "8.8.8.8", "2001:4860:4860::8888", "193.0.14.129"):
        try:
            rec = reader.get(probe_ip)  # type: ignore[attr-defined]
        except ValueError:  # an IPv6 address in an IPv4-only database
            continue
        kind = _kind_of_record(rec)
        if kind:
            return kind
    for i, (_, rec) in enumerate(reader):  # type: ignore[arg-type]
        kind = _kind_of_record(rec)
        if kind or i > 100:
            return kind
    return None


class GeoLookup:
    """(ASN, organisation, country) of an address from an ASN and/or a country database."""

    def __init__(self, asn_db: Path | str | None = None, country_db: Path | str | None = None) -> None:
        self.asn_db = Path(asn_db) if asn_db else None
        self.country_db = Path(country_db) if country_db else None
        self._asn = open_reader(self.asn_db, "asn") if self.asn_db else None
        self._country = open_reader(self.country_db, "country") if self.country_db else None

    @classmethod
    def default(cls, data_dir: Path | None = None) -> GeoLookup | None:
        """The databases `vantage geo update` downloaded, or None when there are none."""
        a, c = default_asn_db(data_dir), default_country_db(data_dir)
        return cls(a, c) if (a or c) else None

    def _get(self, reader: object, path: Path | None, ip: str) -> dict[str, Any] | None:
        try:
            rec = reader.get(ip)  # type: ignore[attr-defined]
        except ValueError:  # not an address, or IPv6 in an IPv4-only database
            return None
        except Exception as exc:  # a file corrupt past its metadata fails only on lookup
            raise GeoError(f"{path}: corrupt MMDB database ({exc})") from None
        return rec if isinstance(rec, dict) else None

    def lookup(self, ip: str) -> GeoInfo:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return GeoInfo(None, None, None)
        asn = org = country = None
        if self._asn is not None:
            rec = self._get(self._asn, self.asn_db, ip)
            if rec:
                asn, org = _asn_of(rec)
                country = _country_of(rec)  # IPinfo's combined database carries both
        if self._country is not None:
            rec = self._get(self._country, self.country_db, ip)
            if rec:
                country = _country_of(rec) or country
        return GeoInfo(asn, org, country)

    def asn(self, ip: str) -> str | None:
        return self.lookup(ip).asn

    def close(self) -> None:
        for r in (self._asn, self._country):
            if r is not None:
                r.close()  # type: ignore[attr-defined]

    def __enter__(self) -> GeoLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- updating


@dataclass(frozen=True, slots=True)
class GeoUpdateResult:
    dest: Path
    files: list[tuple[str, str, int]]  # (file here, source URL, records checked)


def _months(today: dt.date) -> list[str]:
    """This month, then last month: DB-IP publishes each month's file early in the month, so at
    the start of a month only last month's may exist yet."""
    first = today.replace(day=1)
    prev = first - dt.timedelta(days=1)
    return [first.strftime("%Y-%m"), prev.strftime("%Y-%m")]


def _gunzip(data: bytes, url: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DownloadError(f"{url}: not a gzip file ({exc})") from None


def _validator(kind: str, url: str) -> Callable[[Path], int]:
    def validate(tmp: Path) -> int:
        try:
            reader = open_reader(tmp, kind)
        except GeoError as exc:
            raise DownloadError(f"{url}: {str(exc).replace(str(tmp), 'the downloaded file')}") from None
        try:
            for ip in ("1.1.1.1", "8.8.8.8", "193.0.14.129", "2001:4860:4860::8888"):
                try:
                    reader.get(ip)  # type: ignore[attr-defined]
                except ValueError:  # IPv6 in an IPv4-only database
                    pass
            return int(reader.metadata().node_count)  # type: ignore[attr-defined]
        except Exception as exc:  # a search tree corrupt past the metadata
            raise DownloadError(f"{url}: corrupt MMDB database ({exc})") from None
        finally:
            reader.close()  # type: ignore[attr-defined]

    return validate


def update_geo(*, url_base: str | None = None, dest: Path | None = None, timeout: float = 120.0,
               today: dt.date | None = None) -> GeoUpdateResult:
    """Download DB-IP's IP-to-ASN and IP-to-country lite databases into ``dest`` (this month's,
    or last month's when this month's is not out yet). Both are checked with maxminddb before
    either replaces the old copy; on any failure nothing is replaced and DownloadError says why.
    """
    dest = Path(dest) if dest is not None else geo_dir()
    base = (url_base or os.environ.get(URL_BASE_ENV) or UPSTREAM).rstrip("/")
    months = _months(today or dt.datetime.now(dt.UTC).date())
    staged: list[tuple[Path, str]] = []
    entries: list[downloads.ManifestEntry] = []
    try:
        with downloads.client(timeout) as http:
            for kind, name, pattern in DATABASES:
                data, url = b"", ""
                for i, month in enumerate(months):
                    url = f"{base}/{pattern.format(month=month)}"
                    try:
                        data = downloads.fetch(http, url)
                        break
                    except downloads.NotFound:
                        if i == len(months) - 1:
                            raise
                raw = _gunzip(data, url)
                tmp, rows = downloads.staged(dest, name, raw, _validator(kind, url))
                staged.append((tmp, name))
                entries.append(downloads.entry(name, url, raw, rows))
        downloads.commit(dest, staged, entries)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; nothing replaced (an earlier copy is kept)") from None
    finally:
        downloads.discard(staged)
    return GeoUpdateResult(dest=dest, files=[(e.file, e.url, e.rows) for e in entries])
