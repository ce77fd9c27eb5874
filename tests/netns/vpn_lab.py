"""The tunnel part of the netns lab: real VPN and circumvention servers in the internet
namespace (openvpn over UDP and TCP with tls-auth, wireguard-go, a tor relay with an obfs4
bridge, strongswan's charon), one lab address per scenario, and a censor that drops, resets
or drops on the protocol's handshake signature (nftables payload matches).
"""

from __future__ import annotations

import base64
import csv
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .servers import LabCA
from .topology import IP, LabError, LabProcess, Topology, TopologyLab, which

VPN_NET_PREFIX = "10.77.6."
TUNNEL_POOL = "10.77.9."  # openvpn's tun pools and the wireguard peer address
TOR_DIR_AUTHORITY = VPN_NET_PREFIX + "250"
OPENVPN_PORT, WIREGUARD_PORT, TOR_PORT, OBFS4_PORT, IKE_PORT = 1194, 51820, 9001, 9443, 500

# protocol -> (experiment, transport, port)
PROTOCOLS = {
    "openvpn-udp": ("openvpn", "udp", OPENVPN_PORT),
    "openvpn-tcp": ("openvpn", "tcp", OPENVPN_PORT),
    "wireguard": ("wireguard", "udp", WIREGUARD_PORT),
    "tor": ("tor", "tcp", TOR_PORT),
    "obfs4": ("tor", "tcp", OBFS4_PORT),
    "ikev2": ("ikev2", "udp", IKE_PORT),
}
# The handshake signature the censor's DPI matches (nftables raw payload expressions):
# UDP payload starts at @th,64; TCP payload is @ih.
SIGNATURES = {
    "openvpn-udp": "@th,64,8 0x38",  # opcode P_CONTROL_HARD_RESET_CLIENT_V2, key id 0
    "openvpn-tcp": "@ih,16,8 0x38",  # the same, after the 2-byte TCP frame length
    "wireguard": "@th,64,32 0x01000000",  # message type 1 (handshake initiation), reserved zeros
    "tor": "@ih,0,16 0x1603",  # a TLS handshake record (the ClientHello) to the OR port
    "ikev2": "@th,208,8 0x22",  # IKE header exchange type 34 (IKE_SA_INIT)
}
MODES = ("ok", "drop", "reset", "dpi", "down", "badkey")
# badkey: the row's credentials are wrong (a tls-auth key, a client key or an obfs4 cert the
# server does not know). The server ignores such a client by design, for the control as for the
# probe: a failure string, not a crash, and not censorship.
KEYED = ("openvpn-udp", "openvpn-tcp", "wireguard", "obfs4")
# Protocols whose DPI scenario lets the first packet of each direction pass and drops the rest
# of the flow (conntrack marks flows that start with the signature); the others drop the
# packets that carry the signature.
FLOW_DPI = ("openvpn-udp",)
FLOW_MARK = "0x77"
CHARON = "/usr/lib/ipsec/charon"


@dataclass(frozen=True)
class VpnScenario:
    protocol: str  # a key of PROTOCOLS
    mode: str  # one of MODES
    index: int

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.mode}"

    @property
    def address(self) -> str:
        return f"{VPN_NET_PREFIX}{10 + self.index}"

    @property
    def experiment(self) -> str:
        return PROTOCOLS[self.protocol][0]

    @property
    def transport(self) -> str:
        return PROTOCOLS[self.protocol][1]

    @property
    def port(self) -> int:
        return PROTOCOLS[self.protocol][2]

    @property
    def status(self) -> str:
        return {"ok": "ok", "down": "down", "badkey": "down"}.get(self.mode, "blocked")

    @property
    def layer(self) -> str | None:
        return "vpn" if self.status == "blocked" else None

    @property
    def method(self) -> str | None:
        """The analyzer's rule (method) the probe's view supports."""
        if self.status != "blocked":
            return "ok.vpn_handshake" if self.status == "ok" else "down.vpn_both_failed"
        if self.mode == "drop":
            return "vpn.timeout"
        if self.mode == "reset":
            # UDP has no reset: the censor answers with ICMP port unreachable (refused). obfs4
            # has no handshake signature, so its censor resets the SYN (refused as well).
            if self.transport == "udp" or self.protocol == "obfs4":
                return "vpn.refused"
            return "vpn.reset"
        # dpi: over TCP the server answered the SYN and nothing after it; OpenVPN over UDP gets
        # its first exchange through (the censor drops the rest of a flow that began with the
        # signature). For WireGuard and IKEv2 the signature is the first packet, and dropping it
        # looks like any other silence.
        if self.transport == "tcp" or self.protocol in FLOW_DPI:
            return "vpn.no_answer_after_first"
        return "vpn.timeout"


