"""The whole lab in one object: topology, servers and censor up; `vantage run` in the probe and
control namespaces; `vantage analyze`; verdicts scored against the scenarios' ground truth.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from .scenarios import SCENARIOS, Scenario
from .scoring import Score, Truth, score
from .servers import LabServers
from .topology import (
    CDN_NODE_CONTROL_SIDE,
    CDN_NODE_PROBE_SIDE,
    CONTROL_RESOLVER,
    LAB_NET,
    PUBLIC_RESOLVER,
    LabError,
    Topology,
    TopologyLab,
)

VENV_BIN = Path(sys.executable).parent
FINGERPRINTS = Path(__file__).resolve().parent / "fingerprints.csv"
# Lab servers answer in milliseconds or never; 6 s covers the slow site (about 3 s) with
# room to spare while keeping the dropped scenarios cheap.
STEP_TIMEOUT = 6.0
PROBE_ASN, CONTROL_ASN = "AS64500", "AS64501"  # RFC 5398 documentation ASNs
LAB_CC = "ZZ"
NO_RESOLVER_ADDR = "10.77.3.99"


@dataclass
class LabRun:
    probe_dataset: Path
    control_dataset: Path
    verdicts_path: Path
    verdicts: list[dict[str, Any]]
    score: Score
    seconds: dict[str, float]


class NetnsLab(TopologyLab):
    """Context manager: build the lab (always torn down on exit), then ``run()`` the pipeline."""

    def __init__(self, scenarios: tuple[Scenario, ...] = SCENARIOS, *, keep_workdir: bool = False,
                 prefix: str | None = None):
        super().__init__(Topology(prefix=prefix, keep_workdir=keep_workdir))
        self.scenarios = scenarios
        self.servers: LabServers | None = None
        self.build_seconds = 0.0

    def __enter__(self) -> Self:
        started = time.monotonic()
        super().__enter__()
        self.build_seconds = time.monotonic() - started
        return self

    def build(self) -> None:
        self.servers = LabServers(self.topo, self.scenarios)
        self.servers.start_internet()
        self.servers.start_censor()
        # Where the dns_consistency injection check asks: a lab address with no resolver.
        self.topo.add_address("internet", f"{NO_RESOLVER_ADDR}/32")

    @property
    def ca_bundle(self) -> Path:
        assert self.servers is not None
        return self.servers.ca.bundle

    def truths(self) -> list[Truth]:
        return [Truth(sc.name, sc.url, sc.status, sc.layer, sc.description) for sc in self.scenarios]

    # ----------------------------------------------------------------- the pipeline

    def write_list(self, path: Path) -> Path:
        """The scenarios' URLs as a Citizen Lab CSV list."""
        with open(path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["url", "category_code", "category_description", "date_added", "source", "notes"])
            for sc in self.scenarios:
                out.writerow([sc.url, "NEWS", "News Media", "2026-01-01", "netns-lab", sc.name])
        return path

    def env(self) -> dict[str, str]:
        return lab_env(self.workdir)

    def vantage(self, role: str | None, args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the `vantage` command, inside a namespace when ``role`` is given, else on the host."""
        argv = [str(VENV_BIN / "vantage"), *args]
        if role is not None:
            argv = self.topo.argv(role, argv)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env())
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"vantage {' '.join(args[:1])} timed out after {timeout}s") from exc
        if out.returncode != 0:
            raise LabError(f"vantage {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return out

    def measure(self, role: str, dataset: Path, *, experiment: str = "web_connectivity",
                targets: Path | None = None, extra: list[str] | None = None) -> None:
        resolver = PUBLIC_RESOLVER if role == "probe" else CONTROL_RESOLVER
        asn = PROBE_ASN if role == "probe" else CONTROL_ASN
        targets = targets or self.write_list(self.workdir / "targets.csv")
        self.vantage(role, [
            "run", "--experiment", experiment, "--list", str(targets), "--output", str(dataset),
            "--resolver", resolver, "--ca-bundle", str(self.ca_bundle), "--role", role, "--cc", LAB_CC,
            "--asn", asn, "--network", f"netns lab {role} network", "--timeout", str(STEP_TIMEOUT),
            "--no-progress", *(extra or []),
        ])

    def analyze(self, datasets: list[Path], output: Path, step: Callable[[str], None] = lambda _m: None,
                ) -> list[dict[str, Any]]:
        return analyze_datasets(datasets, output, step)

    def run_dns_consistency(self, step: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
        """dns_consistency over every scenario's name, with the injection check, probe and
        control at once; verdicts with the lab's ASN database."""
        out = self.workdir / "results-dns"
        out.mkdir(exist_ok=True)
        targets = self.write_list(out / "targets.csv")
        extra = ["--injection-target", NO_RESOLVER_ADDR]
        step(f"vantage run --experiment dns_consistency --injection-target {NO_RESOLVER_ADDR}, probe and control")
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(self.measure, role, out / role, experiment="dns_consistency", targets=targets,
                                extra=extra) for role in ("probe", "control")]
            for job in jobs:
                job.result()
        return analyze_datasets([out / "probe", out / "control"], out / "verdicts.parquet", step,
                                asn_db=write_asn_db(out / "lab-asn.mmdb"))

    def run(self, step: Callable[[str], None] = lambda _m: None) -> LabRun:
        """Probe run, control run, analysis, score."""
        out = self.workdir / "results"
        out.mkdir(exist_ok=True)
        probe_ds, control_ds, verdicts_path = out / "probe", out / "control", out / "verdicts.parquet"
        seconds: dict[str, float] = {}

        def measure(role: str, ds: Path) -> None:
            t = time.monotonic()
            self.measure(role, ds)
            seconds[role] = time.monotonic() - t

        # Probe and control measure at the same time, as a control helper would.
        step(f"vantage run --role probe in {self.topo.ns['probe']} and --role control in {self.topo.ns['control']}")
        with ThreadPoolExecutor(2) as pool:
            for job in [pool.submit(measure, "probe", probe_ds), pool.submit(measure, "control", control_ds)]:
                job.result()
        step(f"vantage analyze --public-net {LAB_NET}")
        t = time.monotonic()
        verdicts = self.analyze([probe_ds, control_ds], verdicts_path, step)
        seconds["analyze"] = time.monotonic() - t
        probe_rows = [v for v in verdicts if v.get("role", "probe") == "probe"]
        return LabRun(probe_ds, control_ds, verdicts_path, probe_rows, score(self.truths(), probe_rows), seconds)


