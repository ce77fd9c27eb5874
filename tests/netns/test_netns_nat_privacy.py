"""Behind a masquerading router, a site that echoes the client's address must leave no trace of
the probe's interface address nor of its public address, in any encoding, in anything Vantage
writes: the Parquet dataset, the log at -vv, the analysis DuckDB file, the report and its CSV.

    probe 10.77.1.2 ── censor (masquerade: leaves as 10.77.2.1) ── internet 10.77.3.80 echo site + DNS
                                                                  └── control 10.77.4.2 helper

Run once with --control (the helper tells the probe its public address) and once without
(paranoid mode: every IP literal of captured text that is not a target goes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from .address_forms import find
from .conftest import require_lab
from .lab import VENV_BIN, lab_env
from .topology import CENSOR_NET_SIDE, CONTROL_ADDR, LAB_NET, PROBE_ADDR, Topology

pytestmark = pytest.mark.netns

PUBLIC_ADDR = CENSOR_NET_SIDE  # what the masquerading router writes as the source
SITE_ADDR = "10.77.3.80"  # the echo site and its DNS server, in the "internet"
ZONE = "lab.test"
HELPER = f"http://{CONTROL_ADDR}:8080"
ECHO_SERVERS = Path(__file__).resolve().parent / "echo_servers.py"
OWN = [PROBE_ADDR, PUBLIC_ADDR]
# /go redirects with the address in the query string, /literal to http://<addr>/, /named to
# http://ip-a-b-c-d.lab.test/ (which the lab DNS resolves to a.b.c.d).
INPUTS = [f"http://echo.{ZONE}/go", f"http://echo.{ZONE}/literal", f"http://echo.{ZONE}/named"]
# Its A record IS the client's address: only a run that knows its public address can tell it
# from a target's address, so the paranoid run leaves it out (docs/network-layer.md).
WHOAMI_INPUT = f"http://whoami.{ZONE}/"


@dataclass
class NatLab:
    topo: Topology
    workdir: Path

    def vantage(self, role: str, args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [str(VENV_BIN / "vantage"), *args]
        if role != "host":
            argv = self.topo.argv(role, argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=lab_env(self.workdir))


@pytest.fixture(scope="module")
def nat_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatLab]:
    require_lab(("ip", "nft", "ss", "sysctl"))
    # Own prefix letter: the session lab ("vt<pid>") and the VPN lab ("vt<pid>v") may be up too.
    topo = Topology(prefix=f"vt{os.getpid()}p")
    with topo:
        # The home router: everything the probe sends to the internet leaves with the
        # router's address, and the internet has no route back to the probe's own network.
        topo.nft("censor", 'table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n'
                           '  oifname "eth1" masquerade\n }\n}\n')
        topo.exec("internet", ["ip", "route", "del", "10.77.1.0/24"])
        topo.exec("internet", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])  # probe <-> helper
        topo.add_address("internet", f"{SITE_ADDR}/32")
        echo = topo.spawn("internet", "echo", [sys.executable, str(ECHO_SERVERS), SITE_ADDR, ZONE, PROBE_ADDR])
        topo.wait_port("internet", SITE_ADDR, 80, proc=echo)
        topo.wait_port("internet", SITE_ADDR, 53, proc=echo)
        workdir = tmp_path_factory.mktemp("natlab")
        env = {**lab_env(workdir), "PYTHONUNBUFFERED": "1"}
        helper = topo.spawn("control", "helper", [
            str(VENV_BIN / "vantage"), "-v", "control", "serve", "--listen", f"{CONTROL_ADDR}:8080",
            "--allow-private", "--resolver", SITE_ADDR,
        ], env=env)
        topo.wait_port("control", CONTROL_ADDR, 8080, proc=helper)
        yield NatLab(topo, workdir)


def written_text(lab: NatLab, name: str, *, control: bool) -> tuple[str, dict[str, str]]:
    """Run probe -> analyze -> report; every text Vantage wrote, by where it came from."""
    out = lab.workdir / name
    inputs = INPUTS + ([WHOAMI_INPUT] if control else [])
    args = ["-vv", "run", *(a for u in inputs for a in ("--url", u)), "--resolver", SITE_ADDR,
            "--output", str(out / "ds"), "--timeout", "4", "--no-progress", "--cc", "ZZ", "--asn", "AS64500",
            "--public-net", LAB_NET]  # the lab's "internet" is private space
    if control:
        args += ["--control", HELPER]
    run = lab.vantage("probe", args)
    assert run.returncode == 0, run.stderr[-3000:]
    texts: dict[str, str] = {"run log (stderr)": run.stderr, "run output (stdout)": run.stdout}

    analyze = lab.vantage("host", ["-vv", "analyze", str(out / "ds"), "-o", str(out / "verdicts.parquet"),
                                   "--db", str(out / "analysis.duckdb"), "--public-net", LAB_NET])
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    report = lab.vantage("host", ["-vv", "report", str(out / "ds"), "-o", str(out / "report.html"),
                                  "--csv", str(out / "report.csv"), "--public-net", LAB_NET])
    assert report.returncode == 0, report.stderr[-3000:]
    texts["analyze log"] = analyze.stderr + analyze.stdout
    texts["report log"] = report.stderr + report.stdout

    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            # every column, nested lists and structs included, read back
            texts[str(path)] = json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
        elif path.suffix == ".duckdb":
            texts[str(path)] = dump_duckdb(path)
        elif path.suffix in (".html", ".csv", ".json", ".md"):
            texts[str(path)] = path.read_text(errors="replace")
    assert any(p.endswith(".duckdb") for p in texts) and any(p.endswith(".csv") for p in texts)
    assert any(p.endswith(".html") for p in texts)
    return run.stderr, texts


def dump_duckdb(path: Path) -> str:
    con = duckdb.connect(str(path), read_only=True)
    try:
        parts = []
        for schema, table in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database()"
        ).fetchall():
            rows = con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            parts.append(f"{schema}.{table}: {rows!r}")
        return "\n".join(parts)
    finally:
        con.close()


def leaks(texts: dict[str, str]) -> list[str]:
    return [f"{where}: {addr} as {form}: ...{context}..." for where, text in texts.items()
            for addr, form, context in find(text, OWN)]


def measurements(texts: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for where, text in texts.items():
        if "/measurements/" in where and where.endswith(".parquet"):
            rows += json.loads(text)
    return rows


def test_behind_nat_with_a_control_helper_nothing_of_ours_is_written(nat_lab: NatLab) -> None:
    stderr, texts = written_text(nat_lab, "with-control", control=True)
    assert "privacy: this network's public address (as the control helper or STUN server saw it) is scrubbed" in stderr, stderr[:6000]
    # The site really saw the router's address (the masquerade works) and echoed it.
    assert f"from {PUBLIC_ADDR}" in nat_lab.topo.processes["echo"].log.read_text()
    assert leaks(texts) == []
    # ...while what was measured is still there: the scrubbing could have failed.
    rows = measurements(texts)
    probe = [r for r in rows if r["role"] == "probe"]
    assert len(probe) == 4 and any(r["role"] == "control" for r in rows)
    hops = [h for r in probe for h in r["http"]]  # type: ignore[attr-defined]
    assert "Your address is [scrubbed]" in {h["title"] for h in hops}
    assert any(h["url"].endswith("/page?ip=[scrubbed]&hex=[scrubbed]") for h in hops)
    assert any(h["url"] == "http://[scrubbed]/" and h["ip"] == "[scrubbed]" for h in hops)
    assert any(h["url"] == f"http://ip-[scrubbed].{ZONE}/" for h in hops)
    whoami = next(r for r in probe if r["input"] == WHOAMI_INPUT)
    assert "[scrubbed]" in {a["value"] for q in whoami["dns"] for a in q["answers"]}  # type: ignore[attr-defined]
    assert SITE_ADDR in texts[next(p for p in texts if "/measurements/" in p)]  # targets are kept
    assert "HTTP Request: GET http://echo.lab.test/page?ip=[scrubbed]" in stderr  # httpx at -v
    assert "receive_response_headers.complete" in stderr  # httpcore's raw headers at -vv
    helper_log = nat_lab.topo.processes["helper"].log.read_text()
    assert "/v1/whoami" in helper_log and PUBLIC_ADDR not in helper_log  # the helper never logs it


def test_behind_nat_without_a_helper_paranoid_mode_writes_nothing_of_ours(nat_lab: NatLab) -> None:
    stderr, texts = written_text(nat_lab, "paranoid", control=False)
    assert "privacy: public address unknown" in stderr
    assert leaks(texts) == []
    rows = measurements(texts)
    assert len(rows) == 3 and all(r["role"] == "probe" for r in rows)
    hops = [h for r in rows for h in r["http"]]  # type: ignore[attr-defined]
    assert "Your address is [scrubbed]" in {h["title"] for h in hops}
    tcp_ips = {c["ip"] for r in rows for c in r["tcp"]}  # type: ignore[attr-defined]
    assert tcp_ips == {SITE_ADDR}  # a target's address is not scrubbed
