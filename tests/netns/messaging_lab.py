"""The messaging-app part of the netns lab: fake app endpoints under lab names (Telegram's data
centres, WhatsApp's registration, chat and web servers, Signal's backend, Messenger's hosts and
web), an authoritative resolver for them, and a censor that drops Telegram's DCs by address,
drops the DNS queries for WhatsApp's registration server, resets TLS to Signal's service by SNI
(the inline DPI box of servers.py) and resets Messenger's web only.

Three phases, each measured by the real `vantage run` as probe and as control and analyzed on
its own: ``censored`` (the censor's rules), ``open`` (no rule: nothing may be called blocked) and
``down`` (one Signal backend and one Telegram DC refuse everyone, probe and control alike: not
censorship; Telegram still works through its other DCs).
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

from .lab import CONTROL_ASN, LAB_CC, PROBE_ASN, analyze_datasets, lab_env
from .servers import DPI_MARK, DPI_TABLE, DPI_TUN, HERE, LabCA, _nginx_base, _qname, _wait_log
from .topology import IP, LAB_NET, LabError, Topology, TopologyLab, which

NET = "10.77.11."
RESOLVER = NET + "53"
STEP_TIMEOUT = 4.0  # lab servers answer in milliseconds; a dropped packet costs this much per step
BATCH = HERE / "vantage_batch.py"
APPS = ("telegram", "whatsapp", "signal", "facebook_messenger")


@dataclass(frozen=True)
class LabEndpoint:
    app: str
    function: str
    kind: str  # tcp | http | https (as testlists/messaging.csv)
    host: str  # a lab name, or the address itself (Telegram's DCs)
    port: int
    address: str
    path: str = "/"


DC1, DC2, DC3 = NET + "50", NET + "51", NET + "52"
ENDPOINTS = (
    *(LabEndpoint("telegram", "messaging", "http", dc, port, dc) for dc in (DC1, DC2, DC3) for port in (80, 443)),
    LabEndpoint("telegram", "web", "https", "web.telegram.lab", 443, NET + "60"),
    LabEndpoint("whatsapp", "registration", "https", "v.whatsapp.lab", 443, NET + "70", "/v2/register"),
    LabEndpoint("whatsapp", "web", "https", "web.whatsapp.lab", 443, NET + "71"),
    *(LabEndpoint("whatsapp", "messaging", "tcp", f"e{i}.whatsapp.lab", port, NET + str(71 + i))
      for i in (1, 2) for port in (443, 5222)),
    LabEndpoint("signal", "messaging", "https", "chat.signal.lab", 443, NET + "80"),
    LabEndpoint("signal", "messaging", "https", "storage.signal.lab", 443, NET + "81"),
    LabEndpoint("signal", "messaging", "https", "cdn.signal.lab", 443, NET + "82"),
    LabEndpoint("facebook_messenger", "messaging", "tcp", "b-api.facebook.lab", 443, NET + "90"),
    LabEndpoint("facebook_messenger", "messaging", "tcp", "edge-mqtt.facebook.lab", 443, NET + "91"),
    LabEndpoint("facebook_messenger", "web", "https", "www.messenger.lab", 443, NET + "92"),
)  # fmt: skip
NAMES = sorted({e.host for e in ENDPOINTS if not e.host[0].isdigit()})

# Ground truth, per phase: (app, function) -> (status, layer); the app's verdict follows from it.
BLOCKED_DC_ADDRESSES = (DC1, DC2, DC3)  # all of Telegram's DCs, dropped by address
DNS_BLOCKED = "v.whatsapp.lab"
SNI_RESET = "chat.signal.lab"
WEB_RESET = "www.messenger.lab"
DOWN = (NET + "82", DC1)  # cdn.signal.lab and one Telegram DC refuse everyone in the down phase

TRUTH: dict[str, dict[tuple[str, str], tuple[str, str | None]]] = {
    "censored": {
        ("telegram", "messaging"): ("blocked", "tcp_ip"), ("telegram", "web"): ("ok", None),
        ("whatsapp", "registration"): ("blocked", "dns"), ("whatsapp", "messaging"): ("ok", None),
        ("whatsapp", "web"): ("ok", None),
        ("signal", "messaging"): ("blocked", "tls"),
        ("facebook_messenger", "messaging"): ("ok", None), ("facebook_messenger", "web"): ("blocked", "tcp_ip"),
    },
    "open": {},  # filled below: everything ok
    "down": {
        ("signal", "messaging"): ("down", None),
        ("telegram", "messaging"): ("ok", None),  # DC1 down everywhere; DC2 and DC3 work
    },
}
_ALL = {(e.app, e.function) for e in ENDPOINTS}
TRUTH["open"] = {k: ("ok", None) for k in _ALL}
TRUTH["down"] = {**{k: ("ok", None) for k in _ALL}, **TRUTH["down"]}
PHASES = ("censored", "open", "down")
APP_RULE = {"dns": "messaging.dns", "tcp_ip": "messaging.tcp", "tls": "messaging.tls", "http-failure": "messaging.http"}


def app_truth(phase: str, app: str) -> tuple[str, str | None, str]:
    """(status, layer, method) the app's verdict must have: its first blocked function's, in the
    order registration, messaging, web; else down; else ok."""
    functions = [(f, TRUTH[phase][(app, f)]) for f in ("registration", "messaging", "web") if (app, f) in TRUTH[phase]]
    for _f, (status, layer) in functions:
        if status == "blocked":
            return "blocked", layer, APP_RULE[layer or ""]
    if any(status == "down" for _f, (status, _l) in functions):
        return "down", None, "down.messaging"
    return "ok", None, "ok.messaging"


def write_endpoints(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["app", "function", "kind", "host", "port", "path", "notes"])
        for e in ENDPOINTS:
            out.writerow([e.app, e.function, e.kind, e.host, e.port, e.path, "netns lab"])
    return path


class MessagingLab(TopologyLab):
    """Context manager: the topology, the app servers, the resolver and the DPI box; ``run()``
    measures and analyzes the three phases."""

    def __init__(self, *, prefix: str | None = None, keep_workdir: bool = False) -> None:
        super().__init__(Topology(prefix=prefix or f"vt{os.getpid()}m", keep_workdir=keep_workdir))
        self.ca: LabCA | None = None

    # ----------------------------------------------------------------- servers

    def build(self) -> None:
        wd = self.topo.workdir
        for address in sorted({e.address for e in ENDPOINTS} | {RESOLVER}):
            self.topo.add_address("internet", f"{address}/32")
        hosts = [f"--address=/{e.host}/{e.address}" for e in ENDPOINTS if not e.host[0].isdigit()]
        proc = self.topo.spawn("internet", "dnsmasq-apps", [
            which("dnsmasq"), "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={RESOLVER}", "--log-facility=-", f"--pid-file={wd}/dnsmasq-apps.pid", *hosts,
        ])
        self.topo.wait_port("internet", RESOLVER, 53, proto="udp", proc=proc)

        self.ca = LabCA.create(wd)
        crt, key = self.ca.issue(wd, "apps", *NAMES)
        servers = []
        for e in ENDPOINTS:
            tls = f" ssl;\n    ssl_certificate {crt};\n    ssl_certificate_key {key}" if e.kind == "https" else ""
            # The apps' servers answer a plain GET with an API error, as the real ones do.
            servers.append(f"""
  server {{
    listen {e.address}:{e.port}{tls};
    location / {{ return 404 "{e.app} {e.function} lab endpoint\\n"; }}
  }}""")
        conf = wd / "nginx-apps.conf"
        conf.write_text(_nginx_base(wd, "apps") + "".join(sorted(set(servers))) + "\n}\n")
        self.topo.exec("internet", [which("nginx"), "-t", "-q", "-c", str(conf), "-e", str(wd / "nginx-apps-t.log")])
        nginx = self.topo.spawn("internet", "nginx-apps", [which("nginx"), "-c", str(conf), "-g", "daemon off;",
                                                           "-e", str(wd / "nginx-apps-startup.log")])
        for e in ENDPOINTS:
            self.topo.wait_port("internet", e.address, e.port, proc=nginx)

        # The censor's inline DPI box (servers.py's), resetting TLS by SNI.
        rules = wd / "dpi-rules.json"
        rules.write_text(json.dumps({"sni": {SNI_RESET: "reset"}, "host": {}, "keyword": {}}))
        dpi = self.topo.spawn("censor", "dpi", [sys.executable, str(HERE / "dpi_inline.py"), "--tun", DPI_TUN,
                                                "--rules", str(rules)])
        _wait_log(dpi, "dpi ready")
        self.topo.exec("censor", [IP, "link", "set", DPI_TUN, "up"])
        self.topo.exec("censor", [IP, "route", "add", LAB_NET, "dev", DPI_TUN, "table", DPI_TABLE])
        self.topo.exec("censor", [IP, "rule", "add", "fwmark", DPI_MARK, "lookup", DPI_TABLE])

    def censor_on(self) -> None:
        dcs = ", ".join(BLOCKED_DC_ADDRESSES)
        web = next(e.address for e in ENDPOINTS if e.host == WEB_RESET)
        signal = ", ".join(e.address for e in ENDPOINTS if e.app == "signal")
        head = _qname(DNS_BLOCKED)[:16]  # nft compares at most 16 bytes: the query name after the header
        self.topo.nft("censor", f"""
