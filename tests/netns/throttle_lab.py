"""The throttling part of the netns lab: nginx in the internet namespace serving a large and a
small file on a few addresses, and a censor that shapes ONE host to a tenth of the link with
`tc` (an htb class and a u32 filter on that host's address), the way a throttling censor
(Roskomnadzor's "slowdown" of Twitter, 2021) slows one service while every other one works.

The whole link is shaped too (probe side 40 Mbit/s, control side 40 Mbit/s), so the numbers are
the shaper's, not the machine's: the throttled host gets 4 Mbit/s, every other host 40 Mbit/s.

Phases, each measured with the real `vantage run --experiment throughput` as probe and control:

- ``fast``: the link at 40 Mbit/s and the shaped host at 4 Mbit/s. Truth: the shaped host's big
  file is throttled (factor ~10); its small file is too short to tell; the other hosts and a
  server that is slow by itself (nginx limit_rate, as slow at the control) are not throttled.
- ``repeat``: one unshaped host, REPEATS probe runs in a row: never `throttled`.
- ``slow-link``: another volunteer network (another ASN) whose whole link is 4 Mbit/s, every host
  shaped equally: slow, not throttled.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import _nginx_base
from .topology import LabError, Topology, TopologyLab, which

THROTTLE_NET_PREFIX = "10.77.5."
LINK_RATE = "40mbit"  # the volunteer's link (and the control's)
SHAPED_RATE = "4mbit"  # the throttled host: a tenth of the link
SLOW_LINK_RATE = "4mbit"  # the slow-link trap: every host at this rate
LEAF_QUEUE_S = 0.1  # a shaper's buffer, in seconds of its rate
SLOW_SERVER_RATE = "400k"  # nginx limit_rate (bytes/s, ~3.2 Mbit/s): slow for everyone
BIG_SIZE = 64 << 20  # a sparse file: no disk is spent on it
SMALL_SIZE = 48 << 10
# Small caps keep the lab quick: 2.5 s of transfer per download (past the analyzer's 2 s
# minimum), and a byte cap the 40 Mbit/s link does not reach in that time.
BYTE_CAP = 32 << 20
TIME_CAP = 2.5
STEP_TIMEOUT = 5.0
REPEATS = 20
SLOW_LINK_ASN = "AS64510"  # another volunteer network (RFC 5398 documentation ASN)
BATCH = Path(__file__).resolve().parent / "vantage_batch.py"


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    shaped: bool = False
    slow_server: bool = False

    @property
    def address(self) -> str:
        return f"{THROTTLE_NET_PREFIX}{10 + self.index}"


HOSTS = (
    Host("shaped", 0, shaped=True),
    Host("plain-a", 1),
    Host("plain-b", 2),
    Host("plain-c", 3),
    Host("slow-server", 4, slow_server=True),
)
BY_NAME = {h.name: h for h in HOSTS}


@dataclass(frozen=True)
class Case:
    name: str
    host: Host
    phase: str  # "fast" | "repeat" | "slow-link"
    status: str  # the truth: "throttled" or "ok" (never throttled)
    method: str  # the rule that should decide
    small: bool = False

    @property
    def input(self) -> str:
        """The site's URL (a query per phase keeps the phases' inputs apart) and the resource."""
        query = "" if self.phase == "fast" else f"?phase={self.phase}"
        return f"http://{self.host.address}/{query}#download=/{'small' if self.small else 'big'}.bin"


CASES = (
    Case("shaped host, big file", BY_NAME["shaped"], "fast", "throttled", "throttled.slowdown"),
    Case("shaped host, small file (too short)", BY_NAME["shaped"], "fast", "ok", "ok.throughput_too_short", small=True),
    Case("unshaped host a", BY_NAME["plain-a"], "fast", "ok", "ok.throughput_like_control"),
    Case("unshaped host b", BY_NAME["plain-b"], "fast", "ok", "ok.throughput_like_control"),
    Case("unshaped host c", BY_NAME["plain-c"], "fast", "ok", "ok.throughput_like_control"),
    Case("slow server (slow at control)", BY_NAME["slow-server"], "fast", "ok", "ok.throughput_like_control"),
    Case("unshaped host a, repeated", BY_NAME["plain-a"], "repeat", "ok", "ok.throughput_like_control"),
    Case("slow link: host a", BY_NAME["plain-a"], "slow-link", "ok", "ok.throughput_slow_link"),
    Case("slow link: host b", BY_NAME["plain-b"], "slow-link", "ok", "ok.throughput_slow_link"),
    Case("slow link: host c", BY_NAME["plain-c"], "slow-link", "ok", "ok.throughput_slow_link"),
    Case("slow link: shaped host, shaped like all", BY_NAME["shaped"], "slow-link", "ok", "ok.throughput_slow_link"),
)


def _queue(rate: str) -> str:
    """Bytes of LEAF_QUEUE_S at ``rate`` ("40mbit"), at least two GSO super-packets."""
    assert rate.endswith("mbit"), rate
    return str(max(2 * 65536, int(float(rate[:-4]) * 1e6 / 8 * LEAF_QUEUE_S)))


def _htb(topo: Topology, role: str, dev: str, link: str, shaped: dict[str, str]) -> None:
    """An htb root on ``dev`` (egress): the link's rate for everything, and a class of its own
    for each shaped source address (the censor classifies the host's flows by its address).

    Each class queues at most LEAF_QUEUE_S seconds of its rate (a byte fifo: veth packets are
    GSO super-packets of up to 64 KB, so a packet count means nothing), as a shaper's buffer
    does: with the veth's default 1000-packet queue, what a closed download left queued (seconds
    at 4 Mbit/s) would delay the next connection to the host."""
    topo.exec(role, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    topo.exec(role, ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])
    # Small bursts: the rate holds from the first packets on, not after a free burst.
    shape = ["burst", "15k", "cburst", "15k"]
    topo.exec(role, ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
                     "rate", link, "ceil", link, *shape])
    topo.exec(role, ["tc", "class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb",
                     "rate", link, "ceil", link, *shape])
    topo.exec(role, ["tc", "qdisc", "add", "dev", dev, "parent", "1:10", "bfifo", "limit", _queue(link)])
    for i, (address, rate) in enumerate(sorted(shaped.items())):
        classid = f"1:{20 + i}"
        topo.exec(role, ["tc", "class", "add", "dev", dev, "parent", "1:1", "classid", classid, "htb",
                         "rate", rate, "ceil", rate, *shape])
        topo.exec(role, ["tc", "qdisc", "add", "dev", dev, "parent", classid, "bfifo", "limit", _queue(rate)])
        topo.exec(role, ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
                         "u32", "match", "ip", "src", f"{address}/32", "flowid", classid])


@dataclass
class ThrottleRun:
    datasets: list[Path]
    verdicts: list[dict[str, Any]]
    seconds: dict[str, float]


class ThrottleLab(TopologyLab):
    """Context manager: the topology, nginx with the files, the shaped links; ``run()`` measures
    every phase as probe (and the control once), and analyzes."""

    def __init__(self, *, prefix: str | None = None, keep_workdir: bool = False, repeats: int = REPEATS):
        super().__init__(Topology(prefix=prefix or f"vt{os.getpid()}t", keep_workdir=keep_workdir))
        self.repeats = repeats

    def build(self) -> None:
        self._servers()
        self.shape_fast()
        # The control's link: as fast as the probe's, so the control's rates are the link's too.
        _htb(self.topo, "internet", "eth1", LINK_RATE, {})

    def _servers(self) -> None:
        wd = self.topo.workdir
        www = wd / "throttle-www"
        www.mkdir()
        with open(www / "big.bin", "wb") as fh:
            fh.truncate(BIG_SIZE)
        (www / "small.bin").write_bytes(b"s" * SMALL_SIZE)
        conf = [_nginx_base(wd, "throttle")]
        for host in HOSTS:
            self.topo.add_address("internet", f"{host.address}/32")
            rate = f"    limit_rate {SLOW_SERVER_RATE};\n" if host.slow_server else ""
            conf.append(f"  server {{\n    listen {host.address}:80;\n    root {www};\n{rate}  }}\n")
        conf.append("}\n")
        path = wd / "nginx-throttle.conf"
        path.write_text("".join(conf))
        self.topo.exec("internet", [which("nginx"), "-t", "-q", "-c", str(path), "-e", str(wd / "nginx-throttle-t.log")])
        proc = self.topo.spawn("internet", "nginx-throttle", [which("nginx"), "-c", str(path), "-g", "daemon off;",
                                                              "-e", str(wd / "nginx-throttle-startup.log")])
        for host in HOSTS:
            self.topo.wait_port("internet", host.address, 80, proc=proc)

    def shape_fast(self) -> None:
        """The censor: the link at LINK_RATE, the shaped host at SHAPED_RATE."""
        _htb(self.topo, "censor", "eth0", LINK_RATE, {h.address: SHAPED_RATE for h in HOSTS if h.shaped})

    def shape_slow_link(self) -> None:
        """Another network's slow link: every host at SLOW_LINK_RATE, none singled out."""
        _htb(self.topo, "censor", "eth0", SLOW_LINK_RATE, {})

    # ----------------------------------------------------------------- measuring

    def write_list(self, cases: list[Case], tag: str) -> Path:
        path = self.topo.workdir / f"throughput-{tag}.csv"
        with open(path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["url", "category_code", "category_description", "date_added", "source", "notes"])
            for case in cases:
                out.writerow([case.input, "NEWS", "News", "2026-01-01", "netns-lab", case.name])
        return path

    def command(self, role: str, lst: Path, dataset: Path, asn: str) -> list[str]:
        from .lab import LAB_CC

        return ["run", "--experiment", "throughput", "--list", str(lst), "--output", str(dataset), "--role", role,
                "--cc", LAB_CC, "--asn", asn, "--timeout", str(STEP_TIMEOUT), "--download-bytes", str(BYTE_CAP),
                "--download-time", str(TIME_CAP), "--no-progress"]

    def batch(self, role: str, command_lines: list[list[str]]) -> subprocess.Popen[str]:
        from .lab import lab_env

        argv = self.topo.argv(role, [sys.executable, str(BATCH), *map(json.dumps, command_lines)])
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=lab_env(self.topo.workdir))

    @staticmethod
    def wait(role: str, proc: subprocess.Popen[str], timeout: float = 600) -> None:
        _out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"the {role}'s vantage runs failed ({proc.returncode}):\n{err[-2000:]}")

    def run(self, step: Callable[[str], None] = lambda _m: None) -> ThrottleRun:
        from .lab import CONTROL_ASN, PROBE_ASN, analyze_datasets

        results = self.topo.workdir / "results"
        seconds: dict[str, float] = {}
        by_phase = {phase: [c for c in CASES if c.phase == phase] for phase in ("fast", "repeat", "slow-link")}
        control_ds, probe_ds = results / "control", results / "probe"
        slow_ds = results / "probe-slow-link"

        t = time.monotonic()
        step(f"control: {len(CASES)} downloads; probe: {len(by_phase['fast'])} downloads, then "
             f"{self.repeats} runs of one unshaped host (link {LINK_RATE}, shaped host {SHAPED_RATE})")
        control = self.batch("control", [self.command("control", self.write_list(list(CASES), "all"), control_ds,
                                                      CONTROL_ASN)])
        fast = self.command("probe", self.write_list(by_phase["fast"], "fast"), probe_ds, PROBE_ASN)
        repeat = self.command("probe", self.write_list(by_phase["repeat"], "repeat"), probe_ds, PROBE_ASN)
        probe = self.batch("probe", [fast] + [repeat] * self.repeats)
        self.wait("probe", probe)
        seconds["fast + repeats"] = time.monotonic() - t

        t = time.monotonic()
        step(f"slow link: every host at {SLOW_LINK_RATE} ({SLOW_LINK_ASN}); {len(by_phase['slow-link'])} downloads")
        self.shape_slow_link()
        self.wait("probe", self.batch("probe", [
            self.command("probe", self.write_list(by_phase["slow-link"], "slow-link"), slow_ds, SLOW_LINK_ASN)]))
        self.wait("control", control)
        seconds["slow link"] = time.monotonic() - t

        t = time.monotonic()
        step("analyzing")
        datasets = [probe_ds, slow_ds, control_ds]
        verdicts = analyze_datasets(datasets, results / "verdicts.parquet", step)
        seconds["analyze"] = time.monotonic() - t
        return ThrottleRun(datasets, verdicts, seconds)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Row:
    case: Case
    status: str
    method: str
    factor: float | None


