"""Real servers for the lab, configured from the scenarios: the internet's authoritative DNS
(dnsmasq) and sites (nginx, lab CA from trustme); the censor's lying ISP resolver, blockpage
server, DPI proxy, DNS injector and nftables rules.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from .scenarios import (
    DNS_INJECT,
    DNS_LIE,
    DOMAIN,
    HOST_RESET,
    HTTP_BLOCKPAGE,
    KEYWORD_RESET,
    SCENARIOS,
    SNI_DROP,
    SNI_RESET,
    TCP_DROP,
    TCP_RESET,
    Scenario,
    addresses,
)
from .topology import (
    BLOCKPAGE_ADDR,
    CENSOR_PROBE_SIDE,
    INTERNET_CENSOR_SIDE,
    INTERNET_CONTROL_SIDE,
    IP,
    LAB_NET,
    PUBLIC_RESOLVER,
    LabError,
    LabProcess,
    Topology,
    which,
)

HERE = Path(__file__).resolve().parent
BLOCKPAGE_TITLE = "Access to this site is restricted"
BLOCKPAGE_HTML = f"""<!doctype html>
<html><head><title>{BLOCKPAGE_TITLE}</title></head>
<body><h1>{BLOCKPAGE_TITLE}</h1>
<p>The page you requested has been blocked by order of the Lab Telecommunications Authority.</p>
</body></html>
"""
DPI_TUN = "dpi0"
DPI_TABLE = "100"
DPI_MARK = "0x1"
SLOW_RATE = "6k"  # bytes/s for the slow site; its page is ~19 KB, so about 3 s


@dataclass
class LabCA:
    """A trustme CA written to disk: the bundle the probe trusts, and a cert per site."""

    ca: trustme.CA
    bundle: Path

    @classmethod
    def create(cls, workdir: Path) -> LabCA:
        ca = trustme.CA(organization_name="Vantage netns lab CA")
        bundle = workdir / "lab-ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        return cls(ca, bundle)

    def issue(self, workdir: Path, name: str, *hosts: str) -> tuple[Path, Path]:
        cert = self.ca.issue_cert(*hosts)
        crt, key = workdir / f"{name}.crt", workdir / f"{name}.key"
        cert.private_key_pem.write_to_path(str(key))
        with open(crt, "wb") as fh:
            for blob in cert.cert_chain_pems:
                fh.write(blob.bytes())
        return crt, key


def site_page(sc: Scenario) -> str:
    # Real pages are several KB; the HTTP comparison (body length proportion) needs substance.
    paragraphs = 60 if sc.slow else 12
    body = "\n".join(
        f"<p>{sc.name} news item {i}: the lab's internet carries this paragraph unchanged.</p>"
        for i in range(paragraphs)
    )
    body = body * (4 if sc.slow else 1)
    return f"<!doctype html>\n<html><head><title>{sc.name} — lab site</title></head>\n<body>\n{body}\n</body></html>\n"


def _nginx_base(workdir: Path, tag: str) -> str:
    tmp = workdir / f"nginx-{tag}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""
worker_processes 1;
user root;
pid {workdir}/nginx-{tag}.pid;
error_log {workdir}/nginx-{tag}-error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log {workdir}/nginx-{tag}-access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  default_type text/html;
  charset utf-8;
  server_tokens off;
  keepalive_timeout 5;
"""


