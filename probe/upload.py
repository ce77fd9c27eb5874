"""Uploading a dataset to a collector: every finished file not yet acknowledged, oldest first,
with retries (exponential backoff and jitter), an optional proxy (SOCKS5, e.g. Tor), a
bandwidth cap and a progress bar.

The acknowledgements live beside the dataset, in ``<output>/uploads/<collector key>.jsonl``:
one line per file the collector answered for, appended and fsynced only after its receipt
arrived. A process killed at any moment therefore loses nothing (a file without a line is sent
again) and duplicates nothing (the collector drops measurement ids it holds), so re-running
uploads only the rest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from probe.dataset import MEASUREMENTS_DIR, StoreError, iter_dataset_files, run_lock
from probe.errors import VantageError

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
PARQUET_TYPE = "application/vnd.apache.parquet"
# Below the collector's default row limit (20,000): a bigger file goes in slices of this many.
SLICE_ROWS = 10_000
# The collector refuses bodies arriving slower than 1 KiB/s (slow-client guard): keep above it.
MIN_RATE = 4096
CHUNK = 16 * 1024
# Network trouble (and a busy or restarting collector) is retried; each wait is a random share
# of an exponentially growing cap ("full jitter"), so many probes that lost the collector at the
# same moment do not all come back at the same moment.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class UploadError(VantageError):
    """The upload cannot go on (bad token, bad proxy, unreadable dataset): one line for the user."""


@dataclass
class UploadResult:
    files: int = 0  # acknowledged now
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): collector said no
    pending: int = 0  # still queued (collector unreachable): the next upload sends them
    offline_reason: str | None = None


def collector_key(url: str) -> str:
    """A file name for one collector's acknowledgements (the URL itself is inside the lines)."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def ack_path(output: Path, url: str) -> Path:
    return Path(output) / UPLOADS_DIR / f"{collector_key(url)}.jsonl"


def read_acks(output: Path, url: str) -> dict[str, dict[str, Any]]:
    """Acknowledged files (relative path -> ack line). A line cut short by a kill is ignored:
    its file is simply sent again."""
    path = ack_path(output, url)
    acks: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return acks
    except OSError as exc:
        raise UploadError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        try:
            ack = json.loads(line)
            acks[ack["file"]] = ack
        except (ValueError, KeyError, TypeError):
            continue
    return acks