def score(verdicts: list[dict[str, Any]]) -> list[Row]:
    """One row per probe verdict of a case (a case without a verdict counts once, as missing)."""
    by_input: dict[str, list[dict[str, Any]]] = {}
    for v in verdicts:
        by_input.setdefault(str(v["input"]), []).append(v)
    rows = []
    for case in CASES:
        for v in by_input.get(case.input) or [{}]:
            rows.append(Row(case, str(v.get("status") or "(none)"), str(v.get("method") or "-"),
                            v.get("throttle_factor")))
    return rows


def precision_recall(rows: list[Row]) -> tuple[float, float, int, int, int]:
    tp = sum(1 for r in rows if r.case.status == "throttled" and r.status == "throttled")
    fp = sum(1 for r in rows if r.case.status != "throttled" and r.status == "throttled")
    fn = sum(1 for r in rows if r.case.status == "throttled" and r.status != "throttled")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, tp, fp, fn


def render(rows: list[Row]) -> str:
    w = max(len(r.case.name) for r in rows)
    lines = [f"{'case':<{w}}  {'phase':<9} {'truth':<10} {'verdict':<10} {'factor':>7}  method"]
    grouped: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in rows:
        grouped.setdefault((r.case.name, r.case.phase, r.status, r.method), []).append(r)
    for (name, phase, status, method), rs in grouped.items():
        case = rs[0].case
        factors = [r.factor for r in rs if r.factor is not None]
        if len(factors) > 1:
            factor = f"{min(factors):.1f}-{max(factors):.1f}"
        else:
            factor = f"{factors[0]:.1f}" if factors else "-"
        count = f" x{len(rs)}" if len(rs) > 1 else ""
        mark = "" if status == case.status and method == case.method else "  <-- wrong"
        lines.append(f"{name + count:<{w + 4}}{phase:<9} {case.status:<10} {status:<10} {factor:>9}  {method}{mark}")
    p, r, tp, fp, fn = precision_recall(rows)
    lines.append("")
    lines.append(f"throttled: precision {p:.3f}  recall {r:.3f}  (tp {tp}, fp {fp}, fn {fn}); "
                 f"status agreement {sum(1 for x in rows if x.status == x.case.status)}/{len(rows)}")
    return "\n".join(lines)
