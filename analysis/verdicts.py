"""Per-measurement verdicts: each probe measurement judged against its control (ok, blocked at
which layer and how, throttled and by what factor, down, probe failure, no control, no connectivity), computed in DuckDB over
whole tables. The rules themselves are analysis/rules.py's table."""

from __future__ import annotations

import bisect
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from analysis import connectivity, messaging, rules, throughput
from analysis.db import missing_columns_sql, quote_ident
from analysis.fingerprints import Fingerprint, FingerprintSet, load_fingerprints
from analysis.messaging import FUNCTIONS_TYPE
from probe.errors import VantageError

log = logging.getLogger(__name__)

STATUSES = ("ok", "blocked", "down", "probe_failure", "no_control", "no_connectivity", "throttled")
LAYERS = ("dns", "tcp_ip", "tls", "http-failure", "http-diff", "vpn", "quic")

VERDICT_SCHEMA = pa.schema(
    [
        pa.field("measurement_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("input", pa.string()),
        pa.field("experiment", pa.string()),
        pa.field("probe_cc", pa.string()),
        pa.field("probe_asn", pa.string()),
        pa.field("measurement_start_time", pa.timestamp("us", tz="UTC")),
        pa.field("status", pa.string()),
        pa.field("layer", pa.string()),
        pa.field("method", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("confirmed", pa.bool_()),
        pa.field("fingerprint", pa.string()),
        # throughput: how many times slower than the control and the link (analysis/throughput.py)
        pa.field("throttle_factor", pa.float64()),
        # Messaging apps: one entry per function (analysis/messaging.py FUNCTION_TYPE); NULL otherwise.
        pa.field("functions", FUNCTIONS_TYPE),
    ]
)
# Verdict columns added after verdict files were first written: an older file reads with NULLs.
ADDED_VERDICT_COLUMNS = frozenset({"throttle_factor", "functions"})

# Addresses no public DNS answer should point to (IANA special-purpose registries): a resolver
# that answers with one of them for a public name is lying. --public-net removes networks.
BOGON_NETS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
)  # fmt: skip


class VerdictError(VantageError):
    """Verdicts cannot be computed (bad option value); the message says which."""


class BogonChecker:
    """Is an address in a bogon network that is not declared public? Range lookups by bisect."""

    def __init__(self, public_nets: Sequence[str] = ()) -> None:
        try:
            public = [ipaddress.ip_network(n, strict=False) for n in public_nets]
        except ValueError as exc:
            raise VerdictError(f"--public-net: {exc}") from None
        self._ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for text in BOGON_NETS:
            net = ipaddress.ip_network(text)
            pieces: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [net]
            for pub in public:
                if pub.version != net.version:
                    continue
                nxt: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
                for piece in pieces:
                    if pub.supernet_of(piece):  # type: ignore[arg-type]
                        continue
                    if piece.supernet_of(pub):  # type: ignore[arg-type]
                        nxt.extend(piece.address_exclude(pub))  # type: ignore[arg-type]
                    else:
                        nxt.append(piece)
                pieces = nxt
            for piece in pieces:
                self._ranges[net.version].append((int(piece.network_address), int(piece.broadcast_address)))
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        for v in (4, 6):
            self._ranges[v].sort()
            self._starts[v] = [a for a, _ in self._ranges[v]]

    def __call__(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return self(addr.ipv4_mapped) or self._in(6, int(addr))
        return self._in(addr.version, int(addr))

    def _in(self, version: int, value: int) -> bool:
        i = bisect.bisect_right(self._starts[version], value) - 1
        return i >= 0 and self._ranges[version][i][1] >= value


def host_of(url: str | None) -> str | None:
    """The host a URL (or tunnel endpoint URL) names, lower case, IDNA-encoded as the TLS SNI
    and DNS records carry it."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return host.lower()


def _net_of(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    # The /24 (IPv4) or /48 (IPv6) an address lives in. It stays as evidence of consistency, one
    # way only: a /24 (/48) is the longest prefix announced in BGP, so two addresses in one are
    # routed to one origin network (a load-balancer pool), and a censor's sinkhole does not
    # share a /24 with the site it replaces. The other way it says nothing: geo-DNS hands out
    # addresses of other /24s of the same network on other continents, so a different /24 is
    # never evidence of inconsistency; the ASN (answers' own, or --asn-db), a validated TLS
    # handshake and the HTTP comparison decide those.
    if addr.version == 4:
        return str(ipaddress.ip_network(f"{addr}/24", strict=False))
    return str(ipaddress.ip_network(f"{addr}/48", strict=False))


IPINFO_SCHEMA = pa.schema(
    [("v", pa.string()), ("bogon", pa.bool_()), ("net", pa.string()), ("asn", pa.string()),
     ("fp", pa.string()), ("conf", pa.float64())]
)  # fmt: skip


def classify_values(
    values: Iterable[str],
    *,
    bogon: BogonChecker,
    dns_fingerprints: dict[str, Fingerprint],
    asn_lookup: Callable[[str], str | None] | None = None,
    answer_asns: dict[str, str] | None = None,
) -> pa.Table:
    """One row per distinct DNS answer value: bogon?, network, ASN, DNS fingerprint. The ASN is
    the one the measuring side recorded with the answer (``answer_asns``, OONI's per-answer
    ASN), else ``asn_lookup``'s (an IP-to-ASN database)."""
    cols: dict[str, list[Any]] = {name: [] for name in IPINFO_SCHEMA.names}
    for v in values:
        fp = dns_fingerprints.get(v.rstrip("."))
        try:
            addr = ipaddress.ip_address(v)
        except ValueError:
            addr = None
        cols["v"].append(v)
        cols["bogon"].append(bogon(addr) if addr is not None else False)
        cols["net"].append(_net_of(addr) if addr is not None else None)
        asn = (answer_asns or {}).get(v)
        if asn is None and asn_lookup is not None and addr is not None:
            asn = asn_lookup(v)
        cols["asn"].append(asn)
        cols["fp"].append(fp.name if fp else None)
        cols["conf"].append(fp.confidence if fp else None)
    return pa.table(cols, schema=IPINFO_SCHEMA)


def maxmind_asn_lookup(path: Path | str) -> Callable[[str], str | None]:
    """ASN of an address from a MaxMind-format ASN database (GeoLite2-ASN, IPinfo, DB-IP)."""
    import maxminddb

    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError) as exc:
        raise VerdictError(f"{path}: not a MaxMind ASN database ({exc})") from None

    def lookup(ip: str) -> str | None:
        rec = reader.get(ip)
        if isinstance(rec, dict):
            n = rec.get("autonomous_system_number") or rec.get("asn")
            if isinstance(n, int):
                return normalize_asn(n)
            if isinstance(n, str) and n:
                return normalize_asn(n)
        return None

    return lookup


def normalize_asn(value: object) -> str | None:
    """``AS<n>`` from an ASN as OONI, a database or a probe writes it (13335, "13335",
    "as13335"); None for unknown (OONI writes 0 when it does not know)."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().upper()
    if text.startswith("AS"):
        text = text[2:]
    if not text.isdigit() or int(text) == 0:
        return None
    return f"AS{int(text)}"


# The ASN recorded with each pending answer (DnsAnswer.asn), by value. An address belongs to one
# origin network at a time, so one ASN per value across the dataset is enough.
_ANSWER_ASNS = """
SELECT a.value AS v, any_value(a.asn) AS asn
FROM (SELECT unnest(flatten(list_transform(dns, lambda q: q.answers))) AS a FROM measurements
      WHERE measurement_id IN (SELECT mid FROM _vt_v WHERE len(odd_vals) > 0
                               UNION ALL SELECT cid FROM _vt_v WHERE len(odd_vals) > 0))
WHERE a.asn IS NOT NULL AND a.value IN (SELECT unnest($values))  -- bound: the pending answer values
GROUP BY a.value
"""


def _answer_asns(con: duckdb.DuckDBPyConnection, values: list[str]) -> dict[str, str]:
    if not values:
        return {}
    dns_type = str(con.sql("SELECT dns FROM measurements LIMIT 0").types[0])
    if "asn" not in dns_type.lower():  # datasets written before DnsAnswer.asn existed
        return {}
    out: dict[str, str] = {}
    for v, asn in con.execute(_ANSWER_ASNS, {"values": values}).fetchall():
        n = normalize_asn(asn)
        if n is not None:
            out[v] = n
    return out


def _as_fingerprint_set(fingerprints: FingerprintSet | Iterable[Path | str] | None) -> FingerprintSet:
    if fingerprints is None:
        return load_fingerprints()
    if isinstance(fingerprints, FingerprintSet):
        return fingerprints
    return load_fingerprints(list(fingerprints))


def _match_http_fingerprints(con: duckdb.DuckDBPyConnection, fps: FingerprintSet) -> pa.Table:
    """Blockpage matches for the candidate probe measurements: (mid, http_fp, http_fp_conf)."""
    schema = pa.schema([("mid", pa.string()), ("http_fp", pa.string()), ("http_fp_conf", pa.float64())])
    out: dict[str, list[Any]] = {"mid": [], "http_fp": [], "http_fp_conf": []}
    if not fps.http:
        return pa.table(out, schema=schema)
    matcher = fps.http_matcher
    # Streamed in batches: only the candidates' body samples, never all of them at once.
    for batch in con.sql(rules.FP_INPUT).to_arrow_reader(batch_size=10_000):
        for mid, hops in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            hit: Fingerprint | None = None
            for hop in hops or []:
                # A false-positive signature anywhere in the response vetoes a match in it.
                hit = matcher.match_response(((h[0], h[1]) for h in hop["headers"] or []), hop["body"])
                if hit is not None:
                    break
            if hit is not None:
                out["mid"].append(mid)
                out["http_fp"].append(hit.name)
                out["http_fp_conf"].append(hit.confidence)
    return pa.table(out, schema=schema)


def _load(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """An Arrow table computed in Python becomes the temp table ``name`` that rules' SQL reads.
    These names are the verdict stage's own scratch tables, private to compute_verdicts."""
    view = quote_ident(name + "_arrow")
    con.register(name + "_arrow", table)
    # DDL takes no bound identifiers: both names are quoted
    con.execute(f"CREATE OR REPLACE TEMP TABLE {quote_ident(name)} AS SELECT * FROM {view}")
    con.unregister(name + "_arrow")


def _drop(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """Drop scratch tables as soon as no later step reads them (under a memory limit, what they
    hold is memory the next join does not get)."""
    for name in names:
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")


def compute_verdicts(
    con: duckdb.DuckDBPyConnection,
    *,
    public_nets: Sequence[str] = (),
    fingerprints: FingerprintSet | Iterable[Path | str] | None = None,
    control_window_h: float = 6,
    asn_db: Path | str | None = None,
    offline: pa.Table | None = None,
) -> pa.Table:
    """One verdict row per probe measurement of the ``measurements`` view (see VERDICT_SCHEMA).

    ``fingerprints``: a loaded set, or extra CSV files to load next to the project's own (None:
    the project's own only). ``asn_db``: optional MaxMind ASN database for the ASN-overlap rule
    (the ASN recorded with an answer, as OONI imports carry it, comes first).

    Connectivity comes first (analysis/connectivity.py): measurements taken where the vantage
    point had no network get ``no_connectivity``. Every verdict's ``method`` is a rule id of
    ``analysis.rules.RULES``. One row per distinct probe measurement id, duplicates or not.

    ``offline``: the measurements taken without connectivity, (mid, role) rows of
    ``connectivity.offline_table`` computed over ALL rows, for a caller that hands this function
    a shard of the data (analysis/spark_engine.py): connectivity is a cross-input aggregate per
    vantage point and hour, which a shard cannot compute alone. None: computed here.

    The whole table in memory; :func:`verdict_batches` streams the same rows in batches.
    """
    with verdict_relation(con, public_nets=public_nets, fingerprints=fingerprints,
                          control_window_h=control_window_h, asn_db=asn_db, offline=offline) as rel:
        table = rel.to_arrow_table()
    return table.cast(VERDICT_SCHEMA)


def verdict_batches(con: duckdb.DuckDBPyConnection, *, batch_size: int = 122_880,
                    **kwargs: Any) -> Iterator[pa.RecordBatch]:
    """:func:`compute_verdicts`' rows, in its order, as VERDICT_SCHEMA record batches of at
    most ``batch_size`` rows: the verdict table is never whole in memory (DuckDB sorts it,
    spilling beyond its memory limit, and hands it over batch by batch). Same keyword
    arguments as :func:`compute_verdicts`."""
    with verdict_relation(con, **kwargs) as rel:
        reader = rel.to_arrow_reader(batch_size=batch_size)
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch]).cast(VERDICT_SCHEMA).combine_chunks().to_batches()[0]


