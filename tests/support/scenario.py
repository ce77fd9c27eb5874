"""Synthetic multi-vantage measurement scenarios with planted shutdowns, blocks, outages and faults.

Tests and benchmarks use it as ground truth: ``generate_measurements`` builds Arrow tables in the
probe's schema directly (templates replicated with ``take``, so weeks of hourly data take
seconds); ``generate_signals`` builds the aggregated hourly signals the detector reads.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from probe import schema as S

HOUR = dt.timedelta(hours=1)
UTC = dt.UTC

# Outcomes a single measurement can have; each becomes a template row per input.
OK, DNS_NXDOMAIN, DNS_TIMEOUT, TCP_TIMEOUT, TCP_RESET, TLS_RESET, HTTP_RESET, SITE_DOWN, OFFLINE, FAULT, BLOCKPAGE = \
    range(11)
OUTCOMES = ("ok", "dns_nxdomain", "dns_timeout", "tcp_timeout", "tcp_reset", "tls_reset", "http_reset",
            "site_down", "offline", "fault", "blockpage")
# Blocking methods a planted block may use, by name (the raw method the analyzer reports).
BLOCK_OUTCOMES = {
    "dns.dns_nxdomain": DNS_NXDOMAIN,
    "tcp.generic_timeout": TCP_TIMEOUT,
    "tcp.connection_reset": TCP_RESET,
    "tls.connection_reset": TLS_RESET,
    "http.connection_reset": HTTP_RESET,
    # an HTTP 200 with the censor's page: reachable for raw signals, blocked for verdicts
    "http.blockpage": BLOCKPAGE,
}

DEFAULT_ANCHORS = ("dns://192.0.2.53:53/", "https://anchor-cdn-1.example/", "https://anchor-cdn-2.example/")
DEFAULT_TARGETS = (
    ("https://news-a.example/", "NEWS"),
    ("https://news-b.example/", "NEWS"),
    ("https://social-a.example/", "GRP"),
    ("https://social-b.example/", "GRP"),
    ("https://video-a.example/", "MMED"),
    ("https://rights-a.example/", "HUMR"),
    ("https://search-a.example/", "SRCH"),
    ("https://vpn-a.example/", "ANON"),
    ("https://blog-a.example/", "POLR"),
    ("https://shop-a.example/", "COMM"),
)


@dataclass(frozen=True)
class Network:
    """One (country, ASN) with its vantage points; each kind is "pi" (always on) or "laptop"."""

    cc: str
    asn: str
    name: str
    vantages: tuple[str, ...] = ("pi",)
    utc_offset_h: int = 0
    role: str = "probe"


@dataclass(frozen=True)
class PlantedEvent:
    """Ground truth. Hours [start, end) are affected; end None means still going at the end."""

    # shutdown | service_blocking | site_outage | probe_fault | steady_block | quiet (the volunteer
    # stopped measuring: no measurement at all, nothing failing; not an event to find)
    kind: str
    start: dt.datetime
    end: dt.datetime | None
    cc: str | None = None
    asns: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    method: str | None = None
    fail_prob: float = 1.0  # < 1 for a partial shutdown (degraded, not dark)
    vantage: int | None = None  # index of the vantage point inside its network (probe_fault)
    software_version: str | None = None  # the faulty version (probe_fault)
    label: str = ""

    def active(self, hour: dt.datetime) -> bool:
        return self.start <= hour and (self.end is None or hour < self.end)


@dataclass
class Scenario:
    start: dt.datetime
    days: int
    networks: list[Network]
    events: list[PlantedEvent]
    anchors: tuple[str, ...] = DEFAULT_ANCHORS
    targets: tuple[tuple[str, str], ...] = DEFAULT_TARGETS
    noise: float = 0.01  # chance that any one measurement fails for no reason
    software_version: str = "0.1.0"
    seed: int = 7
    # During a full shutdown a run's time budget runs out on timeouts: it measures fewer targets.
    shutdown_targets_measured: int = 5

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(days=self.days)

    @property
    def planted(self) -> list[PlantedEvent]:
        """The events a detector should find (steady blocks predate the data and are not events)."""
        return [e for e in self.events if e.kind not in ("steady_block", "quiet")]

    def hours(self) -> list[dt.datetime]:
        return [self.start + i * HOUR for i in range(self.days * 24)]


def default_scenario(seed: int = 7, days: int = 28) -> Scenario:
    """Four weeks, three censoring countries plus a control network; week 1 and week 3 hold no
    shutdown (week 3 holds new blocks, a site outage and a faulty probe instead)."""
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)

    def at(day: int, hour: int) -> dt.datetime:
        return start + dt.timedelta(days=day, hours=hour)

    nets = [
        Network("IR", "AS1001", "Example Telecom IR", ("pi", "laptop", "laptop"), 3),
        Network("IR", "AS1002", "Example Mobile IR", ("pi", "laptop"), 3),
        Network("IR", "AS1003", "Example Univ IR", ("pi",), 3),
        Network("MM", "AS2001", "Example Telecom MM", ("pi", "pi"), 6),
        Network("MM", "AS2002", "Example Mobile MM", ("pi",), 6),
        Network("ET", "AS3001", "Example Telecom ET", ("pi", "laptop"), 3),
        Network("ET", "AS3002", "Example Mobile ET", ("pi", "pi"), 3),
        Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control"),
    ]
    social_a = "https://social-a.example/"
    events = [
        # Steady blocks in place before the data starts: the report shows them, the change
        # detector must not (nothing changes).
        PlantedEvent("steady_block", start, None, "IR", ("AS1001", "AS1002", "AS1003"),
                     ("https://news-b.example/", "https://vpn-a.example/"), "dns.dns_nxdomain", label="IR steady DNS"),
        PlantedEvent("steady_block", start, None, "MM", ("AS2001",), ("https://rights-a.example/",),
                     "tcp.generic_timeout", label="MM steady TCP"),
        # Week 2: a national full shutdown and a one-ASN full shutdown across midnight.
        PlantedEvent("shutdown", at(9, 10), at(9, 16), "IR", ("AS1001", "AS1002", "AS1003"), label="IR national full"),
        PlantedEvent("shutdown", at(12, 20), at(13, 4), "MM", ("AS2002",), label="MM one-ASN full"),
        # Week 3: no shutdown; new blocks, a global site outage and a faulty probe.
        PlantedEvent("service_blocking", at(15, 14), None, "IR", ("AS1001", "AS1002", "AS1003"),
                     (social_a, "https://social-b.example/"), "tls.connection_reset", label="IR new SNI block"),
        PlantedEvent("service_blocking", at(17, 3), at(19, 3), "MM", ("AS2001",), ("https://news-a.example/",),
                     "dns.dns_nxdomain", label="MM new DNS block"),
        PlantedEvent("site_outage", at(19, 10), at(19, 15), None, (), ("https://shop-a.example/",),
                     "tcp.connection_refused", label="shop-a down everywhere"),
        PlantedEvent("probe_fault", at(16, 8), at(18, 20), "IR", ("AS1001",), vantage=0,
                     software_version="0.1.1rc1", label="IR AS1001 buggy probe"),
        # Week 4: a partial national shutdown and a partial one-ASN shutdown.
        PlantedEvent("shutdown", at(23, 6), at(23, 10), "ET", ("AS3001", "AS3002"), fail_prob=0.8,
                     label="ET national partial"),
        PlantedEvent("shutdown", at(25, 13), at(25, 18), "MM", ("AS2001",), fail_prob=0.85,
                     label="MM one-ASN partial"),
    ]
    events = [e for e in events if e.start < start + dt.timedelta(days=days)]
    return Scenario(start=start, days=days, networks=nets, events=events, seed=seed)


# --------------------------------------------------------------------------- templates


def _template(exp: str, url: str, category: str | None, outcome: int) -> S.Measurement:
    host = url.split("://", 1)[1].split("/", 1)[0].split(":")[0]
    ip = "192.0.2.10"
    dns_ok = S.DnsQuery(0.0, 0.02, None, "system", "system", "A", host, "NOERROR", [S.DnsAnswer("A", ip, 300)])
    tcp_ok = S.TcpConnect(0.02, 0.05, None, ip, 443)
    tls_ok = S.TlsHandshake(0.05, 0.1, None, ip, 443, host, "TLSv1.3", cert_valid=True)
    http_ok = S.HttpRequest(0.1, 0.2, None, url, ip=ip, status_code=200, body_length=2048, title=host)
    m = S.Measurement(
        measurement_id="", run_id="", experiment=exp, experiment_version="0.1.0", input=url,
        input_category=category, measurement_start_time=dt.datetime(2026, 1, 1, tzinfo=UTC), runtime_s=0.2,
    )
    if url.startswith("http://"):  # plain HTTP: port 80 and no TLS step
        tcp_ok = replace(tcp_ok, port=80)
    if outcome == OK:
        m.dns, m.tcp, m.tls, m.http = [dns_ok], [tcp_ok], [tls_ok], [http_ok]
    elif outcome == DNS_NXDOMAIN:
        m.dns = [replace(dns_ok, failure="dns_nxdomain", rcode="NXDOMAIN", answers=[])]
    elif outcome in (DNS_TIMEOUT, OFFLINE):
        m.dns = [replace(dns_ok, t=4.0, failure="generic_timeout", rcode=None, answers=[])]
        m.runtime_s = 4.0
    elif outcome in (TCP_TIMEOUT, TCP_RESET, SITE_DOWN):
        failure = {TCP_TIMEOUT: "generic_timeout", TCP_RESET: "connection_reset", SITE_DOWN: "connection_refused"}
        m.dns, m.tcp = [dns_ok], [replace(tcp_ok, failure=failure[outcome])]
    elif outcome == TLS_RESET:
        m.dns, m.tcp, m.tls = [dns_ok], [tcp_ok], [replace(tls_ok, failure="connection_reset", tls_version=None)]
    elif outcome == HTTP_RESET:
        m.dns, m.tcp, m.tls = [dns_ok], [tcp_ok], [tls_ok]
        m.http = [replace(http_ok, failure="connection_reset", status_code=None, body_length=None, title=None)]
    elif outcome == BLOCKPAGE:  # (only credible for http:// targets: HTTPS would not validate)
        m.dns, m.tcp, m.tls = [dns_ok], [tcp_ok], [tls_ok]
        body = "<html><title>Access denied</title>This site is blocked by order of the authorities.</html>"
        m.http = [replace(http_ok, body_length=len(body), title="Access denied", body_sample=body,
                          body_sha256="b1" * 32)]
    elif outcome == FAULT:
        m.failure = "unknown_failure:AttributeError in resolver setup"
        m.runtime_s = 0.0
    if url.startswith("http://"):
        m.tls = []
    return m


def _templates(scn: Scenario) -> tuple[pa.Table, dict[tuple[str, int], int]]:
    records: list[S.Measurement] = []
    index: dict[tuple[str, int], int] = {}
    inputs = [("anchors", a, None) for a in scn.anchors] + [("web_connectivity", u, c) for u, c in scn.targets]
    for exp, url, cat in inputs:
        for outcome in range(len(OUTCOMES)):
            index[(url, outcome)] = len(records)
            records.append(_template(exp, url, cat, outcome))
    return S.records_to_table(records), index


# --------------------------------------------------------------------------- measurements


def _runs_at(kind: str, local_hour: int, rng: np.random.Generator) -> bool:
    if kind == "pi":
        return bool(rng.random() < 0.99)
    # a volunteer's laptop: on in the day, mostly asleep at night (the diurnal volume cycle)
    return bool(rng.random() < (0.95 if 8 <= local_hour < 23 else 0.1))


def generate_measurements(scn: Scenario) -> pa.Table:
    """Every measurement of the scenario as one Arrow table with FULL_SCHEMA's columns."""
    rng = np.random.default_rng(scn.seed)
    templates, tindex = _templates(scn)
    anchor_urls = list(scn.anchors)
    target_urls = [u for u, _ in scn.targets]
    take: list[int] = []
    cols: dict[str, list] = {k: [] for k in ("run_id", "role", "probe_cc", "probe_asn", "probe_network",
                                              "platform", "software_version", "start_us")}
    for net in scn.networks:
        for vi, kind in enumerate(net.vantages):
            vid = f"{net.asn.lower()}v{vi}"
            for hour in scn.hours():
                active = [e for e in scn.events if e.active(hour) and _affects(e, net, vi)]
                local = (hour.hour + net.utc_offset_h) % 24
                if not _runs_at(kind, local, rng) or any(e.kind == "quiet" for e in active):
                    continue
                version = scn.software_version
                faulty = any(e.kind == "probe_fault" for e in active)
                if faulty:
                    version = next(e.software_version for e in active if e.kind == "probe_fault") or version
                shutdown = [e for e in active if e.kind == "shutdown"]
                targets = target_urls
                if any(e.fail_prob >= 1.0 for e in shutdown):
                    targets = target_urls[: scn.shutdown_targets_measured]
                urls = anchor_urls + targets
                t0 = hour + dt.timedelta(minutes=int(rng.integers(0, 15)))
                run_id = t0.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.UUID(int=int(rng.integers(0, 2**62))).hex[-8:]
                noise = rng.random(len(urls)) < scn.noise
                shut = rng.random(len(urls))
                for i, url in enumerate(urls):
                    outcome = OK
                    for e in active:
                        if e.kind in ("steady_block", "service_blocking") and url in e.inputs and net.role == "probe":
                            outcome = BLOCK_OUTCOMES[e.method or "tcp.generic_timeout"]
                        elif e.kind == "site_outage" and url in e.inputs:
                            outcome = SITE_DOWN
                    if noise[i] and outcome == OK:
                        outcome = TCP_TIMEOUT
                    if any(shut[i] < e.fail_prob for e in shutdown):
                        outcome = OFFLINE
                    if faulty:
                        outcome = FAULT
                    take.append(tindex[(url, outcome)])
                    start = t0 + dt.timedelta(seconds=5 * i)
                    cols["start_us"].append(int(start.timestamp() * 1_000_000))
                    cols["run_id"].append(run_id)
                    cols["role"].append(net.role)
                    cols["probe_cc"].append(net.cc)
                    cols["probe_asn"].append(net.asn)
                    cols["probe_network"].append(net.name)
                    cols["platform"].append("linux-rpi" if kind == "pi" else f"linux-laptop-{vid}")
                    cols["software_version"].append(version)
    table = templates.take(pa.array(take, pa.int64()))
    n = len(take)
    starts = pa.array(cols.pop("start_us"), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    ids = [S.new_uuid7(t / 1e6) for t in pc.cast(starts, pa.int64()).to_pylist()]
    replace_cols = {
        "measurement_id": pa.array(ids, pa.string()),
        "measurement_start_time": starts,
        **{k: pa.array(v, pa.string()) for k, v in cols.items() if k != "probe_cc"},
        "resolver_asn": pa.array(cols["probe_asn"], pa.string()),
    }
    for name, arr in replace_cols.items():
        table = table.set_column(table.schema.get_field_index(name), S.MEASUREMENT_SCHEMA.field(name), arr)
    table = table.append_column("date", pc.strftime(starts, format="%Y-%m-%d"))
    table = table.append_column("probe_cc", pa.array(cols["probe_cc"], pa.string()))
    assert table.num_rows == n
    return table


def _affects(e: PlantedEvent, net: Network, vi: int) -> bool:
    if e.kind == "site_outage":
        return True  # the site itself is down: every vantage point sees it, controls included
    if net.role != "probe" or e.cc != net.cc or (e.asns and net.asn not in e.asns):
        return False
    return e.vantage is None or e.vantage == vi


def write_dataset(table: pa.Table, root: Path | str, run_tag: str = "scenario") -> list[Path]:
    """Write a generated table as a hive-partitioned dataset (one file per date and country)."""
    from probe.dataset import partition_dir, write_table_atomic

    paths = []
    keys = pc.binary_join_element_wise(table["date"], table["probe_cc"], "|")
    for key in pc.unique(keys).to_pylist():
        date, cc = key.split("|")
        part = table.filter(pc.equal(keys, key)).drop_columns(["date", "probe_cc"])
        path = partition_dir(Path(root), date, cc) / f"part-{run_tag}-00000.parquet"
        write_table_atomic(part.cast(S.MEASUREMENT_SCHEMA), path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- hourly signals


SIGNAL_COUNT_COLUMNS = ("volume", "runs", "vantage_points", "anchor_n", "anchor_ok", "target_n", "target_ok",
                        "dns_n", "dns_fail", "tcp_n", "tcp_fail", "tls_n", "tls_fail", "http_n", "http_fail")


@dataclass
class SignalScenario:
    """Aggregated hourly signals for many networks (benchmarks), with planted shutdowns."""

    table: pa.Table
    events: list[PlantedEvent] = field(default_factory=list)


def generate_signals(
    n_networks: int = 200, days: int = 30, *, seed: int = 11, n_shutdowns: int = 20,
    start: dt.datetime | None = None, vantages: Sequence[int] = (1, 2, 3),
) -> SignalScenario:
    """Hourly signal rows per (cc, asn, hour) in the shape ``analysis.signals`` computes, with
    diurnal volume, binomial noise and ``n_shutdowns`` planted one-ASN shutdowns after day 8."""
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2026, 10, 1, tzinfo=UTC)
    n_h = days * 24
    hours = np.arange(n_h)
    ccs = [f"{chr(65 + (i // 26) % 26)}{chr(65 + i % 26)}" for i in range(max(1, n_networks // 4))]
    net_cc = [ccs[i % len(ccs)] for i in range(n_networks)]
    net_asn = [f"AS{10000 + i}" for i in range(n_networks)]
    n_v = rng.choice(np.asarray(vantages), n_networks)
    offsets = rng.integers(-8, 9, n_networks)
    local = (hours[None, :] + offsets[:, None]) % 24
    diurnal = np.where((local >= 8) & (local < 23), 1.0, 0.1)
    # one always-on vantage point per network (a Raspberry Pi) plus laptops that sleep at night
    runs = rng.binomial(1, 0.99, (n_networks, n_h)) + rng.binomial(np.repeat(n_v[:, None] - 1, n_h, 1), 0.95 * diurnal)
    fail_p = np.full((n_networks, n_h), 0.01)
    events = []
    for k in range(n_shutdowns):
        ni = int(rng.integers(0, n_networks))
        h0 = int(rng.integers(8 * 24, n_h - 12))
        length = int(rng.integers(2, 12))
        fail_p[ni, h0 : h0 + length] = 1.0
        events.append(PlantedEvent("shutdown", start + h0 * HOUR, start + (h0 + length) * HOUR, net_cc[ni],
                                   (net_asn[ni],), label=f"bench {k}"))
    anchor_n = runs * 3
    target_n = runs * 10
    anchor_ok = rng.binomial(anchor_n, 1 - fail_p)
    target_ok = rng.binomial(target_n, np.clip(0.9 - fail_p, 0, 1))
    volume = anchor_n + target_n
    dns_fail = np.minimum(volume, rng.binomial(volume, np.where(fail_p >= 1, 1.0, 0.005)))
    tcp_n = volume - dns_fail
    tcp_fail = rng.binomial(tcp_n, 0.02)
    tls_n = tcp_n - tcp_fail
    tls_fail = rng.binomial(tls_n, 0.01)
    http_n = tls_n - tls_fail
    http_fail = rng.binomial(http_n, 0.005)
    hour_us = (int(start.timestamp()) + hours * 3600) * 1_000_000
    cols = {
        "cc": pa.array(np.repeat(np.asarray(net_cc, dtype=object), n_h).tolist(), pa.string()),
        "asn": pa.array(np.repeat(np.asarray(net_asn, dtype=object), n_h).tolist(), pa.string()),
        "hour": pa.array(np.tile(hour_us, n_networks)).cast(pa.timestamp("us")),
    }
    counts = {"volume": volume, "runs": runs, "vantage_points": np.minimum(runs, n_v[:, None]),
              "anchor_n": anchor_n, "anchor_ok": anchor_ok, "target_n": target_n, "target_ok": target_ok,
              "dns_n": volume, "dns_fail": dns_fail, "tcp_n": tcp_n, "tcp_fail": tcp_fail, "tls_n": tls_n,
              "tls_fail": tls_fail, "http_n": http_n, "http_fail": http_fail}
    for name in SIGNAL_COUNT_COLUMNS:
        cols[name] = pa.array(counts[name].reshape(-1).astype(np.int64))
    return SignalScenario(pa.table(cols), events)


def generate_input_failures(
    n_networks: int = 200, days: int = 30, n_inputs: int = 30, *, seed: int = 13, n_blocks: int = 50,
    start: dt.datetime | None = None,
) -> SignalScenario:
    """Hourly (cc, asn, input, hour, n, failed) rows, the change detector's input: 1-3
    measurements per target and hour, 1 % noise, ``n_blocks`` planted blocks after day 8 (half
    lifted again, half still in place at the end)."""
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2026, 10, 1, tzinfo=UTC)
    n_h = days * 24
    n_series = n_networks * n_inputs
    n = rng.integers(1, 4, (n_series, n_h))
    p = np.full((n_series, n_h), 0.01)
    events = []
    for k in range(n_blocks):
        si = int(rng.integers(0, n_series))
        h0 = int(rng.integers(8 * 24, n_h - 24))
        h1 = int(rng.integers(h0 + 6, n_h)) if k % 2 else n_h
        p[si, h0:h1] = 1.0
        net, inp = divmod(si, n_inputs)
        events.append(PlantedEvent("service_blocking", start + h0 * HOUR, None if h1 == n_h else start + h1 * HOUR,
                                   "ZZ", (f"AS{10000 + net}",), (f"https://site-{inp}.example/",),
                                   label=f"bench block {k}"))
    failed = rng.binomial(n, p)
    hour_us = (int(start.timestamp()) + np.arange(n_h) * 3600) * 1_000_000
    nets = np.repeat(np.arange(n_networks), n_inputs)
    inps = np.tile(np.arange(n_inputs), n_networks)
    asn_names = np.asarray([f"AS{10000 + i}" for i in range(n_networks)], dtype=object)
    inp_names = np.asarray([f"https://site-{i}.example/" for i in range(n_inputs)], dtype=object)
    table = pa.table({
        "cc": pa.DictionaryArray.from_arrays(np.zeros(n_series * n_h, dtype=np.int32), pa.array(["ZZ"])).cast(pa.string()),
        # built as dictionary arrays and cast in C++: no Python string per row
        "asn": pa.DictionaryArray.from_arrays(np.repeat(nets, n_h).astype(np.int32),
                                              pa.array(asn_names.tolist())).cast(pa.string()),
        "input": pa.DictionaryArray.from_arrays(np.repeat(inps, n_h).astype(np.int32),
                                                pa.array(inp_names.tolist())).cast(pa.string()),
        "hour": pa.array(np.tile(hour_us, n_series)).cast(pa.timestamp("us")),
        "n": pa.array(n.reshape(-1).astype(np.int64)),
        "failed": pa.array(failed.reshape(-1).astype(np.int64)),
    })
    return SignalScenario(table, events)


def random_scenario(seed: int, days: int = 28) -> Scenario:
    """A scenario with random networks and randomly placed, non-overlapping events: shutdowns
    (full or partial, national or one network), new blocks, a site outage and a probe fault,
    all after the first 8 days (the baselines need a week)."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    ccs = ["IR", "MM", "ET", "RU", "CN", "BY"][: int(rng.integers(2, 5))]
    nets: list[Network] = []
    for ci, cc in enumerate(ccs):
        for k in range(int(rng.integers(1, 4))):
            kinds = tuple(["pi"] + [str(rng.choice(["pi", "laptop"])) for _ in range(int(rng.integers(0, 3)))])
            nets.append(Network(cc, f"AS{1000 * (ci + 1) + k}", f"Net {cc} {k}", kinds, int(rng.integers(-5, 9))))
    nets.append(Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control"))
    targets = [u for u, _ in DEFAULT_TARGETS]
    busy: dict[str, list[tuple[int, int]]] = {}  # per network: hours taken (events must not overlap)
    events: list[PlantedEvent] = []

    def free(asns: list[str], h0: int, h1: int) -> bool:
        return all(h1 + 24 <= a or b + 24 <= h0 for n in asns for a, b in busy.get(n, []))

    def take(asns: list[str], h0: int, h1: int) -> None:
        for n in asns:
            busy.setdefault(n, []).append((h0, h1))

    probe_nets = [n for n in nets if n.role == "probe"]
    plans = ["shutdown"] * 4 + ["service_blocking"] * 2 + ["site_outage", "probe_fault"]
    for i, kind in enumerate(plans):
        for _ in range(50):
            h0 = int(rng.integers(8 * 24, days * 24 - 30))
            length = int(rng.integers(3, 12)) if kind != "probe_fault" else int(rng.integers(12, 48))
            h1 = h0 + length
            net = probe_nets[int(rng.integers(0, len(probe_nets)))]
            if kind == "shutdown":
                national = bool(rng.random() < 0.5)
                asns = [n.asn for n in probe_nets if n.cc == net.cc] if national else [net.asn]
                if not free(asns, h0, h1):
                    continue
                fail = 1.0 if i % 2 == 0 else 0.85
                events.append(PlantedEvent("shutdown", start + h0 * HOUR, start + h1 * HOUR, net.cc, tuple(asns),
                                           fail_prob=fail, label=f"shutdown {'national' if national else 'one-ASN'} "
                                                                 f"{'full' if fail == 1 else 'partial'} {net.cc}"))
            elif kind == "service_blocking":
                asns = [n.asn for n in probe_nets if n.cc == net.cc]
                h1 = h0 + int(rng.integers(24, 96))
                if not free(asns, h0, min(h1, days * 24)):
                    continue
                inputs = tuple(str(x) for x in rng.choice(targets, int(rng.integers(1, 3)), replace=False))
                # (no blockpage: these targets are https://, where a blockpage would not validate)
                method = str(rng.choice([m for m in BLOCK_OUTCOMES if m != "http.blockpage"]))
                events.append(PlantedEvent("service_blocking", start + h0 * HOUR,
                                           None if h1 >= days * 24 else start + h1 * HOUR, net.cc, tuple(asns), inputs,
                                           method, label=f"block {net.cc} {method}"))
            elif kind == "site_outage":
                if not free([n.asn for n in probe_nets], h0, h1):
                    continue
                asns = [n.asn for n in probe_nets]
                events.append(PlantedEvent("site_outage", start + h0 * HOUR, start + h1 * HOUR, None, (),
                                           (str(rng.choice(targets)),), "tcp.connection_refused", label="site outage"))
            else:
                if len(net.vantages) < 2 or not free([net.asn], h0, h1):
                    continue
                asns = [net.asn]
                events.append(PlantedEvent("probe_fault", start + h0 * HOUR, start + h1 * HOUR, net.cc, (net.asn,),
                                           vantage=int(rng.integers(0, len(net.vantages))), software_version="9.9.9rc1",
                                           label=f"probe fault {net.asn}"))
            take(asns, h0, min(h1, days * 24))
            break
    return Scenario(start=start, days=days, networks=nets, events=events, seed=seed)
