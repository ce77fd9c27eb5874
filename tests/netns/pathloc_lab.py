"""The path-location lab: a chain of router namespaces between the probe and the target, with an
on-path censor (path_censor.py) on the router two hops from the probe and another three hops
from it; `vantage locate` runs in the probe namespace and must name the censor's hop.

    probe 10.78.1.1 ── .2 r1 10.78.2.1 ── .2 r2 10.78.3.1 ── .2 r3 10.78.4.1 ── .2 r4 10.78.5.1 ── .2 target
                         (TTL 1)             (TTL 2: censor)     (TTL 3: censor)     (TTL 4)          (TTL 5)

Hop k answers time-exceeded from 10.78.k.2 (its probe-facing side). The target runs a TLS and
an HTTP server (path_target.py) and dnsmasq (every name -> the target); 10.78.9.9 is routed to
the target host, where nothing listens (the "down" traps). Built on Topology's primitives
(exec, spawn, close) and TopologyLab: the same teardown (context manager, atexit, fixture finalizer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .lab import VENV_BIN
from .servers import _wait_log
from .topology import IP, Topology, TopologyLab, which

HERE = Path(__file__).resolve().parent
ROUTERS = ("r1", "r2", "r3", "r4")
NODES = ("probe", *ROUTERS, "target")
NET = "10.78.0.0/16"
TARGET = "10.78.5.2"
DOWN = "10.78.9.9"  # routed to the target host; nothing listens there
BLACKHOLE = "10.78.9.10"  # routed to the target host, which drops everything sent to it (no ICMP)
# The same target host under a second address, for which r2 sends no time-exceeded (a censor's
# router that filters ICMP, or rate-limits it to nothing): locating then needs the control replay.
QUIET = "10.78.5.3"
CLIENT_NET = "10.78.1.0/24"
INJECTED = "10.78.66.6"  # what the DNS censors answer


def hop_address(k: int) -> str:
    """The address hop k (router rk, or the target for k = 5) answers from."""
    return f"10.78.{k}.2"


@dataclass(frozen=True)
class PathScenario:
    name: str
    layer: str  # dns | tls | http
    hostname: str
    censor_hop: int | None  # the TTL at which the censor sits (None: no censor for this name)
    ip: str = TARGET
    path: str = "/"

    @property
    def url(self) -> str:
        return f"{'https' if self.layer == 'tls' else 'http'}://{self.hostname}{self.path}"

    @property
    def hop_before(self) -> str | None:
        return hop_address(self.censor_hop - 1) if self.censor_hop else None


SCENARIOS = (
    PathScenario("dns-censor-hop2", "dns", "dns2.blocked.test", 2),
    PathScenario("dns-censor-hop3", "dns", "dns3.blocked.test", 3),
    PathScenario("tls-reset-hop2", "tls", "tls2.blocked.test", 2),
    PathScenario("tls-reset-hop3", "tls", "tls3.blocked.test", 3),
    PathScenario("http-blockpage-hop2", "http", "http2.blocked.test", 2),
    PathScenario("http-reset-hop3", "http", "http3.blocked.test", 3),
    PathScenario("tls-reset-hop2-no-icmp", "tls", "tls2.blocked.test", 2, ip=QUIET),
    PathScenario("dns-drop-hop3", "dns", "drop3.blocked.test", 3),
    PathScenario("http-drop-hop3", "http", "open.lab.test", 3, path="/forbidden"),
    # the injector answers even when the resolver it impersonates is down
    PathScenario("dns-hop2-resolver-down", "dns", "dns2.blocked.test", 2, ip=DOWN),
    # traps: the same layers with a name no censor lists, and a target that is down
    PathScenario("dns-uncensored", "dns", "open.lab.test", None),
    PathScenario("tls-uncensored", "tls", "open.lab.test", None),
    PathScenario("tls-uncensored-no-icmp", "tls", "open.lab.test", None, ip=QUIET),
    PathScenario("http-uncensored", "http", "open.lab.test", None),
    PathScenario("tls-down", "tls", "tls2.blocked.test", None, ip=DOWN),
    PathScenario("dns-down", "dns", "open.lab.test", None, ip=DOWN),
    # silent from the target's hop on, for the benign replay too: no "dropped" censor
    PathScenario("dns-blackholed", "dns", "open.lab.test", None, ip=BLACKHOLE),
)
# r3 also drops, before routing (so no time-exceeded either, as an in-path box in front of the
# router): DNS queries for drop3.blocked.test and HTTP requests for /forbidden (raw payload
# matches: the query name after the 12-byte DNS header, the request line at the start of TCP data).
DROP_QNAME = b"\x05drop3\x07blocked"
DROP_REQUEST = b"GET /forbidden"


def drop_ruleset() -> str:
    return ("table ip pathdrop {\n  chain pre {\n    type filter hook prerouting priority -300;\n"
            f"    udp dport 53 @th,160,{len(DROP_QNAME) * 8} 0x{DROP_QNAME.hex()} drop\n"
            f"    tcp dport 80 @ih,0,{len(DROP_REQUEST) * 8} 0x{DROP_REQUEST.hex()} drop\n  }}\n}}\n")


# Which censor rules each router runs (path_censor.py syntax).
CENSOR_RULES = {
    "r2": [f"dns:dns2.blocked.test={INJECTED}", "sni-rst:tls2.blocked.test", "host-page:http2.blocked.test"],
    "r3": [f"dns:dns3.blocked.test={INJECTED}", "sni-rst:tls3.blocked.test", "host-rst:http3.blocked.test"],
}


class ChainTopology(Topology):
    """probe — r1 — r2 — r3 — r4 — target, one /24 per link, forwarding on the routers."""

    def __init__(self) -> None:
        super().__init__()
        self.ns = {node: f"{self.prefix}p-{node}" for node in NODES}

    def up(self) -> None:
        from .topology import _LIVE, _run

        _LIVE.add(self)
        for node in NODES:
            name = self.ns[node]
            _run([IP, "netns", "add", name])
            self._created.append(name)
            (Path("/etc/netns") / name).mkdir(parents=True, exist_ok=True)
            self.exec(node, [IP, "link", "set", "lo", "up"])
            for key, value in (
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
                ("net.ipv4.ip_forward", "1" if node in ROUTERS else "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ):
                self.exec(node, ["sysctl", "-q", "-w", f"{key}={value}"])
        # link k joins NODES[k-1] (10.78.k.1, eth1 / eth0 for the probe) and NODES[k] (10.78.k.2, eth0)
        for k in range(1, len(NODES)):
            left, right = NODES[k - 1], NODES[k]
            left_if = "eth0" if left == "probe" else "eth1"
            _run([IP, "link", "add", left_if, "netns", self.ns[left], "type", "veth", "peer", "name", "eth0",
                  "netns", self.ns[right]])
            for node, ifname, addr in ((left, left_if, f"10.78.{k}.1"), (right, "eth0", f"10.78.{k}.2")):
                self.exec(node, [IP, "addr", "add", f"{addr}/24", "dev", ifname])
                self.exec(node, [IP, "link", "set", ifname, "up"])
        self.exec("probe", [IP, "route", "add", NET, "via", "10.78.1.2"])
        for k, router in enumerate(ROUTERS, start=1):
            self.exec(router, [IP, "route", "add", NET, "via", f"10.78.{k + 1}.2"])
            for j in range(1, k):  # the links behind it, toward the probe
                self.exec(router, [IP, "route", "add", f"10.78.{j}.0/24", "via", f"10.78.{k}.1"])
        self.exec("target", [IP, "route", "add", NET, "via", f"10.78.{len(NODES) - 1}.1"])
        self.add_address("target", f"{DOWN}/32")
        self.add_address("target", f"{BLACKHOLE}/32")
        self.nft("target", "table ip blackhole {\n  chain in {\n    type filter hook input priority 0;\n"
                           f"    ip daddr {BLACKHOLE} drop\n  }}\n}}\n")
        self.add_address("target", f"{QUIET}/24", dev="eth0")
        # r2 sends no time-exceeded about packets to QUIET (the quoted header's destination is
        # at bit 192 of the ICMP message: 8 bytes of ICMP header, then byte 16 of the inner IP).
        quiet_hex = "0x" + "".join(f"{int(o):02x}" for o in QUIET.split("."))
        self.nft("r2", "table ip pathlab {\n  chain out {\n    type filter hook output priority 0;\n"
                       f"    icmp type time-exceeded @th,192,32 {quiet_hex} drop\n  }}\n}}\n")
        for node in NODES:
            self.set_resolv_conf(node, TARGET)


@dataclass
class Located:
    scenario: PathScenario
    interference_ttl: int | None
    hop_before: str | None
    basis: str | None
    failure: str | None
    hops: list[dict]

    @property
    def correct(self) -> bool:
        sc = self.scenario
        return self.interference_ttl == sc.censor_hop and self.hop_before == sc.hop_before


class PathLab(TopologyLab):
    def __init__(self) -> None:
        super().__init__(ChainTopology())

    def build(self) -> None:
        wd = self.topo.workdir
        proc = self.topo.spawn("target", "dnsmasq", [
            which("dnsmasq"), "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts",
            f"--address=/#/{TARGET}", "--bind-interfaces", f"--listen-address={TARGET}", "--log-facility=-",
            f"--pid-file={wd}/dnsmasq.pid",
        ])
        self.topo.wait_port("target", TARGET, 53, proto="udp", proc=proc)
        for name, addr in (("target", TARGET), ("target-quiet", QUIET)):
            proc = self.topo.spawn("target", name, [sys.executable, str(HERE / "path_target.py"), addr])
            _wait_log(proc, "target ready")
            self.topo.wait_port("target", addr, 443, proc=proc)
        self.topo.nft("r3", drop_ruleset())
        for router, rules in CENSOR_RULES.items():
            proc = self.topo.spawn(router, f"censor-{router}", [
                sys.executable, str(HERE / "path_censor.py"), "--iface", "eth0", "--client-net", CLIENT_NET, *rules,
            ])
            _wait_log(proc, "censor ready")

    def locate(self, sc: PathScenario, *, wait: float = 1.0) -> Located:
        argv = [str(VENV_BIN / "vantage"), "locate", sc.url, "--layer", sc.layer, "--max-ttl", "8",
                "--wait", str(wait), "--json"]
        argv += ["--resolver", sc.ip] if sc.layer == "dns" else ["--ip", sc.ip]
        out = subprocess.run(self.topo.argv("probe", argv), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"{sc.name}: vantage locate failed ({out.returncode}):\n{out.stderr[-2000:]}")
        rows = json.loads(out.stdout)
        tr = rows[0]
        return Located(sc, tr["interference_ttl"], tr["hop_before"], tr["basis"], tr["failure"], tr["hops"])