# Every scratch table and view the stage makes (its own and its evidence modules'): dropped when
# the verdicts have been read, whatever happened.
_SCRATCH_TABLES = ("_vt_cf", "_vt_v", "_vt_dns", "_vt_direct", "_vt_meta", "_vt_hosts", "_vt_pair",
                   "_vt_ipinfo", "_vt_httpfp", "_vt_msg")


@contextmanager
def verdict_relation(
    con: duckdb.DuckDBPyConnection,
    *,
    public_nets: Sequence[str] = (),
    fingerprints: FingerprintSet | Iterable[Path | str] | None = None,
    control_window_h: float = 6,
    asn_db: Path | str | None = None,
    offline: pa.Table | None = None,
) -> Iterator[duckdb.DuckDBPyRelation]:
    """The evidence steps, then the decision as a DuckDB relation over the scratch tables
    (VERDICT_SCHEMA's columns, before the cast): read it inside the ``with``; the scratch
    tables are dropped on leaving it. Arguments as :func:`compute_verdicts`."""
    if control_window_h < 0:
        raise VerdictError("--control-window must be zero or more hours")
    fps = _as_fingerprint_set(fingerprints)
    bogon = BogonChecker(public_nets)
    asn_lookup = maxmind_asn_lookup(asn_db) if asn_db else None
    try:
        for macro in rules.MACROS:
            con.execute(macro)
        con.execute(rules.measurements_view_sql(missing_columns_sql(con, "measurements")))
        con.execute(rules.PAIRING, {"window_s": float(control_window_h) * 3600.0})
        con.execute(rules.PAIRED_HOSTS)
        _drop(con, "_vt_meta", "_vt_direct")  # scratch of the pairing: memory the next steps need
        inputs = con.sql("SELECT input FROM _vt_hosts").to_arrow_table().column(0).to_pylist()
        hosts = pa.table({"input": inputs, "host": [host_of(i) for i in inputs]})
        _load(con, "_vt_hosts", hosts)
        con.execute(rules.CONTROL_FEATURES)
        con.execute(rules.PROBE_FEATURES)
        values = con.sql(rules.PENDING_VALUES).to_arrow_table().column(0).to_pylist()
        ipinfo = classify_values(values, bogon=bogon, dns_fingerprints=fps.dns_lookup(), asn_lookup=asn_lookup,
                                 answer_asns=_answer_asns(con, values))
        _load(con, "_vt_ipinfo", ipinfo)
        con.execute(rules.PENDING)
        _load(con, "_vt_httpfp", _match_http_fingerprints(con, fps))
        messaging.messaging_table(con, lambda name, table: _load(con, name, table))
        if offline is None:
            connectivity.create_connectivity_tables(con)
        else:
            _load(con, "_vt_offline", offline.select(["mid", "role"]))
        throughput.create_throughput_table(con)
        _drop(con, "_vt_pair")  # the messaging and throughput steps above read the pairing
        yield con.sql(rules.decision_sql())
    finally:
        throughput.drop_throughput_tables(con)
        _drop(con, *_SCRATCH_TABLES)
        con.execute("DROP VIEW IF EXISTS _vt_m")
        connectivity.drop_connectivity_tables(con)
