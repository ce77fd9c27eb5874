"""Helpers for the collector and upload tests (``from tests.support.collector_lab import ...``): a
collector run as `vantage collector serve` in a subprocess, a real SOCKS5 proxy (Debian's
dante-server) on loopback, TLS from trustme, and datasets of synthetic measurements built with
probe.schema records (the verdict tests' builders)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import trustme

from probe.dataset import DatasetWriter, iter_dataset_files
from probe.schema import Measurement
from tests.analysis.test_verdicts import BLOCKPAGE, control_of, web

VANTAGE = Path(sys.executable).with_name("vantage")
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- data


def measurements(n: int, cc: str, *, at: dt.datetime | None = None, run: str = "run") -> list[Measurement]:
    """n probe measurements of one vantage point: a mix of ok, DNS-blocked, reset and blockpage
    rows (so the verdicts differ), each at its own minute."""
    at = at or dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    out = []
    for i in range(n):
        url = f"http://site{i}.example/"
        kind = i % 4
        kw: dict[str, Any] = {"url": url, "at": at + dt.timedelta(seconds=i)}
        if kind == 1:
            kw["dns_failure"] = "dns_nxdomain"
        elif kind == 2:
            kw["tcp_failure"] = "connection_reset"
        elif kind == 3:
            kw.update(body=BLOCKPAGE, title="Blocked")
        m = web("probe", **kw)
        m.probe_cc, m.run_id = cc, f"{run}-{cc}"
        out.append(m)
    return out


def controls(probes: Sequence[Measurement]) -> list[Measurement]:
    out = []
    for p in probes:
        c = control_of(p)
        c.probe_cc, c.run_id = "DE", "run-control"
        out.append(c)
    return out


def write_dataset(root: Path, records: Sequence[Measurement], per_file: int, run_id: str = "run-test") -> list[Path]:
    """A probe's dataset with files of per_file rows (as `vantage run` writes them in batches)."""
    with DatasetWriter(root, run_id, batch_size=per_file, max_age_s=1e9) as w:
        for r in records:
            w.add(r)
    return w.files_written


def stored_ids(root: Path) -> list[str]:
    ids: list[str] = []
    for p in iter_dataset_files(root):
        ids.extend(pq.read_table(p, columns=["measurement_id"]).column("measurement_id").to_pylist())
    return ids


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under the dataset (path -> size, mtime, sha256), lock files excepted."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            out[str(p.relative_to(root))] = (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# --------------------------------------------------------------------------- TLS


@dataclass
class Tls:
    ca_pem: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST, "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    leaf.private_key_pem.write_to_path(str(tls.key))
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(tls.cert), append=i > 0)
    return tls


# --------------------------------------------------------------------------- the collector


@dataclass
class CollectorProcess:
    data: Path
    port: int
    log: Path
    args: list[str]
    tls: Tls | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def verify(self) -> Any:
        return ssl.create_default_context(cafile=str(self.tls.ca_pem)) if self.tls else True

    def start(self, timeout: float = 20.0) -> CollectorProcess:
        cmd = [str(VANTAGE), *self.args, "collector", "serve", "--listen", f"{HOST}:{self.port}", "--data", str(self.data)]
        if self.tls:
            cmd += ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        cmd += self.extra_args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.extra_env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", verify=self.verify, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"collector did not come up: {self.log.read_text()[-2000:]}")

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/health", verify=self.verify, timeout=5).json()
        return data

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def running_collector(data: Path, tmp: Path, *, tls: Tls | None = None, extra_args: Sequence[str] = (),
                      verbose: Sequence[str] = ()) -> Iterator[CollectorProcess]:
    c = CollectorProcess(data=data, port=free_port(), log=tmp / f"collector-{time.monotonic_ns()}.log",
                         args=list(verbose), tls=tls, extra_args=list(extra_args))
    c.start()
    try:
        yield c
    finally:
        c.stop()


# --------------------------------------------------------------------------- SOCKS5 (dante)


@dataclass
class Dante:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"socks5://{HOST}:{self.port}"


@contextlib.contextmanager
def dante(tmp: Path) -> Iterator[Dante]:
    """Debian's dante-server on a free loopback port, relaying only to loopback (nothing can
    leave the machine through it). Skips (with the reason) when it is not installed."""
    danted = shutil.which("danted") or ("/usr/sbin/danted" if Path("/usr/sbin/danted").exists() else None)
    if danted is None:
        reason = "dante-server is not installed (scripts/test.sh installs it as root: apt-get install dante-server)"
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "danted.log"
    log.touch()
    os.chmod(log, 0o666)
    conf = tmp / "danted.conf"
    user = "user.privileged: root\nuser.unprivileged: nobody\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"logoutput: {log}\n"
        f"internal: {HOST} port = {port}\n"
        f"external: {HOST}\n"
        "clientmethod: none\nsocksmethod: none\n" + user +
        "client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: error\n}\n"
        "socks pass {\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n  command: connect\n  log: connect disconnect error\n}\n"
        "socks block {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  log: connect error\n}\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen([danted, "-f", str(conf), "-N", "1", "-p", str(tmp / "danted.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"danted exited {proc.returncode}: {err} {log.read_text()}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"danted did not listen: {log.read_text()}") from None
                time.sleep(0.1)
        yield Dante(port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
