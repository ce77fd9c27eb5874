"""Peak memory of `vantage run` over the whole Citizen Lab global list (1,722 URLs), so a
volunteer's 1 GB Raspberry Pi is comfortable. Goal: peak RSS < 150 MB.

The list is read from ../shared/data/testlists/global.csv and its hosts are remapped onto a
loopback farm (tests/probe/experiments/loopfarm.py): every host name keeps its name and path,
the farm's resolver answers it with one of the farm's sites on 127.0.0.0/8, and the URL gets the
farm's port. https:// URLs become http:// (the farm's certificate covers only its own names),
so no TLS handshake is measured: SAID, not hidden. A share of the sites are black holes (accept,
never answer) as in a censored network. Nothing leaves loopback: the probe is given only the
farm's resolver. Peak RSS is that of the `vantage run` process alone (os.wait4), the farm runs
in this process.

    .venv/bin/python benchmarks/probe_memory.py [--sites 200] [--blackhole-fraction 0.05]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "probe" / "experiments"))

from loopfarm import Farm  # noqa: E402

from tests.support.paths import SHARED_DATA  # noqa: E402

GLOBAL = SHARED_DATA / "testlists" / "global.csv"
GOAL_MB = 150


def remap(src: Path, dst: Path, farm: Farm) -> tuple[int, int]:
    """Write the list with every host served by the farm; returns (rows, https rows made http)."""
    ok = list(farm.sites)
    rows = downgraded = 0
    with src.open(newline="", encoding="utf-8") as fin, dst.open("w", newline="", encoding="utf-8") as fout:
        reader = csv.reader(fin)
        writer = csv.writer(fout)
        writer.writerow(next(reader))
        for row in reader:
            parts = urlsplit(row[0])
            host = (parts.hostname or "").lower()
            if not host:
                continue
            site = ok[zlib.crc32(host.encode()) % len(ok)]
            farm.names[host] = site.ip  # the farm's resolver reads this dict
            downgraded += parts.scheme == "https"
            port = urlsplit(site.url).port
            row[0] = urlunsplit(("http", f"{host}:{port}", parts.path or "/", parts.query, ""))
            writer.writerow(row)
            rows += 1
    return rows, downgraded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=200, help="farm sites the list's hosts share")
    parser.add_argument("--blackhole-fraction", type=float, default=0.05)
    args = parser.parse_args()
    if not GLOBAL.exists():
        sys.exit(f"{GLOBAL} is missing (the shared data directory beside the checkout)")
    n_black = round(args.sites * args.blackhole_fraction)
    kinds = ["blackhole"] * n_black + ["ok"] * (args.sites - n_black)
    with tempfile.TemporaryDirectory(prefix="vantage-mem-") as tmp, Farm(kinds) as farm:
        work = Path(tmp)
        rows, downgraded = remap(GLOBAL, work / "global-loopback.csv", farm)
        env = {**os.environ, "VANTAGE_CONFIG": str(work / "config.toml"), "XDG_DATA_HOME": str(work / "data"),
               "XDG_CONFIG_HOME": str(work / "config")}
        for var in ("VANTAGE_CC", "VANTAGE_LISTS", "VANTAGE_OUTPUT", "VANTAGE_MAX_RUNTIME_S"):
            env.pop(var, None)
        # The benchmark's own volunteer consents (its config file is temporary).
        subprocess.run([sys.executable, "-c", "from vantage.cli import main; main()", "consent", "--yes"], env=env, check=True,
                       capture_output=True)
        print(f"list: {GLOBAL.name}, {rows} URLs remapped onto {args.sites} loopback sites "
              f"({n_black} black holes); {downgraded} https URLs measured as http (no TLS)")
        cmd = [sys.executable, "-c", "from vantage.cli import main; main()", "run", "--list", str(work / "global-loopback.csv"),
               "--resolver", farm.resolver, "--output", str(work / "out"), "--no-progress", "-q"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            print(stderr, file=sys.stderr)
        files = list((work / "out" / "measurements").rglob("*.parquet"))
        peak = usage.ru_maxrss / 1024
        print(f"exit code {code}; {len(files)} Parquet file(s); wall {wall:.1f} s; CPU {usage.ru_utime + usage.ru_stime:.1f} s")
        print(f"peak RSS of `vantage run`: {peak:.0f} MB (goal < {GOAL_MB} MB): {'OK' if peak < GOAL_MB else 'OVER'}")
        sys.exit(0 if code == 0 and peak < GOAL_MB else 1)


if __name__ == "__main__":
    main()