def _scenarios() -> tuple[VpnScenario, ...]:
    out: list[VpnScenario] = []
    for protocol in PROTOCOLS:
        for mode in MODES:
            if mode == "dpi" and protocol not in SIGNATURES:
                continue  # obfs4 is built to have no signature
            if mode == "badkey" and protocol not in KEYED:
                continue
            out.append(VpnScenario(protocol, mode, len(out)))
    return tuple(out)


VPN_SCENARIOS = _scenarios()


def _x25519() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    return (key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class VpnServers:
    """The tunnel servers, configured for every scenario address; ``stop()`` for the down phase."""

    def __init__(self, topo: Topology, scenarios: tuple[VpnScenario, ...] = VPN_SCENARIOS):
        self.topo = topo
        self.scenarios = scenarios
        self.wd = topo.workdir
        self.ca = LabCA.create(self.wd)
        self.ta_key = self.wd / "ta.key"
        self.wg_server_private, self.wg_server_public = _x25519()
        # One client key per scenario: wireguard-go takes one initiation per peer per 20 ms.
        self.wg_clients = {sc.name: _x25519() for sc in scenarios if sc.protocol == "wireguard"}
        # Credentials no server here knows, for the badkey scenarios.
        self.bad_ta_key = os.urandom(256)
        self.bad_obfs4_cert = base64.b64encode(os.urandom(52)).decode().rstrip("=")
        self.wg_if = f"wg{topo.prefix[2:]}"[:15]
        self.obfs4_cert: str | None = None
        self.names: list[str] = []

    def start(self) -> None:
        for sc in self.scenarios:
            self.topo.add_address("internet", f"{sc.address}/32")
        # tor's only directory authority: an assigned lab address where nothing listens.
        self.topo.add_address("internet", f"{TOR_DIR_AUTHORITY}/32")
        self._openvpn()
        self._wireguard()
        self._tor()
        self._strongswan()

    def stop(self) -> None:
        for name in self.names:
            self.topo.stop(name)

    # ----------------------------------------------------------------- servers

    def _openvpn(self) -> None:
        subprocess.run([which("openvpn"), "--genkey", "secret", str(self.ta_key)], check=True, capture_output=True)
        crt, key = self.ca.issue(self.wd, "openvpn-server", "vpn.lab.test")
        for proto, pool, name in (("udp4", "0", "openvpn-udp"), ("tcp4-server", "128", "openvpn-tcp")):
            conf = self.wd / f"{name}.conf"
            conf.write_text(
                f"mode server\ntls-server\nproto {proto}\nport {OPENVPN_PORT}\ndev tun\ntopology subnet\n"
                f"server {TUNNEL_POOL}{pool} 255.255.255.128\nca {self.ca.bundle}\ncert {crt}\nkey {key}\n"
                f"dh none\ntls-auth {self.ta_key} 0\nverb 3\n" + ("multihome\n" if proto == "udp4" else "")
            )
            proc = self.topo.spawn("internet", name, [which("openvpn"), "--config", str(conf)])
            self.names.append(name)
            self.topo.wait_port("internet", "0.0.0.0", OPENVPN_PORT, proto="udp" if proto == "udp4" else "tcp",
                                proc=proc)

    def _wireguard(self) -> None:
        key = self.wd / "wg-server.key"
        key.write_text(_b64(self.wg_server_private) + "\n")
        key.chmod(0o600)
        proc = self.topo.spawn("internet", "wireguard-go", [which("wireguard-go"), "-f", self.wg_if])
        self.names.append("wireguard-go")
        self.topo.cleanups.append(lambda: Path(f"/var/run/wireguard/{self.wg_if}.sock").unlink(missing_ok=True))
        _wait(lambda: self.topo.exec("internet", [IP, "link", "show", self.wg_if], check=False).returncode == 0,
              "wireguard-go interface", proc)
        peers = []
        for i, (name, (_private, public)) in enumerate(self.wg_clients.items()):
            if not name.endswith("-badkey"):
                peers += ["peer", _b64(public), "allowed-ips", f"{TUNNEL_POOL}{200 + i}/32"]
        self.topo.exec("internet", [
            which("wg"), "set", self.wg_if, "private-key", str(key), "listen-port", str(WIREGUARD_PORT), *peers,
        ])
        self.topo.exec("internet", [IP, "link", "set", self.wg_if, "up"])
        self.topo.wait_port("internet", "0.0.0.0", WIREGUARD_PORT, proto="udp", proc=proc)

    def _tor(self) -> None:
        data = self.wd / "tor-data"
        data.mkdir(mode=0o700)
        first = next(sc.address for sc in self.scenarios if sc.protocol == "tor")
        torrc = self.wd / "torrc"
        # No directory contact: the only authority is an address in the lab where nothing
        # listens, and the relay never publishes; it only has to answer on its OR port.
        torrc.write_text(f"""DataDirectory {data}
SocksPort 0
ORPort {TOR_PORT}
Address {first}
AssumeReachable 1
PublishServerDescriptor 0
BridgeRelay 1
ExitRelay 0
Nickname vantagelab
ContactInfo lab@lab.test
DirAuthority lab orport={TOR_PORT} no-v2 v3ident={"0" * 40} {TOR_DIR_AUTHORITY}:80 {"0" * 40}
ServerTransportPlugin obfs4 exec {which("obfs4proxy")}
ServerTransportListenAddr obfs4 0.0.0.0:{OBFS4_PORT}
ExtORPort auto
Log notice stdout
""")
        proc = self.topo.spawn("internet", "tor", [which("tor"), "-f", str(torrc)])
        self.names.append("tor")
        self.topo.wait_port("internet", "0.0.0.0", TOR_PORT, proc=proc, timeout=30)
        self.topo.wait_port("internet", "0.0.0.0", OBFS4_PORT, proc=proc, timeout=30)
        line_file = data / "pt_state" / "obfs4_bridgeline.txt"
        _wait(lambda: line_file.exists() and "cert=" in line_file.read_text(), "obfs4 bridge line", proc)
        cert = line_file.read_text().split("cert=")[-1].split()[0]
        self.obfs4_cert = cert

    def _strongswan(self) -> None:
        vici = self.wd / "charon.vici"
        conf = self.wd / "strongswan.conf"
        conf.write_text(f"""charon {{
  load_modular = yes
  port = {IKE_PORT}
  port_nat_t = 4500
  install_routes = no
  install_virtual_ip = no
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{ socket = unix://{vici} }}
  }}
  filelog {{ lab {{ path = {self.wd}/charon.log
                  default = 1 }} }}
  syslog {{ daemon {{ default = -1 }} }}
}}
""")
        swanctl = self.wd / "swanctl.conf"
        swanctl.write_text("""connections {
  lab {
    version = 2
    proposals = aes128-sha256-modp2048, aes256-sha256-modp2048
    local { auth = psk
            id = vpn.lab.test }
    remote { auth = psk }
    children { net { local_ts = 10.77.6.0/24 } }
  }
}
secrets { ike-lab { secret = "vantage-lab-secret" } }
""")
        # charon keeps its pid file in /run: a private /run lets parallel labs each have one.
        proc = self.topo.spawn("internet", "charon", [
            "unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}",
        ], env={"STRONGSWAN_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        self.names.append("charon")
        _wait(vici.exists, "charon's vici socket", proc)
        self.topo.exec("internet", [which("swanctl"), "--load-all", "--file", str(swanctl), "--uri", f"unix://{vici}"])
        self.topo.wait_port("internet", "0.0.0.0", IKE_PORT, proto="udp", proc=proc)

    # ----------------------------------------------------------------- inputs

    def url(self, sc: VpnScenario) -> str:
        host = f"{sc.address}:{sc.port}"
        if sc.protocol.startswith("openvpn"):
            key = _b64url(self.bad_ta_key if sc.mode == "badkey" else self.ta_key.read_bytes())
            return f"openvpn://{host}/?transport={sc.transport}&tls_auth={key}&key_direction=1"
        if sc.protocol == "wireguard":
            return (f"wireguard://{host}/?public_key={_b64url(self.wg_server_public)}"
                    f"&private_key={_b64url(self.wg_clients[sc.name][0])}")
        if sc.protocol == "tor":
            return f"tor://{host}/"
        if sc.protocol == "obfs4":
            assert self.obfs4_cert is not None
            cert = self.bad_obfs4_cert if sc.mode == "badkey" else self.obfs4_cert
            return f"obfs4://{host}/?cert={quote(cert, safe='')}&iat_mode=0"
        return f"ikev2://{host}/"

    def write_lists(self, scenarios: list[VpnScenario], tag: str) -> dict[str, Path]:
        """One endpoint list per experiment (a run measures one experiment)."""
        lists: dict[str, Path] = {}
        rows: dict[str, list[VpnScenario]] = {}
        for sc in scenarios:
            rows.setdefault(sc.experiment, []).append(sc)
        for experiment, items in rows.items():
            path = self.wd / f"endpoints-{experiment}-{tag}.csv"
            with open(path, "w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["url", "category_code", "category_description", "date_added", "source", "notes"])
                for sc in items:
                    out.writerow([self.url(sc), "ANON", "Anonymization and circumvention tools", "2026-01-01",
                                  "netns-lab", sc.name])
            lists[experiment] = path
        return lists


def vpn_censor_ruleset(scenarios: tuple[VpnScenario, ...] = VPN_SCENARIOS) -> str:
    rules: list[str] = []
    tracked: list[str] = []
    for sc in scenarios:
        match = f'iifname "eth0" ip daddr {sc.address} {sc.transport} dport {sc.port}'
        if sc.mode == "drop":
            rules.append(f"{match} drop")
        elif sc.mode == "reset" and sc.transport == "udp":
            rules.append(f"{match} reject")  # ICMP port unreachable
        elif sc.mode == "reset" and sc.protocol == "obfs4":
            rules.append(f"{match} tcp flags & (syn | ack) == syn reject with tcp reset")
        elif sc.mode == "reset":
            rules.append(f"{match} {SIGNATURES[sc.protocol]} reject with tcp reset")
        elif sc.mode == "dpi" and sc.protocol in FLOW_DPI:
            tracked.append(f"{match} {SIGNATURES[sc.protocol]} ct mark set {FLOW_MARK}")
            tracked.append(f"ip daddr {sc.address} ct mark {FLOW_MARK} ct original packets > 1 drop")
            tracked.append(f"ip saddr {sc.address} ct mark {FLOW_MARK} ct reply packets > 1 drop")
        elif sc.mode == "dpi":
            rules.append(f"{match} {SIGNATURES[sc.protocol]} drop")
    body = "\n    ".join(rules)
    flows = "\n    ".join(tracked)
    return f"""
table inet vpncensor {{
  chain prerouting_filter {{ type filter hook prerouting priority raw; policy accept;
    {body}
  }}
  chain forward_filter {{ type filter hook forward priority filter; policy accept;
    {flows}
  }}
}}
"""


def _wait(ready: Callable[[], bool], what: str, proc: LabProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not proc.alive():
            raise LabError(f"{proc.name} exited before {what}:\n{proc.tail()}")
        time.sleep(0.05)
    raise LabError(f"no {what} after {timeout}s:\n{proc.tail()}")


# --------------------------------------------------------------------------- the pipeline

STEP_TIMEOUT = 4.0
BATCH = Path(__file__).resolve().parent / "vantage_batch.py"  # lab servers answer in milliseconds; silence costs this much per step


@dataclass
class VpnRun:
    datasets: list[Path]
    verdicts: list[dict[str, object]]
    seconds: dict[str, float]


class VpnLab(TopologyLab):
    """Context manager: a topology with the tunnel servers and the tunnel censor; ``run()``
    measures every scenario as probe and control, stops the servers, measures the down
    scenarios, and analyzes."""

    def __init__(self, scenarios: tuple[VpnScenario, ...] = VPN_SCENARIOS, *, prefix: str | None = None,
                 keep_workdir: bool = False):
        super().__init__(Topology(prefix=prefix or f"vt{os.getpid()}v", keep_workdir=keep_workdir))
        self.scenarios = scenarios
        self.servers: VpnServers | None = None

    def build(self) -> None:
        self.servers = VpnServers(self.topo, self.scenarios)
        self.servers.start()
        # Per-flow packet counters for the flow-tracking DPI ("ct original packets").
        self.topo.exec("censor", ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"])
        self.topo.nft("censor", vpn_censor_ruleset(self.scenarios))

    def measure_all(self, scenarios: list[VpnScenario], tag: str) -> list[Path]:
        """Every experiment as probe and as control: one `vantage run` per experiment, the
        probe's and the control's batches at the same time (one interpreter per vantage point)."""
        import json
        import sys

        from .lab import CONTROL_ASN, LAB_CC, PROBE_ASN, lab_env

        assert self.servers is not None
        procs = []
        datasets = []
        lists = self.servers.write_lists(scenarios, tag)
        for role, asn in (("probe", PROBE_ASN), ("control", CONTROL_ASN)):
            command_lines = []
            for experiment, path in lists.items():
                ds = self.topo.workdir / "results" / f"{role}-{experiment}-{tag}"
                datasets.append(ds)
                command_lines.append([
                    "run", "--experiment", experiment, "--list", str(path), "--output", str(ds),
                    "--role", role, "--cc", LAB_CC, "--asn", asn, "--timeout", str(STEP_TIMEOUT), "--no-progress",
                ])
            argv = self.topo.argv(role, [sys.executable, str(BATCH), *map(json.dumps, command_lines)])
            procs.append((role, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                 env=lab_env(self.topo.workdir))))
        for role, proc in procs:
            _out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise LabError(f"the {role}'s vantage runs failed ({proc.returncode}):\n{err[-2000:]}")
        return datasets

    def run(self, step: Callable[[str], None] = lambda _m: None) -> VpnRun:
        from .lab import analyze_datasets

        assert self.servers is not None
        seconds: dict[str, float] = {}
        t = time.monotonic()
        up = [sc for sc in self.scenarios if sc.mode != "down"]
        step(f"measuring {len(up)} tunnel endpoints as probe and control (servers up)")
        datasets = self.measure_all(up, "up")
        seconds["servers up"] = time.monotonic() - t
        t = time.monotonic()
        down = [sc for sc in self.scenarios if sc.mode == "down"]
        step(f"stopping the servers; measuring {len(down)} endpoints again as probe and control")
        self.servers.stop()
        datasets += self.measure_all(down, "down")
        seconds["servers down"] = time.monotonic() - t
        t = time.monotonic()
        step("analyzing")
        verdicts = analyze_datasets(datasets, self.topo.workdir / "results" / "verdicts.parquet", step)
        seconds["analyze"] = time.monotonic() - t
        return VpnRun(datasets, verdicts, seconds)

    def by_input(self) -> dict[str, VpnScenario]:
        assert self.servers is not None
        return {self.servers.url(sc): sc for sc in self.scenarios}
