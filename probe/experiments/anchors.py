"""anchors: cheap reachability of always-up targets (root DNS servers, anycast resolvers, large
CDNs), the heartbeat shutdown detection needs: when the anchors fail too, the network is down.

Inputs: ``tcp://IP:PORT`` (a TCP connect), ``dns://IP[:PORT][/?name=.&qtype=NS]`` (one UDP
query, by default "." NS, which every root server and public resolver answers), and
``http(s)://...`` URLs (DNS through the configured resolvers if the host is a name, then one
HTTP GET without following redirects). The shipped list is testlists/anchors.csv; anchors are
contacted only when a user runs this experiment.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.common import ip_literal, parse_web_url, resolved_addresses
from probe.experiments.context import MeasurementContext
from probe.schema import Measurement

ANCHOR_SCHEMES = ("tcp", "dns", "http", "https")
# An anchor answers with a page we do not need: read a little of it, never a whole body.
ANCHOR_BODY_CAP = 4096


class Anchors(Experiment):
    name = "anchors"
    version = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        try:
            parts = urlsplit(target.input)
            port = parts.port
        except ValueError as exc:
            raise InputError(f"malformed anchor {target.input!r}: {exc}") from None
        scheme = parts.scheme.lower()
        host = parts.hostname or ""

        if scheme == "tcp":
            ip = ip_literal(host)
            if ip is None or port is None:
                raise InputError(f"a tcp anchor is tcp://IP:PORT, got {target.input!r}")
            return [await net.tcp_connect(ip, port)]

        if scheme == "dns":
            ip = ip_literal(host)
            if ip is None:
                raise InputError(f"a dns anchor is dns://IP[:PORT], got {target.input!r}")
            query = parse_qs(parts.query)
            name = query.get("name", ["."])[0]
            qtype = query.get("qtype", ["NS"])[0].upper()
            resolver = f"[{ip}]:{port or 53}" if ":" in ip else f"{ip}:{port or 53}"
            return [await net.dns_udp(name, resolver, qtype)]

        if scheme in ("http", "https"):
            web = parse_web_url(target.input)
            observations: list[Observation] = []
            literal = ip_literal(web.hostname or "")
            if literal is not None:
                addresses = [literal]
            else:
                queries = await net.dns_lookup(web.hostname or "")
                observations.extend(queries)
                addresses = resolved_addresses(queries)
                if not addresses:
                    return observations
            observations.extend(
                await net.http_get(
                    target.input, address_map={web.hostname or "": addresses}, max_redirects=0, body_cap=ANCHOR_BODY_CAP
                )
            )
            return observations

        raise InputError(f"an anchor is one of {', '.join(s + '://' for s in ANCHOR_SCHEMES)}; got {target.input!r}")

    def input_problem(self, input_: str) -> str | None:
        return anchor_problem(input_)

    def host_key(self, target: Target) -> str:
        # Anchors are distinct servers by design; one slot each is plenty.
        return target.input.lower()

    def succeeded(self, m: Measurement) -> bool:
        """Reachable: the connect worked, or any DNS reply or HTTP response came back."""
        if m.failure is not None:
            return False
        scheme = m.input.split("://", 1)[0].lower()
        if scheme == "tcp":
            return any(c.failure is None for c in m.tcp)
        if scheme == "dns":
            return any(q.rcode is not None for q in m.dns)
        return any(h.status_code is not None for h in m.http)


def anchor_problem(url: str) -> str | None:
    """Why ``url`` is not an anchor (None when it is)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"malformed anchor {url!r}: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ANCHOR_SCHEMES:
        return f"an anchor is one of {', '.join(s + '://' for s in ANCHOR_SCHEMES)}; got {url!r}"
    if scheme in ("tcp", "dns") and ip_literal(parts.hostname or "") is None:
        return f"a {scheme} anchor needs an IP address, got {url!r}"
    if scheme == "tcp" and port is None:
        return f"a tcp anchor needs a port: tcp://IP:PORT, got {url!r}"
    if scheme in ("http", "https") and not parts.hostname:
        return f"url has no host: {url!r}"
    return None


def shipped_anchors_path() -> Path:
    """The anchors list shipped with Vantage (testlists/anchors.csv in the source tree)."""
    return Path(str(resources.files("probe") / "data" / "anchors.csv"))


def load_anchors(path: Path) -> tuple[list[Target], list[str]]:
    """Anchors from a Citizen Lab CSV (``url`` and ``category_code`` columns) or one per line,
    and the problems of the rows skipped ("FILE:LINE: reason").

    Anchor inputs (dns://, tcp://) are not web or tunnel URLs, so general list loading would
    reject them; this reader accepts exactly what the anchors experiment measures.
    """
    targets: list[Target] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = text.splitlines()
    first = next(csv.reader(lines[:1]), [])
    if "url" in (c.strip().lower() for c in first):
        rows = csv.DictReader(lines)
        items = [
            (rows.line_num, (row.get("url") or "").strip(), (row.get("category_code") or "").strip() or None)
            for row in rows
        ]
    else:
        items = [(n, line.strip(), None) for n, line in enumerate(lines, 1)]
    for line, url, category in items:
        if not url or url.startswith("#"):
            continue
        problem = anchor_problem(url)
        if problem:
            problems.append(f"{path}:{line}: {problem}")
        else:
            targets.append(Target(url, category))
    return targets, problems
