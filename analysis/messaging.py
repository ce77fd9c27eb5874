"""Messaging-app verdicts (signal, telegram, whatsapp, facebook_messenger): per function
(registration, messaging, web) by OONI's blocking rules, compared with the control's same
endpoints, and the app-level verdict the decision tree turns into one rule of analysis/rules.py.

Observations carry the tag ``<function>@<host:port>`` (DNS queries ``<function>@<host>``), as the
probe (probe/experiments/messaging/) and the OONI import (analysis/ingest/ooni/messaging.py)
write them. An endpoint works when its deepest step worked: an HTTP response of any status (the
apps' servers answer API errors to a plain GET; OONI counts any response as reachable), else a
TLS handshake, else a TCP connect to any of its addresses. One endpoint's DNS failure with no
address to connect to is a failure at the DNS layer.

OONI's rules (ts-018/019/020/029): Telegram's and WhatsApp's messaging fail only when EVERY
endpoint fails (the apps try the next data centre / chat host until one connects), every other
function fails when ANY of its endpoints fails (Signal's client needs all of its backends;
registration and web are one service each). A failing function is ``blocked`` when the control
reached the same endpoints, ``down`` when they failed at the control too (not censorship); with
no control it is ``blocked`` by OONI's own rule, which measures the apps' always-on servers
without a control; the per-function row says which (``control`` null).

Judging is Python over a few rows (one per app per run), not SQL over the whole table: the rows
are few, and the per-endpoint rules read best as code that tests call without a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import pyarrow as pa

APPS = ("signal", "telegram", "whatsapp", "facebook_messenger")
FUNCTIONS = ("registration", "messaging", "web")

# (app, function) whose function fails only when all endpoints fail; all others: any endpoint.
ALL_MUST_FAIL = frozenset({("telegram", "messaging"), ("whatsapp", "messaging")})
# Facebook's own network: OONI ts-019 calls an answer outside it DNS-inconsistent.
EXPECTED_ASN = {"facebook_messenger": "AS32934"}
# OONI ts-018 (whatsapp <= 0.9): the cleartext web GET must redirect (to https); anything else
# is the censor's page or a transparent proxy ("http_unexpected_status_code").
CLEARTEXT_MUST_REDIRECT = frozenset({("whatsapp", "web")})
UNEXPECTED_STATUS = "unknown_failure:http_unexpected_status_code"
DNS_INCONSISTENT = "unknown_failure:dns_inconsistent"

# The decision tree's layer names, and the rule id a blocked app gets for each.
BLOCK_RULES = {"dns": "messaging.dns", "tcp_ip": "messaging.tcp", "tls": "messaging.tls",
               "http-failure": "messaging.http"}  # fmt: skip

FUNCTION_TYPE = pa.struct(
    [
        pa.field("function", pa.string()),
        pa.field("status", pa.string()),  # ok | blocked | down | probe_failure
        pa.field("layer", pa.string()),  # dns | tcp_ip | tls | http-failure (blocked/down only)
        pa.field("failure", pa.string()),  # the first failing endpoint's failure string
        pa.field("endpoints", pa.int32()),
        pa.field("failed", pa.int32()),  # endpoints that failed at the probe
        pa.field("control", pa.string()),  # failed endpoints at the control: ok | failed | null (no control)
        pa.field("detail", pa.string()),  # the failed endpoints (first few)
    ]
)
FUNCTIONS_TYPE = pa.list_(FUNCTION_TYPE)
MSG_SCHEMA = pa.schema([("mid", pa.string()), ("msg_status", pa.string()), ("msg_layer", pa.string()),
                        ("functions", FUNCTIONS_TYPE)])  # fmt: skip


@dataclass(frozen=True, slots=True)
class EndpointResult:
    key: str  # function@host:port (or function@host when DNS gave nothing to connect to)
    function: str
    ok: bool
    interrupted: bool = False
    layer: str | None = None
    failure: str | None = None


@dataclass(slots=True)
class FunctionVerdict:
    function: str
    status: str
    layer: str | None
    failure: str | None
    endpoints: int
    failed: int
    control: str | None
    detail: str | None


# --------------------------------------------------------------------------- endpoints


def _split(tag: str | None) -> tuple[str, str] | None:
    if not tag or "@" not in tag:
        return None
    function, _, rest = tag.partition("@")
    return (function, rest) if function in FUNCTIONS else None


def _host_of(label: str) -> str:
    if label.startswith("["):
        return label[1:].split("]", 1)[0]
    return label.rsplit(":", 1)[0] if label.count(":") == 1 else label


def _is_v6_unreachable(c: dict[str, Any]) -> bool:
    # A vantage point without IPv6 fails every IPv6 address this way: not about the app.
    return c.get("failure") in ("network_unreachable", "host_unreachable") and ":" in str(c.get("ip") or "")


def endpoint_results(app: str, obs: dict[str, list[dict[str, Any]]]) -> dict[str, EndpointResult]:
    """Each endpoint of one measurement (``obs``: dns/tcp/tls/http lists of dicts with the
    records' fields) and whether it worked, keyed ``function@host:port``."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind in ("tcp", "tls", "http"):
        for o in obs.get(kind) or []:
            parts = _split(o.get("tag"))
            if parts:
                groups.setdefault(o["tag"], {"tcp": [], "tls": [], "http": []})[kind].append(o)
    dns: dict[str, list[dict[str, Any]]] = {}
    for q in obs.get("dns") or []:
        parts = _split(q.get("tag"))
        if parts:
            dns.setdefault(q["tag"], []).append(q)
    out: dict[str, EndpointResult] = {}
    for key, steps in groups.items():
        function, label = key.split("@", 1)
        out[key] = _judge_endpoint(app, key, function, steps, dns.get(f"{function}@{_host_of(label)}", []))
    connected_hosts = {f"{k.split('@', 1)[0]}@{_host_of(k.split('@', 1)[1])}" for k in groups}
    for key, queries in dns.items():
        function = key.split("@", 1)[0]
        if key in connected_hosts:
            continue
        result = _judge_dns_only(app, key, function, queries)
        if result is not None:
            out[key] = result
    return out


def _addresses(queries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for q in queries for a in (q.get("answers") or []) if a.get("answer_type") in ("A", "AAAA")]


def _dns_failure(queries: list[dict[str, Any]]) -> str:
    failures = [str(q["failure"]) for q in queries if q.get("failure")]
    return next((f for f in failures if f != "dns_no_answer"), failures[0] if failures else "dns_no_answer")


def _inconsistent(app: str, queries: list[dict[str, Any]]) -> bool:
    expected = EXPECTED_ASN.get(app)
    if expected is None:
        return False
    asns = [a.get("asn") for a in _addresses(queries)]
    return any(asn is not None and asn != expected for asn in asns)


def _judge_dns_only(app: str, key: str, function: str, queries: list[dict[str, Any]]) -> EndpointResult | None:
    if any(q.get("failure") == "interrupted" for q in queries) and not _addresses(queries):
        return EndpointResult(key, function, ok=False, interrupted=True, failure="interrupted")
    if not _addresses(queries):
        return EndpointResult(key, function, ok=False, layer="dns", failure=_dns_failure(queries))
    if _inconsistent(app, queries):
        return EndpointResult(key, function, ok=False, layer="dns", failure=DNS_INCONSISTENT)
    # Resolved, consistent, and nothing else on the record (an OONI import whose connects went to
    # an address another host of the function shares): judged by the steps that were recorded.
    return None


def _judge_endpoint(app: str, key: str, function: str, steps: dict[str, list[dict[str, Any]]],
                    queries: list[dict[str, Any]]) -> EndpointResult:
    tcp, tls, http = steps["tcp"], steps["tls"], steps["http"]
    if _inconsistent(app, queries):
        return EndpointResult(key, function, ok=False, layer="dns", failure=DNS_INCONSISTENT)
    must_redirect = (app, function) in CLEARTEXT_MUST_REDIRECT
    if http:
        def hop_ok(h: dict[str, Any]) -> bool:
            # No failure is a response (old OONI records carry no status code for it).
            if h.get("failure") is not None:
                return False
            cleartext = str(h.get("url") or "").lower().startswith("http://")
            code = h.get("status_code")
            return not (must_redirect and cleartext and code is not None and not 300 <= int(code) < 400)

        # Every URL of the endpoint must answer (whatsapp web: https and its cleartext twin).
        by_url: dict[str, list[dict[str, Any]]] = {}
        for h in http:
            by_url.setdefault(str(h.get("url") or ""), []).append(h)
        bad = [hops for hops in by_url.values() if not any(hop_ok(h) for h in hops)]
        if not bad:
            return EndpointResult(key, function, ok=True)
        hop = bad[0][-1]
        failure = hop.get("failure") or (UNEXPECTED_STATUS if hop.get("status_code") is not None else None)
        if failure == "interrupted":
            return EndpointResult(key, function, ok=False, interrupted=True, failure=failure)
        if not tcp and not tls and queries and not _addresses(queries):
            # No address to connect to (an OONI import keeps the request that never started).
            return EndpointResult(key, function, ok=False, layer="dns", failure=_dns_failure(queries))
        layer = _connect_layer(tcp, tls) or "http-failure"
        if layer != "http-failure":
            failure = _first_failure(tls if layer == "tls" else tcp) or failure
        return EndpointResult(key, function, ok=False, layer=layer, failure=failure or "unknown_failure:no_response")
    if tls:
        if any(x.get("failure") is None for x in tls):
            return EndpointResult(key, function, ok=True)
        failure = _first_failure(tls)
        return EndpointResult(key, function, ok=False, interrupted=failure == "interrupted", layer="tls", failure=failure)
    if any(c.get("failure") is None for c in tcp):
        return EndpointResult(key, function, ok=True)
    real = [c for c in tcp if not _is_v6_unreachable(c)] or tcp
    failure = _first_failure(real)
    return EndpointResult(key, function, ok=False, interrupted=failure == "interrupted", layer="tcp_ip", failure=failure)


def _first_failure(steps: list[dict[str, Any]]) -> str | None:
    return next((s.get("failure") for s in steps if s.get("failure")), None)


def _connect_layer(tcp: list[dict[str, Any]], tls: list[dict[str, Any]]) -> str | None:
    """The layer that stopped an HTTP fetch before it began: every connect (or handshake) failed."""
    if tcp and not any(c.get("failure") is None for c in tcp):
        return "tcp_ip"
    if tls and not any(x.get("failure") is None for x in tls):
        return "tls"
    return None


# --------------------------------------------------------------------------- functions


def judge_functions(app: str, probe: dict[str, list[dict[str, Any]]],
                    control: dict[str, list[dict[str, Any]]] | None) -> list[FunctionVerdict]:
    """The per-function verdicts of one app measurement against its control (None: no control)."""
    p = endpoint_results(app, probe)
    c = endpoint_results(app, control) if control is not None else {}
    out: list[FunctionVerdict] = []
    for function in FUNCTIONS:
        eps = [e for e in p.values() if e.function == function]
        if not eps:
            continue
        failed = [e for e in eps if not e.ok and not e.interrupted]
        interrupted = [e for e in eps if e.interrupted]
        all_rule = (app, function) in ALL_MUST_FAIL
        fails = (len(failed) == len(eps)) if all_rule else bool(failed)
        detail = ", ".join(e.key.split("@", 1)[1] for e in failed[:3]) + (" ..." if len(failed) > 3 else "")
        if not fails:
            # An interrupted endpoint leaves the outcome open, unless (all-endpoints rule) another worked.
            status = "probe_failure" if interrupted and (not all_rule or not any(e.ok for e in eps)) else "ok"
            out.append(FunctionVerdict(function, status, None, "interrupted" if status == "probe_failure" else None,
                                       len(eps), len(failed), None, detail or None))
            continue
        has_control = any(e.function == function for e in c.values())
        if not has_control:
            first = failed[0]
            out.append(FunctionVerdict(function, "blocked", first.layer, first.failure, len(eps), len(failed), None, detail))
            continue
        # Censored: failed here, worked at the control. A function whose failures all failed at
        # the control too is the service's outage (or a list entry gone stale), not censorship.
        censored = [e for e in failed if _control_ok(e.key, c)]
        if censored:
            first = censored[0]
            out.append(FunctionVerdict(function, "blocked", first.layer, first.failure, len(eps), len(failed), "ok", detail))
        else:
            first = failed[0]
            out.append(FunctionVerdict(function, "down", first.layer, first.failure, len(eps), len(failed), "failed", detail))
    return out


def _control_ok(key: str, control: dict[str, EndpointResult]) -> bool:
    """Did the control reach this endpoint? A probe endpoint DNS stopped (``function@host``)
    is reached when the control reached the host on any port."""
    if key in control:
        return control[key].ok
    return any(r.ok for k, r in control.items() if k.startswith(key + ":"))


def app_status(functions: Sequence[FunctionVerdict]) -> tuple[str | None, str | None]:
    """(status, layer) of the app: blocked (the first blocked function's layer, in the order
    registration, messaging, web), else probe_failure, else down, else ok; (None, None) when
    no endpoint was measured."""
    if not functions:
        return None, None
    for status in ("blocked", "probe_failure", "down"):
        hit = next((f for f in functions if f.status == status), None)
        if hit is not None:
            return status, hit.layer if status == "blocked" else None
    return "ok", None


# --------------------------------------------------------------------------- over the table

_OBS = """list_transform(m.dns, lambda q: {'tag': q.tag, 'failure': q.failure,
              'answers': list_transform(q.answers, lambda a: {'answer_type': a.answer_type, 'asn': a.asn})}) AS dns,
          list_transform(m.tcp, lambda x: {'tag': x.tag, 'failure': x.failure, 'ip': x.ip}) AS tcp,
          list_transform(m.tls, lambda x: {'tag': x.tag, 'failure': x.failure}) AS tls,
          list_transform(m.http, lambda x: {'tag': x.tag, 'failure': x.failure, 'status_code': x.status_code,
                                            'url': x.url}) AS http"""
_OBS_NO_ASN = _OBS.replace(", 'asn': a.asn", "")


def messaging_table(con: duckdb.DuckDBPyConnection, load: Callable[[str, pa.Table], None]) -> None:
    """Temp table ``_vt_msg`` (mid, msg_status, msg_layer, functions) for the probe rows of the
    messaging experiments, over ``_vt_pair`` (the verdict stage's pairing)."""
    dns_type = str(con.sql("SELECT dns FROM measurements LIMIT 0").types[0]).lower()
    obs = _OBS if "asn" in dns_type else _OBS_NO_ASN  # datasets written before DnsAnswer.asn
    rows = con.sql(f"""
        SELECT p.mid, p.experiment, p.cid, {obs}
        FROM _vt_pair p JOIN measurements m ON m.measurement_id = p.mid
        WHERE list_contains($apps, p.experiment) AND m.role = 'probe'
    """, params={"apps": list(APPS)}).fetchall()
    cids = sorted({r[2] for r in rows if r[2] is not None})
    # A control that could not run (its failure set) is no control: OONI's rule alone then.
    controls: dict[str, dict[str, Any] | None] = {}
    if cids:
        load("_vt_msg_cids", pa.table({"cid": pa.array(cids, pa.string())}))
        for cid, failure, *lists in con.sql(f"""
            SELECT m.measurement_id, m.failure, {obs}
            FROM measurements m WHERE m.measurement_id IN (SELECT cid FROM _vt_msg_cids)
        """).fetchall():
            controls[cid] = None if failure is not None else dict(zip(("dns", "tcp", "tls", "http"), lists, strict=True))
        con.execute("DROP TABLE IF EXISTS _vt_msg_cids")
    out: dict[str, list[Any]] = {name: [] for name in MSG_SCHEMA.names}
    for mid, app, cid, *lists in rows:
        functions = judge_functions(app, dict(zip(("dns", "tcp", "tls", "http"), lists, strict=True)),
                                    controls.get(cid) if cid is not None else None)
        status, layer = app_status(functions)
        out["mid"].append(mid)
        out["msg_status"].append(status)
        out["msg_layer"].append(layer)
        out["functions"].append([asdict(f) for f in functions])
    load("_vt_msg", pa.table(out, schema=MSG_SCHEMA))


# --------------------------------------------------------------------------- showing it


def functions_text(functions: Iterable[dict[str, Any]] | None) -> str:
    """One line for a verdict's per-function list, the same in every command that shows it:
    ``registration ok; messaging blocked (tcp_ip: generic_timeout, 10/10 endpoints); web ok``."""
    parts = []
    for f in functions or []:
        text = f"{f['function']} {f['status']}"
        if f["status"] in ("blocked", "down"):
            extra = [x for x in (f.get("layer"), f.get("failure")) if x]
            text += f" ({': '.join(extra)}, {f['failed']}/{f['endpoints']} endpoints"
            text += ", no control)" if f.get("control") is None else ")"
        parts.append(text)
    return "; ".join(parts)


def function_rows(verdicts: pa.Table) -> list[dict[str, Any]]:
    """One row per (messaging verdict, function): the verdict's identity and app status beside
    the function's. Empty for a verdicts table without the column (written before it existed)."""
    if "functions" not in verdicts.column_names:
        return []
    cols = ("measurement_id", "run_id", "input", "experiment", "probe_cc", "probe_asn", "measurement_start_time",
            "status", "method")
    data = {c: verdicts.column(c).to_pylist() for c in cols}
    out = []
    for i, functions in enumerate(verdicts.column("functions").to_pylist()):
        for f in functions or []:
            row = {c: data[c][i] for c in cols}
            row["app_status"] = row.pop("status")
            row.update(f)
            out.append(row)
    return out


def function_summary(verdicts: pa.Table) -> list[dict[str, Any]]:
    """Per (country, network, app, function): measurements, blocked, down, ok, the layers seen
    blocked and the latest status; the same numbers analyze, report and runs show print."""
    groups: dict[tuple[str, str | None, str, str], dict[str, Any]] = {}
    for r in sorted(function_rows(verdicts), key=lambda r: (r["measurement_start_time"] is None, r["measurement_start_time"])):
        key = (r["probe_cc"], r["probe_asn"], r["experiment"], r["function"])
        g = groups.setdefault(key, {"probe_cc": key[0], "probe_asn": key[1], "app": key[2], "function": key[3],
                                    "measurements": 0, "blocked": 0, "down": 0, "ok": 0, "layers": [], "last_status": None})
        g["measurements"] += 1
        if r["status"] in ("blocked", "down", "ok"):
            g[r["status"]] += 1
        if r["status"] == "blocked" and r["layer"] and r["layer"] not in g["layers"]:
            g["layers"].append(r["layer"])
        g["last_status"] = r["status"]
    order = {f: i for i, f in enumerate(FUNCTIONS)}
    return sorted(groups.values(), key=lambda g: (g["probe_cc"], g["probe_asn"] or "", g["app"], order.get(g["function"], 9)))


SUMMARY_HEAD = ["cc", "network", "app", "function", "measured", "blocked", "down", "ok", "blocked at", "latest"]


def summary_cells(g: dict[str, Any]) -> list[str]:
    return [g["probe_cc"], g["probe_asn"] or "", g["app"], g["function"], str(g["measurements"]), str(g["blocked"]),
            str(g["down"]), str(g["ok"]), ", ".join(g["layers"]), g["last_status"] or ""]


def flat_verdicts(verdicts: pa.Table) -> pa.Table:
    """The verdicts with ``functions`` as its one-line text (CSV holds no nested column)."""
    if "functions" not in verdicts.column_names:
        return verdicts
    i = verdicts.column_names.index("functions")
    text = [functions_text(f) if f is not None else None for f in verdicts.column(i).to_pylist()]
    return verdicts.set_column(i, pa.field("functions", pa.string()), pa.array(text, pa.string()))
