"""A Spark standalone cluster on loopback, from the jars PySpark ships: one master and N workers,
each its own JVM process (``spark-class org.apache.spark.deploy.master.Master`` / ``...Worker``),
bound to 127.0.0.1. For tests and benchmarks (and as the worked example of docs/scale.md); it
never listens beyond loopback and stops exactly the processes it started, by PID.

    with LocalCluster(workers=2, worker_memory="1g") as cluster:
        analyze(..., options=AnalysisOptions(engine="spark", spark_master=cluster.master_url))
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def loopback_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that keeps Spark's JVMs on loopback (SPARK_LOCAL_IP) and on this
    interpreter (PYSPARK_PYTHON: executors import Vantage from the same virtualenv)."""
    import sys

    env = dict(base if base is not None else os.environ)
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=LOOPBACK, SPARK_LOCAL_HOSTNAME="localhost",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_NO_DAEMONIZE="1")
    return env


class LocalCluster:
    """Master and workers as separate processes; :meth:`stop` terminates them by PID (then kills
    what is left after a grace period), also when start-up failed half-way."""

    def __init__(self, workers: int = 2, worker_cores: int = 1, worker_memory: str = "1g",
                 daemon_memory: str = "256m", start_timeout_s: float = 90.0) -> None:
        self.workers = workers
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.daemon_memory = daemon_memory
        self.start_timeout_s = start_timeout_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()
        self.ui_port = _free_port()
        self.master_url = f"spark://{LOOPBACK}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="vantage-spark-cluster-")
        self.logs = Path(self._dir.name)

    def _spawn(self, name: str, args: list[str]) -> None:
        env = loopback_env()
        env["SPARK_DAEMON_MEMORY"] = self.daemon_memory
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        cmd = [str(spark_home() / "bin" / "spark-class"), *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.logs,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)

    def start(self) -> LocalCluster:
        try:
            self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                                   "--port", str(self.port), "--webui-port", str(self.ui_port)])
            self._wait(lambda s: s is not None, "master")
            for i in range(self.workers):
                work = self.logs / f"work-{i}"
                work.mkdir()
                self._spawn(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", self.master_url,
                                            "--host", LOOPBACK, "--webui-port", str(_free_port()),
                                            "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                                            "--work-dir", str(work)])
            self._wait(lambda s: s is not None and sum(w.get("state") == "ALIVE" for w in s.get("workers", []))
                       >= self.workers, f"{self.workers} workers")
        except BaseException:
            self.stop()
            raise
        return self

    def status(self) -> dict[str, Any] | None:
        """The master's JSON status (its web UI on loopback), None while it is not up."""
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.ui_port}/json/", timeout=2) as r:
                data = json.loads(r.read())
                return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"Spark {what}: a process exited with {p.returncode}; logs in {self.logs}: "
                                       + self.tail())
            if ready(self.status()):  # type: ignore[operator]
                return
            time.sleep(0.5)
        raise RuntimeError(f"Spark {what} not up after {self.start_timeout_s:.0f} s: {self.tail()}")

    def tail(self) -> str:
        out = []
        for f in sorted(self.logs.glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()
            out.append(f"{f.name}: " + " | ".join(lines[-3:]))
        return "; ".join(out)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs.clear()
        self._dir.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def cluster_conf(executor_memory: str = "512m", driver_memory: str = "1g") -> dict[str, str]:
    """Session settings for a small cluster: one core and ``executor_memory`` per executor."""
    return {
        "spark.executor.memory": executor_memory,
        "spark.executor.cores": "1",
        "spark.driver.memory": driver_memory,
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.sql.shuffle.partitions": "8",
    }


__all__ = ["LOOPBACK", "LocalCluster", "cluster_conf", "loopback_env", "spark_home"]