def lab_env(workdir: Path) -> dict[str, str]:
    """The environment of `vantage` in the lab: the probe keeps state under the user's data
    directories, so they live inside the lab's work directory."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    # The lab's volunteer has consented (in the lab's own config directory, not the product's default).
    from probe.config import record_consent

    record_consent(True, home / "config" / "vantage" / "config.toml")
    return {
        "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }


def write_asn_db(path: Path) -> Path:
    """The lab's address registry as a MaxMind-format ASN database: the geo-DNS site's two
    nodes belong to one CDN network, as real CDN nodes do (the analyzer's ASN-overlap rule)."""
    import mmdb_writer
    import netaddr

    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for nets, asn, org in (
        ([f"{CDN_NODE_PROBE_SIDE}/32", f"{CDN_NODE_CONTROL_SIDE}/32"], 64510, "Lab CDN"),
        (["10.77.3.0/24"], 64496, "Lab Hosting"),
        (["10.77.8.0/24"], 64500, "Lab ISP (censored network)"),
    ):
        writer.insert_network(netaddr.IPSet(nets), {"autonomous_system_number": asn,
                                                    "autonomous_system_organization": org})
    writer.to_db_file(str(path))
    return path


def analyze_datasets(datasets: list[Path], output: Path, step: Callable[[str], None] = lambda _m: None,
                     *, asn_db: Path | None = None) -> list[dict[str, Any]]:
    """`vantage analyze --public-net 10.77.0.0/16` with the lab's blockpage fingerprints (and
    its ASN database when given); the library's analyze() when this build has no such command."""
    import pyarrow.parquet as pq

    options = cli_options("analyze")
    if options is None:
        from analysis.verdicts import analyze

        step("`vantage analyze` is not registered in this build: calling analysis.verdicts.analyze()")
        analyze(datasets, output, public_nets=[LAB_NET], fingerprint_files=[FINGERPRINTS], asn_db=asn_db)
    else:
        args = [str(VENV_BIN / "vantage"), "analyze", *map(str, datasets), "--output", str(output),
                "--public-net", LAB_NET]
        if "--fingerprints" in options:
            args += ["--fingerprints", str(FINGERPRINTS)]
        if asn_db is not None and "--asn-db" in options:
            args += ["--asn-db", str(asn_db)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=lab_env(output.parent))
        if out.returncode != 0:
            raise LabError(f"vantage analyze failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return pq.read_table(output).to_pylist()


def cli_options(command: str) -> set[str] | None:
    """The option names of a `vantage` command, or None when the build does not have it."""
    import click

    from vantage.cli import main

    cmd = main.get_command(click.Context(main), command)
    if cmd is None:
        return None
    return {opt for param in cmd.params for opt in getattr(param, "opts", [])}
