"""Build the network-namespace lab by hand, measure every scenario as probe and control,
analyze, print the verdicts against the ground truth, and tear everything down.

    sudo .venv/bin/python tests/netns/run_lab.py            # the whole pipeline
    sudo .venv/bin/python tests/netns/run_lab.py --hold     # and keep the lab up until Enter
    sudo .venv/bin/python tests/netns/run_lab.py --no-run --hold   # just the lab, to poke at
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netns.conftest import lab_skip_reason  # noqa: E402
from netns.lab import NetnsLab  # noqa: E402
from netns.scenarios import SCENARIOS, Scenario, addresses  # noqa: E402
from netns.scoring import render  # noqa: E402
from netns.topology import reap_stale_labs  # noqa: E402


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through the lab's context manager, which tears it down.
    raise SystemExit(128 + signum)


def _run(scenarios: tuple[Scenario, ...], args: argparse.Namespace) -> int:
    with NetnsLab(scenarios, keep_workdir=args.keep) as lab:
        print(f"lab up in {lab.build_seconds:.1f}s: namespaces {', '.join(lab.topo.ns.values())}; "
              f"work directory {lab.workdir}", flush=True)
        rc = 0
        if not args.no_run:
            result = lab.run(step=lambda m: print(f"-- {m}", flush=True))
            print()
            print(render(result.score))
            print("runtime: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
            s = result.score
            rc = 0 if (s.precision >= 0.95 and s.recall >= 0.95 and not s.wrong_layer and not s.false_blocks) else 1
        if args.hold:
            sc = scenarios[0]
            ip = addresses(scenarios)[sc.name][0]
            print("\nthe lab is up; try e.g.\n"
                  f"  ip netns exec {lab.topo.ns['probe']} curl -s --cacert {lab.ca_bundle} "
                  f"--resolve {sc.host}:{sc.port}:{ip} {sc.url}\n"
                  f"  ip netns exec {lab.topo.ns['probe']} getent hosts {sc.host}\n"
                  "press Enter to tear it down", flush=True)
            try:
                input()
            except EOFError:
                pass
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="SCENARIO",
                    help="Only this scenario (repeatable); the default is all of them.")
    ap.add_argument("--no-run", action="store_true", help="Build the lab but run no measurement.")
    ap.add_argument("--hold", action="store_true", help="Keep the lab up until Enter is pressed.")
    ap.add_argument("--keep", action="store_true", help="Keep the work directory (configs, logs, datasets).")
    ap.add_argument("--list", action="store_true", help="List the scenarios and exit.")
    ap.add_argument("--reap", action="store_true",
                    help="Delete lab namespaces left by lab processes that no longer exist, and exit.")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            truth = f"{sc.status}/{sc.layer or '-'}"
            print(f"{sc.name:<18} {truth:<22} {sc.url:<50} {sc.description}")
        return 0
    reason = lab_skip_reason()
    if reason:
        print(f"cannot build the lab: {reason}", file=sys.stderr)
        return 2
    if args.reap:
        reaped = reap_stale_labs()
        print(f"deleted {len(reaped)} stale lab namespace(s){': ' + ', '.join(reaped) if reaped else ''}")
        return 0
    scenarios = SCENARIOS
    if args.only:
        unknown = set(args.only) - {sc.name for sc in SCENARIOS}
        if unknown:
            print(f"unknown scenario(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
            return 2
        scenarios = tuple(sc for sc in SCENARIOS if sc.name in args.only)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)

    started = time.monotonic()
    rc = 0
    try:
        rc = _run(scenarios, args)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        rc = 130
    finally:
        # The lab's context manager has already torn it down when we get here.
        print(f"lab torn down; {time.monotonic() - started:.1f}s in all", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