class LabServers:
    """Starts and stops the lab's servers inside a Topology, configured from the scenarios."""

    def __init__(self, topo: Topology, scenarios: tuple[Scenario, ...] = SCENARIOS):
        self.topo = topo
        self.scenarios = scenarios
        self.addresses = addresses(scenarios)
        self.ca = LabCA.create(topo.workdir)
        self.www = topo.workdir / "www"

    # ----------------------------------------------------------------- the internet

    def start_internet(self) -> None:
        wd = self.topo.workdir
        for sc in self.scenarios:
            if not sc.geo:
                self.topo.add_address("internet", f"{self.addresses[sc.name][0]}/32")
        hosts = wd / "internet-hosts"
        hosts.write_text(
            "".join(f"{ip} {sc.host}\n" for sc in self.scenarios if sc.in_dns for ip in self.addresses[sc.name])
        )
        proc = self.topo.spawn("internet", "dnsmasq-authoritative", [
            which("dnsmasq"), "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", f"--local=/{DOMAIN}/",
            "--localise-queries", "--bind-interfaces", "--log-queries", "--log-facility=-",
            f"--listen-address={PUBLIC_RESOLVER},{INTERNET_CENSOR_SIDE},{INTERNET_CONTROL_SIDE}",
            f"--pid-file={wd}/dnsmasq-authoritative.pid",
        ])
        self.topo.wait_port("internet", PUBLIC_RESOLVER, 53, proto="udp", proc=proc)

        conf = [_nginx_base(wd, "internet")]
        for sc in self.scenarios:
            if not sc.served:
                continue
            root = self.www / sc.name
            root.mkdir(parents=True, exist_ok=True)
            page = site_page(sc)
            (root / "index.html").write_text(page)
            if sc.path != "/":
                target = root / sc.path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(page)
            crt, key = self.ca.issue(wd, sc.name, sc.host)
            listens = "".join(
                f"    listen {ip}:80;\n    listen {ip}:443 ssl;\n" for ip in self.addresses[sc.name]
            )
            rate = f"    limit_rate {SLOW_RATE};\n" if sc.slow else ""
            conf.append(
                f"  server {{\n{listens}    server_name {sc.host};\n"
                f"    ssl_certificate {crt};\n    ssl_certificate_key {key};\n"
                f"    root {root};\n{rate}  }}\n"
            )
        conf.append("}\n")
        self._nginx("internet", "nginx-internet", "".join(conf))
        first = next(sc for sc in self.scenarios if sc.served)
        self.topo.wait_port("internet", self.addresses[first.name][0], 443)
        drops = [self.addresses[sc.name][0] for sc in self.scenarios if sc.server_drops]
        if drops:
            self.topo.nft("internet", f"""
table inet sitefirewall {{
  chain input {{ type filter hook input priority filter; policy accept;
    ip daddr {{ {", ".join(drops)} }} drop
  }}
}}
""")

    def _nginx(self, role: str, name: str, conf: str) -> None:
        path = self.topo.workdir / f"{name}.conf"
        path.write_text(conf)
        self.topo.exec(role, [which("nginx"), "-t", "-q", "-c", str(path), "-e", str(self.topo.workdir / f"{name}-t.log")])
        self.topo.spawn(role, name, [which("nginx"), "-c", str(path), "-g", "daemon off;",
                                     "-e", str(self.topo.workdir / f"{name}-startup.log")])

    # ----------------------------------------------------------------- the censor

    def start_censor(self) -> None:
        wd = self.topo.workdir
        lies = [sc for sc in self.scenarios if sc.technique == DNS_LIE]
        lie_args = [f"--address=/{sc.host}/" + ("" if sc.value == "NXDOMAIN" else str(sc.value)) for sc in lies]
        proc = self.topo.spawn("censor", "dnsmasq-isp", [
            which("dnsmasq"), "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts",
            # Forward to the internet's address on the censor's side, as an ISP resolver would.
            f"--server={INTERNET_CENSOR_SIDE}", "--bind-interfaces", f"--listen-address={CENSOR_PROBE_SIDE}",
            "--log-queries", "--log-facility=-", "--cache-size=0", f"--pid-file={wd}/dnsmasq-isp.pid", *lie_args,
        ])
        self.topo.wait_port("censor", CENSOR_PROBE_SIDE, 53, proto="udp", proc=proc)

        blockroot = wd / "www-blockpage"
        blockroot.mkdir(exist_ok=True)
        (blockroot / "index.html").write_text(BLOCKPAGE_HTML)
        self._nginx("censor", "nginx-blockpage", _nginx_base(wd, "blockpage") + f"""
  server {{
    listen {BLOCKPAGE_ADDR}:80 default_server;
    server_name _;
    root {blockroot};
    location / {{ try_files /index.html =404; }}
  }}
}}
""")
        self.topo.wait_port("censor", BLOCKPAGE_ADDR, 80)

        rules = {
            "sni": {sc.host: ("reset" if sc.technique == SNI_RESET else "drop")
                    for sc in self.scenarios if sc.technique in (SNI_RESET, SNI_DROP)},
            "host": {sc.host: "reset" for sc in self.scenarios if sc.technique == HOST_RESET},
            "keyword": {str(sc.value): "reset" for sc in self.scenarios if sc.technique == KEYWORD_RESET},
        }
        rules_path = wd / "dpi-rules.json"
        rules_path.write_text(json.dumps(rules, indent=1))
        proc = self.topo.spawn("censor", "dpi", [
            sys.executable, str(HERE / "dpi_inline.py"), "--tun", DPI_TUN, "--rules", str(rules_path),
        ])
        _wait_log(proc, "dpi ready")
        # Marked packets (the probe's web traffic, see censor_ruleset) take the DPI detour.
        self.topo.exec("censor", [IP, "link", "set", DPI_TUN, "up"])
        self.topo.exec("censor", [IP, "route", "add", LAB_NET, "dev", DPI_TUN, "table", DPI_TABLE])
        self.topo.exec("censor", [IP, "rule", "add", "fwmark", DPI_MARK, "lookup", DPI_TABLE])

        injections = [sc for sc in self.scenarios if sc.technique == DNS_INJECT]
        if injections:
            args = [f"{sc.host}={sc.value}" for sc in injections]
            proc = self.topo.spawn("censor", "dns-injector", [
                sys.executable, str(HERE / "dns_injector.py"), "--iface", "eth0", *args,
            ])
            _wait_log(proc, "injector ready")

        self.topo.nft("censor", self.censor_ruleset())

    def censor_ruleset(self) -> str:
        addr = {sc.name: self.addresses[sc.name][0] for sc in self.scenarios}
        raw: list[str] = []
        for sc in self.scenarios:
            if sc.technique == DNS_INJECT:
                # The injector answers first and then lets the query through itself, so the
                # real answer arrives second, as with an on-path injector near the probe.
                # (nft compares at most 16 bytes: the start of the query name, after the header)
                head = _qname(sc.host)[:16]
                raw.append(f'iifname "eth0" udp dport 53 @th,160,{8 * len(head)} 0x{head.hex()} drop')
            elif sc.technique == TCP_DROP:
                raw.append(f'iifname "eth0" ip daddr {addr[sc.name]} tcp dport {sc.port} drop')
            elif sc.technique == TCP_RESET:
                raw.append(f'iifname "eth0" ip daddr {addr[sc.name]} tcp dport {sc.port} reject with tcp reset')
        nat: list[str] = []
        for sc in self.scenarios:
            if sc.technique == HTTP_BLOCKPAGE:
                nat.append(f'iifname "eth0" ip daddr {addr[sc.name]} tcp dport 80 dnat ip to {BLOCKPAGE_ADDR}:80')
        nat += [
            # The ISP hijacks DNS to the public resolver and answers from its own resolver.
            f'iifname "eth0" ip daddr {PUBLIC_RESOLVER} udp dport 53 dnat ip to {CENSOR_PROBE_SIDE}:53',
            f'iifname "eth0" ip daddr {PUBLIC_RESOLVER} tcp dport 53 dnat ip to {CENSOR_PROBE_SIDE}:53',
        ]
        nl = "\n    "
        return f"""
table inet censor {{
  chain prerouting_filter {{ type filter hook prerouting priority raw; policy accept;
    {nl.join(raw)}
  }}
  chain prerouting_nat {{ type nat hook prerouting priority dstnat; policy accept;
    {nl.join(nat)}
  }}
  chain prerouting_mangle {{ type filter hook prerouting priority mangle; policy accept;
    # All web traffic from the probe's side crosses the inline DPI box.
    iifname "eth0" tcp dport {{ 80, 443 }} meta mark set {DPI_MARK}
  }}
}}
"""


def _qname(host: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in host.split(".")) + b"\0"


def _wait_log(proc: LabProcess, marker: str, timeout: float = 20.0) -> None:
    """Wait until a lab process says it is ready (a line in its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
        if marker in text:
            return
        if not proc.alive():
            raise LabError(f"{proc.name} exited:\n{text[-2000:]}")
        time.sleep(0.1)
    raise LabError(f"{proc.name} not ready after {timeout}s")
