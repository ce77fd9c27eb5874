"""Namespaces, veth links, addresses and routes of the lab, the processes it starts, and a
teardown that always runs (context manager, atexit, and the pytest fixture finalizer).

    probe 10.77.1.2 ── 10.77.1.1 censor 10.77.2.1 ── 10.77.2.2 internet 10.77.4.1 ── 10.77.4.2 control
                                 (lo 10.77.8.0/24)              (lo 10.77.3.0/24)

Every address lives on an interface inside a namespace created here; no namespace has a
default route, so nothing can leave the lab (a stray address fails locally as unreachable).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

# --------------------------------------------------------------------------- address plan

LAB_NET = "10.77.0.0/16"
PROBE_ADDR = "10.77.1.2"
CENSOR_PROBE_SIDE = "10.77.1.1"  # the probe's gateway; also the ISP resolver
CENSOR_NET_SIDE = "10.77.2.1"
INTERNET_CENSOR_SIDE = "10.77.2.2"
INTERNET_CONTROL_SIDE = "10.77.4.1"  # the control's gateway and resolver
CONTROL_ADDR = "10.77.4.2"
PUBLIC_RESOLVER = "10.77.3.53"  # the "public" resolver the probe is configured with
ISP_RESOLVER = CENSOR_PROBE_SIDE
CONTROL_RESOLVER = INTERNET_CONTROL_SIDE
BLOCKPAGE_ADDR = "10.77.8.80"  # the censor's blockpage server
INJECTED_ADDR = "10.77.8.9"  # what the DNS injector answers (assigned, nothing listens)
# A geo-DNS name has one node per side; dnsmasq's --localise-queries picks the one on the
# subnet of the address the query was sent to.
CDN_NODE_PROBE_SIDE = "10.77.2.20"
CDN_NODE_CONTROL_SIDE = "10.77.4.20"

ROLES = ("probe", "censor", "internet", "control")

IP = shutil.which("ip") or "/usr/sbin/ip"


class LabError(RuntimeError):
    """The lab could not be built (a command failed); the message says which."""


def netns_unusable_reason() -> str | None:
    """Why this machine cannot run the lab (None when it can): root, iproute2, netns support."""
    if os.geteuid() != 0:
        return "the network-namespace lab needs root (run the netns tests as root, as CI does)"
    if not Path(IP).exists():
        return "iproute2 (`ip`) is not installed"
    probe_name = f"vt{os.getpid()}-check"
    try:
        subprocess.run([IP, "netns", "add", probe_name], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    finally:
        subprocess.run([IP, "netns", "del", probe_name], capture_output=True, timeout=10)
    return None


def missing_programs(names: Sequence[str]) -> list[str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [n for n in names if shutil.which(n, path=search) is None]


def which(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise LabError(f"{name} is not installed")
    return found


@dataclass
class LabProcess:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_or_close(start: Callable[[], None], close: Callable[[], None]) -> None:
    """Run ``start``; when it fails (or is interrupted), run ``close`` before the error propagates:
    a half-built lab is torn down like a whole one."""
    try:
        start()
    except BaseException:
        close()
        raise


_LIVE: set[Topology] = set()


@atexit.register
def _teardown_all() -> None:
    for topo in list(_LIVE):
        topo.close()


class Topology:
    """The four namespaces joined by veth pairs, named ``<prefix>-<role>`` (unique per process).

    Use as a context manager; ``close()`` is idempotent and also runs at interpreter exit.
    """

    def __init__(self, prefix: str | None = None, workdir: Path | None = None, keep_workdir: bool = False):
        self.prefix = prefix or f"vt{os.getpid()}"
        self.ns = {role: f"{self.prefix}-{role}" for role in ROLES}
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.prefix}-lab-"))
        self.keep_workdir = keep_workdir
        self.processes: dict[str, LabProcess] = {}
        self.cleanups: list[Callable[[], None]] = []  # run at close, after the processes stop
        self._created: list[str] = []
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Topology:
        start_or_close(self.up, self.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        _LIVE.add(self)
        for role in ROLES:
            name = self.ns[role]
            _run([IP, "netns", "add", name])
            self._created.append(name)
            # Files here are bind-mounted over /etc by `ip netns exec`: the system resolver of
            # each host is the lab's own, never the machine's.
            etc = Path("/etc/netns") / name
            etc.mkdir(parents=True, exist_ok=True)
            self.exec(role, [IP, "link", "set", "lo", "up"])
            for key, value in (
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
                ("net.ipv4.ip_forward", "1" if role == "censor" else "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ):
                self.exec(role, ["sysctl", "-q", "-w", f"{key}={value}"])
        self._veth("probe", "eth0", PROBE_ADDR, "censor", "eth0", CENSOR_PROBE_SIDE)
        self._veth("censor", "eth1", CENSOR_NET_SIDE, "internet", "eth0", INTERNET_CENSOR_SIDE)
        self._veth("internet", "eth1", INTERNET_CONTROL_SIDE, "control", "eth0", CONTROL_ADDR)
        self.add_address("censor", f"{BLOCKPAGE_ADDR}/32")
        self.add_address("censor", f"{INJECTED_ADDR}/32")
        self.add_address("internet", f"{PUBLIC_RESOLVER}/32")
        self.add_address("internet", f"{CDN_NODE_PROBE_SIDE}/24", dev="eth0")
        self.add_address("internet", f"{CDN_NODE_CONTROL_SIDE}/24", dev="eth1")
        self.exec("probe", [IP, "route", "add", LAB_NET, "via", CENSOR_PROBE_SIDE])
        self.exec("censor", [IP, "route", "add", LAB_NET, "via", INTERNET_CENSOR_SIDE])
        self.exec("internet", [IP, "route", "add", "10.77.1.0/24", "via", CENSOR_NET_SIDE])
        self.exec("internet", [IP, "route", "add", "10.77.8.0/24", "via", CENSOR_NET_SIDE])
        self.exec("control", [IP, "route", "add", LAB_NET, "via", INTERNET_CONTROL_SIDE])
        self.set_resolv_conf("probe", PUBLIC_RESOLVER)
        self.set_resolv_conf("control", CONTROL_RESOLVER)
        self.set_resolv_conf("censor", PUBLIC_RESOLVER)
        self.set_resolv_conf("internet", PUBLIC_RESOLVER)

    def _veth(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        _run([IP, "link", "add", a_if, "netns", self.ns[a], "type", "veth", "peer", "name", b_if, "netns", self.ns[b]])
        for role, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            self.exec(role, [IP, "addr", "add", f"{addr}/24", "dev", ifname])
            self.exec(role, [IP, "link", "set", ifname, "up"])

    def add_address(self, role: str, cidr: str, dev: str = "lo") -> None:
        self.exec(role, [IP, "addr", "add", cidr, "dev", dev])

    def set_resolv_conf(self, role: str, resolver: str) -> None:
        (Path("/etc/netns") / self.ns[role] / "resolv.conf").write_text(
            f"# vantage netns lab\nnameserver {resolver}\noptions timeout:2 attempts:1\n"
        )

    def close(self) -> None:
        """Stop every process, delete the namespaces and their /etc/netns files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(list(self.processes.values())):
            _terminate(proc.popen)
        self.processes.clear()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.cleanups.clear()
        for name in reversed(self._created):
            # Anything still inside a lab namespace was started by the lab (a daemonized child).
            out = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True)
            for pid in out.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run([IP, "netns", "del", name], capture_output=True)
        for name in self.ns.values():
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        self._created.clear()
        _LIVE.discard(self)
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------- commands

    def argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.ns[role], *argv]

    def exec(
        self, role: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace and wait for it; LabError with its output on failure."""
        return _run(self.argv(role, argv), check=check, timeout=timeout, input=input)

    def nft(self, role: str, ruleset: str) -> None:
        """Load an nftables ruleset (nft -f syntax) into a namespace."""
        path = self.workdir / f"nft-{role}-{len(os.listdir(self.workdir))}.nft"
        path.write_text(ruleset)
        self.exec(role, ["nft", "-f", str(path)])

    def spawn(self, role: str, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> LabProcess:
        """Start a long-running server inside a namespace; output goes to <workdir>/<name>.log."""
        if name in self.processes:
            raise LabError(f"a lab process called {name!r} is already running")
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                self.argv(role, argv),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown reaches children
                env=env,
            )
        proc = LabProcess(name, role, popen, log)
        self.processes[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            _terminate(proc.popen)

    def wait_port(
        self, role: str, ip: str, port: int, *, proto: str = "tcp", timeout: float = 10.0, proc: LabProcess | None = None
    ) -> None:
        """Wait until something listens on ip:port inside the namespace (ss, no traffic sent)."""
        flag = "-ltn" if proto == "tcp" else "-lun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec(role, ["ss", "-H", flag], check=False).stdout
            for line in out.splitlines():
                fields = line.split()
                if len(fields) >= 4 and fields[3] in (f"{ip}:{port}", f"0.0.0.0:{port}", f"*:{port}"):
                    return
            if proc is not None and not proc.alive():
                raise LabError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            time.sleep(0.05)
        detail = f"\n{proc.tail()}" if proc is not None else ""
        raise LabError(f"nothing listens on {proto} {ip}:{port} in {role} after {timeout}s{detail}")

    def pids(self) -> Iterator[int]:
        for proc in self.processes.values():
            yield proc.popen.pid


class TopologyLab:
    """A lab built on a Topology, and the one owner of its lifecycle: entering brings the
    namespaces up, then ``build()`` adds what the lab needs (servers, censors, shaping); any
    failure there tears everything down before it propagates; leaving (or ``close()``, which is
    idempotent, as Topology's is) tears it down. The fixtures also register ``close`` as a
    finalizer, and Topology's atexit hook covers an interrupted interpreter.
    """

    def __init__(self, topo: Topology) -> None:
        self.topo = topo

    def build(self) -> None:
        """What the lab adds once the namespaces are up (nothing here)."""

    def __enter__(self) -> Self:
        start_or_close(self._start, self.close)
        return self

    def _start(self) -> None:
        self.topo.up()
        self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.topo.close()

    @property
    def workdir(self) -> Path:
        return self.topo.workdir


STALE_NAME = re.compile(r"^vt(\d+)[a-z]?-(probe|censor|internet|control|r\d|target)$")  # r1..r4, target: pathloc_lab


def stale_labs() -> list[str]:
    """Lab namespaces left by a lab process that no longer exists (killed with SIGKILL, or a
    machine crash): the names say which process made them."""
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    stale = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = STALE_NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            stale.append(name)
    return stale


def reap_stale_labs(only: Sequence[str] | None = None) -> list[str]:
    """Delete stale lab namespaces (and what still runs in them), or only those of ``only``
    that are stale; returns their names."""
    names = [n for n in stale_labs() if only is None or n in only]
    for name in names:
        pids = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run([IP, "netns", "del", name], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    return names


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and out.returncode != 0:
        raise LabError(f"failed ({out.returncode}): {' '.join(argv)}\n{out.stderr.strip()}")
    return out


def _terminate(popen: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(grace)
    else:
        # The leader is gone; children it left in its group must not outlive the lab.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
