"""A volunteer's budgets: data per day and disk for results (time per run is the runner's
``max_runtime``).

Data: the bytes a run sent and received are ESTIMATED from its records (each DNS query, TCP
connection, TLS handshake and HTTP exchange at a typical size, plus the bytes of each body
read), not counted on the sockets: the estimate needs no change in the network code and errs
high (the sizes below are generous). Each run's figure goes into a ledger per UTC day under
``<output>/budget/``; a run starts only while the day's total is under the budget.

Disk: over the quota, the oldest files already acknowledged by a collector are deleted first
(acknowledgements: ``<output>/uploads/*.jsonl``, one JSON line per file with ``file``
relative to measurements/, ``size`` and a ``receipt``, as `vantage upload` writes them); a
file not yet uploaded is never deleted, even when that leaves the dataset over quota.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from probe.dataset import MEASUREMENTS_DIR, atomic_write_text, iter_dataset_files
from probe.schema import OBSERVATION_COLUMNS

BUDGET_DIR = "budget"
UPLOADS_DIR = "uploads"

# Typical wire sizes, headers of IP/UDP/TCP included, rounded up:
# a DNS query and its answer over UDP are two datagrams of 60-300 bytes (EDNS answers with a few
# records); a TCP connection is SYN, SYN-ACK, ACK and the FIN/ACK exchange, about 7 segments of
# 60 bytes; a TLS handshake is a ~500-byte ClientHello and a server flight dominated by the
# certificate chain, commonly 3-5 KB; an HTTP/1.1 request is a few hundred bytes of headers and
# the response headers under 1 KB. Bodies are counted as the bytes read (body_length).
DNS_QUERY_BYTES = 400
TCP_CONNECT_BYTES = 450
TLS_HANDSHAKE_BYTES = 6000
HTTP_EXCHANGE_BYTES = 1200
VPN_PACKET_OVERHEAD = 60
# -- quic: a client Initial padded to 1200 bytes (RFC 9000 14.1), the server's Initial and
# Handshake flight (the certificate chain, amplification-limited to 3 x 1200 per round trip),
# ACKs and the CONNECTION_CLOSE: about a TLS handshake plus 2 KB of padding. A silent path
# costs the retransmitted Initials (a few per step limit).
QUIC_HANDSHAKE_BYTES = 8000


def estimate_row(row: dict[str, Any]) -> int:
    """Bytes one measurement sent and received (a stored row or ``Measurement.to_row()``)."""
    total = DNS_QUERY_BYTES * len(row.get("dns") or ())
    total += TCP_CONNECT_BYTES * len(row.get("tcp") or ())
    total += TLS_HANDSHAKE_BYTES * len(row.get("tls") or ())
    total += QUIC_HANDSHAKE_BYTES * len(row.get("quic") or ())
    for h in row.get("http") or ():
        total += HTTP_EXCHANGE_BYTES + int(h.get("body_length") or 0)
    for v in row.get("vpn") or ():
        for pkt in v.get("packets") or ():
            total += VPN_PACKET_OVERHEAD + int(pkt.get("size") or 0)
    for d in row.get("downloads") or ():  # throughput: the request and the body bytes read
        total += HTTP_EXCHANGE_BYTES + int(d.get("bytes") or 0)
    return total


def estimate_bytes(files: Iterable[Path]) -> int:
    """Bytes sent and received by the measurements in these Parquet files (estimate, see above)."""
    total = 0
    for path in files:
        try:
            names = set(pq.read_schema(path).names)  # files from before an optional column lack it
            columns = [c for c in OBSERVATION_COLUMNS if c in names]
            table = pq.read_table(path, columns=columns, partitioning=None)
        except (OSError, ValueError, KeyError):
            continue
        total += sum(estimate_row(row) for row in table.to_pylist())
    return total


STOP_BYTES = "bytes_per_day"


def byte_budget_check(left: int) -> Callable[[Any], str | None]:
    """For the runner's ``stop_check``: stop once this run's records reach ``left`` bytes."""
    used = 0

    def check(m: Any) -> str | None:
        nonlocal used
        used += estimate_row(m.to_row())
        return STOP_BYTES if used >= left else None

    return check


def _today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def ledger_path(output: Path | str, day: str | None = None) -> Path:
    return Path(output) / BUDGET_DIR / f"bytes-{day or _today()}.json"


def read_ledger(output: Path | str, day: str | None = None) -> dict[str, int]:
    try:
        data = json.loads(ledger_path(output, day).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_run_bytes(output: Path | str, run_id: str, files: Iterable[Path], day: str | None = None) -> int:
    """Add this invocation's bytes to the day's ledger (a resumed run adds to its entry); returns them."""
    used = estimate_bytes(files)
    ledger = read_ledger(output, day)
    ledger[run_id] = ledger.get(run_id, 0) + used
    path = ledger_path(output, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ledger, indent=1, sort_keys=True))
    return used


def bytes_used_today(output: Path | str) -> int:
    return sum(read_ledger(output).values())


def bytes_left_today(output: Path | str, budget: int | None) -> int | None:
    """None when there is no daily budget."""
    if budget is None:
        return None
    return budget - bytes_used_today(output)


# --------------------------------------------------------------------------- disk


def uploaded_files(output: Path | str) -> set[str]:
    """Files (relative to measurements/) a collector acknowledged with a receipt, at the size
    they had then (a file rewritten since is not the file that was uploaded)."""
    output = Path(output)
    acked: set[str] = set()
    for ack_file in sorted((output / UPLOADS_DIR).glob("*.jsonl")):
        try:
            lines = ack_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                ack: Any = json.loads(line)
                rel = ack["file"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: its file counts as not uploaded
            if not isinstance(rel, str) or "receipt" not in ack or ack.get("refused"):
                continue
            path = output / MEASUREMENTS_DIR / rel
            try:
                if ack.get("size") is not None and path.stat().st_size != int(ack["size"]):
                    continue
            except OSError:
                continue
            acked.add(rel)
    return acked


def is_uploaded(output: Path | str, path: Path) -> bool:
    return path.relative_to(Path(output) / MEASUREMENTS_DIR).as_posix() in uploaded_files(output)


@dataclass
class QuotaReport:
    total: int  # bytes of results before
    deleted: list[Path] = field(default_factory=list)
    freed: int = 0
    over_by: int = 0  # still over after deleting every uploaded file that could go


def enforce_disk_quota(output: Path | str, quota_bytes: int) -> QuotaReport:
    """Delete the oldest uploaded result files until the results fit ``quota_bytes``."""
    output = Path(output)
    files = []
    for p in iter_dataset_files(output):
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, str(p), p, st.st_size))
    total = sum(f[3] for f in files)
    report = QuotaReport(total=total)
    excess = total - quota_bytes
    if excess <= 0:
        return report
    acked = uploaded_files(output)
    for _, _, path, size in sorted(files):
        if excess <= 0:
            break
        if path.relative_to(output / MEASUREMENTS_DIR).as_posix() not in acked:
            continue
        path.unlink()
        report.deleted.append(path)
        report.freed += size
        excess -= size
    report.over_by = max(0, excess)
    return report