table inet msgcensor {{
  chain prerouting_filter {{ type filter hook prerouting priority raw; policy accept;
    iifname "eth0" ip daddr {{ {dcs} }} drop
    iifname "eth0" udp dport 53 @th,160,{8 * len(head)} 0x{head.hex()} drop
    iifname "eth0" ip daddr {web} tcp dport 443 reject with tcp reset
  }}
  chain prerouting_mangle {{ type filter hook prerouting priority mangle; policy accept;
    # Signal's traffic from the probe's side crosses the inline DPI box (SNI reset).
    iifname "eth0" ip daddr {{ {signal} }} tcp dport 443 meta mark set {DPI_MARK}
  }}
}}
""")

    def censor_off(self) -> None:
        self.topo.exec("censor", ["nft", "delete", "table", "inet", "msgcensor"])

    def endpoints_down(self) -> None:
        """The down phase: two endpoints refuse every client (their servers' own firewall)."""
        self.topo.nft("internet", f"""
table inet appsdown {{
  chain input {{ type filter hook input priority filter; policy accept;
    ip daddr {{ {", ".join(DOWN)} }} tcp dport {{ 80, 443 }} reject with tcp reset
  }}
}}
""")

    # ----------------------------------------------------------------- the pipeline

    def measure(self, phase: str) -> list[Path]:
        """Every app as probe and as control, the two vantage points at the same time, each
        running its four `vantage run`s in one interpreter (vantage_batch.py)."""
        assert self.ca is not None
        endpoints = write_endpoints(self.topo.workdir / "lab-messaging.csv")
        procs, datasets = [], []
        for role, asn in (("probe", PROBE_ASN), ("control", CONTROL_ASN)):
            lines = []
            for app in APPS:
                ds = self.topo.workdir / "results" / phase / f"{role}-{app}"
                datasets.append(ds)
                lines.append(["run", "--experiment", app, "--messaging-endpoints", str(endpoints), "--output", str(ds),
                              "--resolver", RESOLVER, "--ca-bundle", str(self.ca.bundle), "--role", role, "--cc", LAB_CC,
                              "--asn", asn, "--timeout", str(STEP_TIMEOUT), "--no-progress"])
            argv = self.topo.argv(role, [sys.executable, str(BATCH), *map(json.dumps, lines)])
            procs.append((role, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                 env=lab_env(self.topo.workdir))))
        for role, proc in procs:
            _out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise LabError(f"the {role}'s vantage runs failed ({proc.returncode}):\n{err[-2000:]}")
        return datasets

    def run(self, step: Callable[[str], None] = lambda _m: None) -> dict[str, list[dict[str, object]]]:
        """phase -> the verdict rows `vantage analyze` wrote for it."""
        out: dict[str, list[dict[str, object]]] = {}
        for phase in PHASES:
            t = time.monotonic()
            if phase == "censored":
                self.censor_on()
            elif phase == "open":
                self.censor_off()
            else:
                self.endpoints_down()
            step(f"{phase}: measuring {len(APPS)} apps as probe and control")
            datasets = self.measure(phase)
            out[phase] = analyze_datasets(datasets, self.topo.workdir / "results" / f"verdicts-{phase}.parquet", step)
            step(f"{phase}: {time.monotonic() - t:.1f}s")
        return out
