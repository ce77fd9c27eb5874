"""The messaging apps' endpoints: a CSV list (testlists/messaging.csv, shipped as
probe/data/messaging.csv) with one row per endpoint:

    app,function,kind,host,port,path,notes

``app`` is the experiment's name; ``function`` what the endpoint serves the app for
(registration, messaging, web); ``kind`` the deepest step measured (tcp: DNS and a TCP connect;
tls: and a TLS handshake with the host as SNI; http/https: and one GET of ``path``). A newer list
is fetched by `vantage lists update-messaging` (probe/messaging_endpoints.py); a lab passes its own file (--messaging-endpoints).
"""

from __future__ import annotations

import csv
import io
import ipaddress
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from probe.experiments.base import InputError

APPS = ("signal", "telegram", "whatsapp", "facebook_messenger")
FUNCTIONS = ("registration", "messaging", "web")
KINDS = ("tcp", "tls", "http", "https")
COLUMNS = ("app", "function", "kind", "host", "port", "path", "notes")


@dataclass(frozen=True)
class AppEndpoint:
    app: str
    function: str
    kind: str
    host: str
    port: int
    path: str = "/"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def label(self) -> str:
        """host:port ([v6]:port), the endpoint's name in tags and in the per-function verdicts."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def tag(self) -> str:
        """The observations' tag: ``<function>@<host:port>`` (the analyzer groups by it)."""
        return f"{self.function}@{self.label}"

    @property
    def url(self) -> str:
        scheme = "https" if self.kind == "https" else "http"
        default = 443 if scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{scheme}://{netloc}{self.path or '/'}"


def shipped_endpoints_path() -> Path:
    return Path(str(resources.files("probe") / "data" / "messaging.csv"))


def downloaded_endpoints_path() -> Path:
    from probe.testlists import lists_dir

    return lists_dir() / "messaging.csv"


def default_endpoints_path() -> Path:
    """The downloaded copy (`vantage lists update-messaging`) if there is one, else the shipped list."""
    downloaded = downloaded_endpoints_path()
    return downloaded if downloaded.is_file() else shipped_endpoints_path()


def parse_endpoints(text: str, source: str = "<list>") -> list[AppEndpoint]:
    """Every row of a messaging endpoints CSV; InputError naming the first bad row."""
    rows = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("app", "function", "kind", "host", "port") if c not in (rows.fieldnames or [])]
    if missing:
        raise InputError(f"{source}: not a messaging endpoints list (missing columns: {', '.join(missing)})")
    out: list[AppEndpoint] = []
    for row in rows:
        where = f"{source}:{rows.line_num}"
        app = (row.get("app") or "").strip().lower()
        if not app or app.startswith("#"):
            continue
        function = (row.get("function") or "").strip().lower()
        kind = (row.get("kind") or "").strip().lower()
        host = (row.get("host") or "").strip().strip("[]").lower()
        if app not in APPS:
            raise InputError(f"{where}: app must be one of {', '.join(APPS)}, got {app!r}")
        if function not in FUNCTIONS:
            raise InputError(f"{where}: function must be one of {', '.join(FUNCTIONS)}, got {function!r}")
        if kind not in KINDS:
            raise InputError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not host or any(c in host for c in "/ @?#"):
            raise InputError(f"{where}: bad host {host!r}")
        try:
            port = int((row.get("port") or "").strip())
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise InputError(f"{where}: port must be 1-65535, got {row.get('port')!r}")
        path = (row.get("path") or "").strip() or "/"
        if not path.startswith("/"):
            raise InputError(f"{where}: path must start with '/', got {path!r}")
        out.append(AppEndpoint(app, function, kind, host, port, path))
    return out


def load_endpoints(path: Path | str | None, app: str) -> list[AppEndpoint]:
    """The endpoints of ``app`` from ``path`` (None: :func:`default_endpoints_path`)."""
    p = Path(path) if path else default_endpoints_path()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read messaging endpoints {p}: {getattr(exc, 'strerror', None) or exc}") from None
    found = [e for e in parse_endpoints(text, str(p)) if e.app == app]
    if not found:
        raise InputError(f"{p} lists no endpoint for {app}")
    return found
