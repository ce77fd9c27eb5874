"""The QUIC part of the netns lab: sites in the internet namespace that answer over TCP/TLS
(nginx) and over QUIC/HTTP/3 (an aioquic server, tests/support/h3_server.py), one lab address
per scenario, and a censor that drops or rejects UDP 443 for one host (nftables), drops the
QUIC Initials that carry a given SNI (an inline filter that decrypts them, quic_dpi.py), or
blocks TCP 443 while QUIC passes. The probe and the control measure with `vantage run`
(web_connectivity, which runs the QUIC step for https targets), then `vantage analyze`.
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

from .servers import LabCA, _nginx_base, _wait_log
from .topology import IP, LAB_NET, PUBLIC_RESOLVER, LabError, Topology, TopologyLab, which

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUIC_NET_PREFIX = "10.77.7."
DOMAIN = "quic.lab.test"
QDPI_TUN, QDPI_TABLE, QDPI_MARK = "qdpi0", "107", "0x7"
STEP_TIMEOUT = 4.0  # lab servers answer in milliseconds; a dropped QUIC handshake costs this much

# What the censor does to a scenario's host.
OPEN, UDP_DROP, UDP_REJECT, INITIAL_SNI, TCP_BLOCK, NO_QUIC, NO_QUIC_SILENT = (
    "open", "udp_drop", "udp_reject", "initial_sni", "tcp_block", "no_quic", "no_quic_silent")


@dataclass(frozen=True)
class QuicScenario:
    name: str
    technique: str
    index: int  # the lab address: QUIC_NET_PREFIX + (10 + index)
    status: str
    layer: str | None
    method: str  # the analyzer's rule the probe's view supports
    description: str

    @property
    def host(self) -> str:
        return f"{self.name}.{DOMAIN}"

    @property
    def address(self) -> str:
        return f"{QUIC_NET_PREFIX}{10 + self.index}"

    @property
    def url(self) -> str:
        return f"https://{self.host}/"

    @property
    def quic_served(self) -> bool:
        return self.technique not in (NO_QUIC, NO_QUIC_SILENT)


QUIC_SCENARIOS = (
    QuicScenario("open", OPEN, 0, "ok", None, "ok.https_validated", "TCP/TLS and QUIC work at both sides"),
    QuicScenario("udp-drop", UDP_DROP, 1, "blocked", "quic", "quic.timeout",
                 "the censor drops UDP 443 to the host's address"),
    QuicScenario("udp-reject", UDP_REJECT, 2, "blocked", "quic", "quic.refused",
                 "the censor rejects UDP 443 to the host's address (ICMP port unreachable)"),
    QuicScenario("initial-sni", INITIAL_SNI, 3, "blocked", "quic", "quic.timeout",
                 "the censor decrypts QUIC Initials and drops those with this SNI"),
    # Trap: the same address as initial-sni, another SNI: the filter reads the SNI, not the address.
    QuicScenario("initial-other-sni", OPEN, 3, "ok", None, "ok.https_validated",
                 "another SNI on the initial-sni address passes the Initial filter"),
    QuicScenario("tcp-blocked", TCP_BLOCK, 4, "blocked", "tcp_ip", "tcp.blocked_quic_ok",
                 "the censor resets TCP 443 to the host; QUIC passes"),
    # Trap: the site has no QUIC server: QUIC fails at the probe and at the control alike.
    QuicScenario("no-quic", NO_QUIC, 5, "ok", None, "ok.https_validated", "the site does not speak QUIC"),
    # Trap: most of the internet: no QUIC, UDP 443 dropped by the site's own firewall, no Alt-Svc.
    # Both sides stop waiting for QUIC once the HTTPS answer arrived (`interrupted`: not measured).
    QuicScenario("no-quic-silent", NO_QUIC_SILENT, 6, "ok", None, "ok.https_validated",
                 "the site drops UDP 443 itself and advertises no h3"),
)


def _page(sc: QuicScenario) -> str:
    # Real pages are several KB (the HTTP comparison reads body lengths).
    body = "\n".join(f"<p>{sc.name} item {i}: carried unchanged by the lab's internet.</p>" for i in range(12))
    return f"<!doctype html>\n<html><head><title>{sc.name} - quic lab</title></head>\n<body>\n{body}\n</body></html>\n"


class QuicServers:
    """DNS, nginx (TCP/TLS) and the HTTP/3 server in the internet namespace; the censor's rules."""

    def __init__(self, topo: Topology, scenarios: tuple[QuicScenario, ...] = QUIC_SCENARIOS):
        self.topo = topo
        self.scenarios = scenarios
        self.ca = LabCA.create(topo.workdir)

    def start(self) -> None:
        wd = self.topo.workdir
        addresses = sorted({sc.address for sc in self.scenarios})
        for ip in addresses:
            self.topo.add_address("internet", f"{ip}/32")
        hosts = wd / "quic-hosts"
        hosts.write_text("".join(f"{sc.address} {sc.host}\n" for sc in self.scenarios))
        proc = self.topo.spawn("internet", "dnsmasq-quic", [
            which("dnsmasq"), "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts",
            f"--addn-hosts={hosts}", f"--local=/{DOMAIN}/", "--bind-interfaces", "--log-facility=-",
            f"--listen-address={PUBLIC_RESOLVER}", f"--pid-file={wd}/dnsmasq-quic.pid",
        ])
        self.topo.wait_port("internet", PUBLIC_RESOLVER, 53, proto="udp", proc=proc)
        # One certificate for every lab name (both names on the shared address included).
        crt, key = self.ca.issue(wd, "quic-sites", *[sc.host for sc in self.scenarios])
        www = wd / "www-quic"
        conf = [_nginx_base(wd, "quic")]
        for sc in self.scenarios:
            root = www / sc.name
            root.mkdir(parents=True, exist_ok=True)
            (root / "index.html").write_text(_page(sc))
            # The sites with an HTTP/3 server advertise it (RFC 7838), as real ones do; the probe
            # waits for QUIC only when the HTTPS answer does. no-quic sends no Alt-Svc.
            alt = "    add_header Alt-Svc 'h3=\":443\"; ma=86400' always;\n" if sc.quic_served else ""
            conf.append(f"  server {{\n    listen {sc.address}:443 ssl;\n    server_name {sc.host};\n"
                        f"    ssl_certificate {crt};\n    ssl_certificate_key {key};\n    root {root};\n{alt}  }}\n")
        conf.append("}\n")
        path = wd / "nginx-quic.conf"
        path.write_text("".join(conf))
        self.topo.exec("internet", [which("nginx"), "-t", "-q", "-c", str(path), "-e", str(wd / "nginx-quic-t.log")])
        nginx = self.topo.spawn("internet", "nginx-quic", [which("nginx"), "-c", str(path), "-g", "daemon off;",
                                                           "-e", str(wd / "nginx-quic-startup.log")])
        for ip in addresses:
            self.topo.wait_port("internet", ip, 443, proc=nginx)
        # HTTP/3 on the addresses of the sites that speak QUIC only (no-quic's address has no
        # UDP listener: the kernel answers ICMP port unreachable, at both sides alike).
        quic_ips = sorted({sc.address for sc in self.scenarios if sc.quic_served})
        pages = {sc.host: _page(sc) for sc in self.scenarios}
        config = wd / "h3-sites.json"
        config.write_text(json.dumps({"listen": [[ip, 443] for ip in quic_ips], "cert": str(crt), "key": str(key),
                                      "pages": pages}))
        h3 = self.topo.spawn("internet", "h3-server", [sys.executable, "-m", "tests.support.h3_server", str(config)],
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        for ip in quic_ips:
            self.topo.wait_port("internet", ip, 443, proto="udp", proc=h3, timeout=20)
        # The silent sites' own firewall (not the censor): UDP 443 dropped for probe and control alike.
        silent = [sc.address for sc in self.scenarios if sc.technique == NO_QUIC_SILENT]
        if silent:
            drops = "\n    ".join(f"ip daddr {ip} udp dport 443 drop" for ip in silent)
            self.topo.nft("internet", "table inet quicsites {\n  chain input { type filter hook input priority 0; "
                                      f"policy accept;\n    {drops}\n  }}\n}}\n")

    def start_censor(self) -> None:
        wd = self.topo.workdir
        rules_path = wd / "quic-dpi-rules.json"
        rules_path.write_text(json.dumps({"sni": [sc.host for sc in self.scenarios if sc.technique == INITIAL_SNI]}))
        proc = self.topo.spawn("censor", "quic-dpi", [
            sys.executable, str(HERE / "quic_dpi.py"), "--tun", QDPI_TUN, "--rules", str(rules_path),
        ])
        _wait_log(proc, "quic dpi ready")
        # Marked packets (UDP 443 from the probe's side) take the filter's detour.
        self.topo.exec("censor", [IP, "link", "set", QDPI_TUN, "up"])
        self.topo.exec("censor", [IP, "route", "add", LAB_NET, "dev", QDPI_TUN, "table", QDPI_TABLE])
        self.topo.exec("censor", [IP, "rule", "add", "fwmark", QDPI_MARK, "lookup", QDPI_TABLE])
        self.topo.nft("censor", quic_censor_ruleset(self.scenarios))

    def write_list(self, path: Path) -> Path:
        with open(path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["url", "category_code", "category_description", "date_added", "source", "notes"])
            for sc in self.scenarios:
                out.writerow([sc.url, "NEWS", "News Media", "2026-01-01", "netns-quic-lab", sc.name])
        return path


def quic_censor_ruleset(scenarios: tuple[QuicScenario, ...] = QUIC_SCENARIOS) -> str:
    rules: list[str] = []
    for sc in scenarios:
        match = f'iifname "eth0" ip daddr {sc.address}'
        if sc.technique == UDP_DROP:
            rules.append(f"{match} udp dport 443 drop")
        elif sc.technique == UDP_REJECT:
            rules.append(f"{match} udp dport 443 reject")  # ICMP port unreachable
        elif sc.technique == TCP_BLOCK:
            rules.append(f"{match} tcp dport 443 reject with tcp reset")
    body = "\n    ".join(rules)
    return f"""
table inet quiccensor {{
  chain prerouting_filter {{ type filter hook prerouting priority raw; policy accept;
    {body}
  }}
  chain prerouting_mangle {{ type filter hook prerouting priority mangle; policy accept;
    # Every QUIC datagram from the probe's side crosses the inline Initial filter.
    iifname "eth0" udp dport 443 meta mark set {QDPI_MARK}
  }}
}}
"""


@dataclass
class QuicRun:
    datasets: list[Path]
    verdicts: list[dict[str, object]]
    seconds: dict[str, float]


class QuicLab(TopologyLab):
    """Context manager: a topology with the QUIC sites and the censor (always torn down on exit);
    ``run()`` measures every scenario as probe and control and analyzes."""

    def __init__(self, scenarios: tuple[QuicScenario, ...] = QUIC_SCENARIOS, *, prefix: str | None = None,
                 keep_workdir: bool = False):
        super().__init__(Topology(prefix=prefix or f"vt{os.getpid()}q", keep_workdir=keep_workdir))
        self.scenarios = scenarios
        self.servers: QuicServers | None = None

    def build(self) -> None:
        self.servers = QuicServers(self.topo, self.scenarios)
        self.servers.start()
        self.servers.start_censor()

    def measure(self) -> list[Path]:
        """`vantage run` as probe and as control at the same time, each in its namespace."""
        from .lab import CONTROL_ASN, LAB_CC, PROBE_ASN, VENV_BIN, lab_env

        assert self.servers is not None
        lst = self.servers.write_list(self.topo.workdir / "quic-sites.csv")
        procs, datasets = [], []
        for role, asn in (("probe", PROBE_ASN), ("control", CONTROL_ASN)):
            ds = self.topo.workdir / "results" / f"{role}-quic"
            datasets.append(ds)
            argv = self.topo.argv(role, [
                str(VENV_BIN / "vantage"), "run", "--list", str(lst), "--output", str(ds), "--role", role,
                "--cc", LAB_CC, "--asn", asn, "--resolver", PUBLIC_RESOLVER, "--timeout", str(STEP_TIMEOUT),
                "--ca-bundle", str(self.servers.ca.bundle), "--no-progress", "-q",
            ])
            procs.append((role, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                 env=lab_env(self.topo.workdir))))
        for role, proc in procs:
            _out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise LabError(f"the {role}'s vantage run failed ({proc.returncode}):\n{err[-2000:]}")
        return datasets

    def run(self, step: Callable[[str], None] = lambda _m: None) -> QuicRun:
        from .lab import analyze_datasets

        seconds: dict[str, float] = {}
        t = time.monotonic()
        step(f"measuring {len(self.scenarios)} https sites as probe and control (TCP/TLS/HTTP and QUIC)")
        datasets = self.measure()
        seconds["measure"] = time.monotonic() - t
        t = time.monotonic()
        step("analyzing")
        verdicts = analyze_datasets(datasets, self.topo.workdir / "results" / "verdicts.parquet", step)
        seconds["analyze"] = time.monotonic() - t
        return QuicRun(datasets, verdicts, seconds)

    def by_input(self) -> dict[str, QuicScenario]:
        return {sc.url: sc for sc in self.scenarios}
