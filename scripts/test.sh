#!/usr/bin/env bash
# Installs everything the tests need (Debian packages for the labs when run as root, the
# Python package with its test extras in ./.venv) and runs the whole suite.
# Usage: bash scripts/test.sh [--quick] [pytest args...]
#   --quick: leave out the tests marked slow and the network-namespace labs
#            (pytest -m "not slow and not netns"); CI runs everything.
# pytest runs on VANTAGE_TEST_WORKERS pytest-xdist workers (default 2, the cores of CI and of the
# developers' machines; 0 runs in one process, which `pytest -s` needs to show the labs' tables).
# --dist loadgroup: a test module is one group (its module fixtures are built once), and the
# tests marked netns are one group, run one after the other on one worker (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=()
if [ "${1:-}" = --quick ]; then
  shift
  QUICK=(-m "not slow and not netns")
fi

# Real servers and tools for the labs; the network-namespace lab needs root anyway.
DEB_PACKAGES=(
  iproute2 nftables procps libpcap0.8
  dnsmasq-base nginx-light
  openvpn wireguard-go wireguard-tools tor obfs4proxy
  strongswan-swanctl charon-systemd strongswan-charon
  chromium
  dante-server curl
  openjdk-17-jre-headless  # Apache Spark's JVM: `vantage analyze --engine spark` (tests/test_spark_engine.py)
  systemd
)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== apt-get: ${DEB_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${DEB_PACKAGES[@]}" >/dev/null
else
  echo "== not root: skipping Debian packages; the network-namespace lab tests will be skipped"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
echo "== pip install -e .[test,spark]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,spark]'

set +e
echo "== ruff"
.venv/bin/ruff check probe analysis vantage collector tests benchmarks
lint=$?

echo "== mypy --strict"
.venv/bin/mypy probe analysis vantage collector
types=$?

WORKERS=${VANTAGE_TEST_WORKERS:-2}
echo "== pytest (-n $WORKERS)"
.venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup ${QUICK[@]+"${QUICK[@]}"} "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
if [ "$lint" != 0 ]; then
  echo "ruff found problems: failing" >&2
  [ "$rc" != 0 ] || rc=1
fi
if [ "$types" != 0 ]; then
  echo "mypy found problems: failing" >&2
  [ "$rc" != 0 ] || rc=1
fi
exit "$rc"