def _append_ack(output: Path, url: str, ack: dict[str, Any]) -> None:
    path = ack_path(output, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(ack, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # A line left without its newline by a kill would swallow this one: start on a new line.
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def pending_files(output: Path, url: str) -> list[Path]:
    """Finished files not acknowledged by this collector, oldest first (by when written)."""
    output = Path(output)
    acks = read_acks(output, url)
    files = [p for p in iter_dataset_files(output) if _rel(output, p) not in acks]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def _rel(output: Path, path: Path) -> str:
    return path.relative_to(output / MEASUREMENTS_DIR).as_posix()


def _bodies(path: Path) -> Iterator[bytes]:
    """The file as it is, or slices of it when it has more rows than a batch may."""
    meta = pq.read_metadata(path)
    if meta.num_rows <= SLICE_ROWS:
        yield path.read_bytes()
        return
    table = pq.read_table(path, partitioning=None)
    for start in range(0, table.num_rows, SLICE_ROWS):
        buf = io.BytesIO()
        pq.write_table(table.slice(start, SLICE_ROWS), buf, compression="zstd")
        yield buf.getvalue()


class RateLimit:
    """A bandwidth cap shared by every body of one upload (bytes per second)."""

    def __init__(self, rate: int | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start = clock()
        self.sent = 0

    def take(self, n: int) -> None:
        self.sent += n
        if self.rate:
            ahead = self.sent / self.rate - (self.clock() - self.start)
            if ahead > 0:
                self.sleep(ahead)


def _stream(body: bytes, rate: RateLimit, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    for i in range(0, len(body), CHUNK):
        chunk = body[i:i + CHUNK]
        rate.take(len(chunk))
        yield chunk
        on_bytes(len(chunk))


def backoff(attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full jitter over an exponential
    cap, but never less than what the collector asked for with Retry-After."""
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
    wait = (rng or random).uniform(0, cap)
    return max(wait, retry_after or 0.0)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    return min(float(value), BACKOFF_MAX_S) if value.isdigit() else None


def _reason(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error") or resp.reason_phrase)
    except ValueError:
        return resp.text[:200] or resp.reason_phrase


def upload(
    output: Path,
    collector: str,
    *,
    proxy: str | None = None,
    token: str | None = None,
    verify: Any = True,
    max_rate: int | None = None,
    attempts: int = 6,
    timeout: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> UploadResult:
    """Send every pending file of the dataset at `output` to `collector` (its base URL).

    `progress(done_bytes, total_bytes)` is called as bytes leave. After `attempts` failed tries
    of one file the upload stops, leaving the rest queued (result.offline_reason says why); the
    collector refusing a file (4xx with a reason) is recorded and the upload goes on.
    """
    output = Path(output)
    base = collector.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UploadError(f"--collector must be an http:// or https:// URL, got {collector!r}")
    if max_rate is not None and max_rate < MIN_RATE:
        raise UploadError(f"a bandwidth cap under {MIN_RATE} bytes/s would trip the collector's slow-client guard")
    if not (output / MEASUREMENTS_DIR).is_dir():
        raise UploadError(f"no dataset in {output} (no {MEASUREMENTS_DIR}/ directory)")
    if isinstance(verify, (str, Path)):  # a CA bundle (PEM) for a collector with a private CA
        verify = ssl.create_default_context(cafile=str(verify))
    result = UploadResult()
    try:
        lock = run_lock(output, f"upload-{collector_key(base)}")
        lock.__enter__()
    except StoreError as exc:
        raise UploadError(str(exc).replace("run upload-", "an upload of this dataset ")) from None
    try:
        files = pending_files(output, base)
        total = sum(p.stat().st_size for p in files)
        finished = [0]  # bytes of files done: the progress callback adds the body in flight
        rate = RateLimit(max_rate)
        headers = {"Content-Type": PARQUET_TYPE}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            client = httpx.Client(proxy=proxy, verify=verify, timeout=timeout, transport=transport,
                                  headers=headers, trust_env=False)
        except (ValueError, ImportError, httpx.InvalidURL) as exc:
            raise UploadError(f"cannot use proxy {proxy!r}: {exc}") from None
        with client:
            for i, path in enumerate(files):
                cc = path.parent.name.removeprefix("probe_cc=")
                receipts: list[dict[str, Any]] = []
                refused: str | None = None
                for body in _bodies(path):
                    outcome = _send(client, f"{base}/v1/measurements", body, cc, rate, attempts, sleep,
                                    lambda n: _tick(progress, n, total, finished))
                    if isinstance(outcome, _Offline):
                        result.pending = len(files) - i
                        result.offline_reason = outcome.reason
                        return result
                    if isinstance(outcome, str):
                        refused = outcome
                        break
                    receipts.append(outcome)
                finished[0] += path.stat().st_size
                if progress:
                    progress(finished[0], total)
                ack: dict[str, Any] = {"file": _rel(output, path), "size": path.stat().st_size, "collector": base,
                       "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
                if refused is not None:
                    ack["refused"] = refused
                    result.refused.append((_rel(output, path), refused))
                else:
                    ack["receipt"] = _merge(receipts)
                    result.accepted += ack["receipt"]["accepted"]
                    result.duplicates += ack["receipt"]["duplicates"]
                    result.rejected += ack["receipt"]["rejected"]
                _append_ack(output, base, ack)
                result.files += 1
    finally:
        lock.__exit__(None, None, None)
    return result


def _tick(progress: Callable[[int, int], None] | None, n: int, total: int, acc: list[int]) -> None:
    if progress:
        progress(min(acc[0] + n, total), total)


@dataclass
class _Offline:
    reason: str


def _send(client: httpx.Client, url: str, body: bytes, cc: str, rate: RateLimit, attempts: int,
          sleep: Callable[[float], None], on_bytes: Callable[[int], None]) -> dict[str, Any] | str | _Offline:
    """A receipt, a refusal reason (str), or _Offline after `attempts` tries."""
    reason = ""
    for attempt in range(attempts):
        sent = [0]

        def count(n: int, sent: list[int] = sent) -> None:
            sent[0] += n
            on_bytes(sent[0])

        retry_after = None
        try:
            resp = client.post(url, params={"probe_cc": cc}, content=_stream(body, rate, count))
        except httpx.ProxyError as exc:
            reason = f"proxy error: {exc}"
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if resp.status_code == 200:
                receipt: dict[str, Any] = resp.json()
                return receipt
            if resp.status_code == 401:
                raise UploadError(f"the collector refused the token: {_reason(resp)}")
            if resp.status_code not in RETRY_STATUSES:
                return f"HTTP {resp.status_code}: {_reason(resp)}"
            reason = f"HTTP {resp.status_code}: {_reason(resp)}"
            retry_after = _retry_after(resp)
        if attempt + 1 < attempts:
            wait = backoff(attempt, retry_after)
            log.info("upload: %s; retrying in %.1f s", reason, wait)
            sleep(wait)
    return _Offline(reason)


def _merge(receipts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"accepted": 0, "duplicates": 0, "rejected": 0, "rejections": []}
    for r in receipts:
        for k in ("accepted", "duplicates", "rejected"):
            out[k] += int(r.get(k, 0))
        out["rejections"].extend(r.get("rejections") or [])
    out["rejections"] = out["rejections"][:100]
    return out
