"""A small client the lab's own tests run inside a namespace (independent of the probe's code):
DNS queries (every reply within a window, to see injection) and HTTP(S) fetches pinned to an
address. Prints one JSON document. Standalone: python lab_client.py dns|web ...
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.rcode
import httpx


def query(name: str, resolver: str, window: float) -> dict[str, object]:
    q = dns.message.make_query(name, "A")
    replies: list[dict[str, object]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(window)
        s.sendto(q.to_wire(), (resolver, 53))
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(4096)
            except TimeoutError:
                break
            r = dns.message.from_wire(data)
            addrs = [rr.address for rrset in r.answer for rr in rrset if hasattr(rr, "address")]
            replies.append({"rcode": dns.rcode.to_text(r.rcode()), "answers": addrs})
    return {"name": name, "replies": replies}


def fetch(url: str, ip: str, ca: str, timeout: float) -> dict[str, object]:
    host = url.split("/")[2]
    ctx = ssl.create_default_context(cafile=ca)
    started = time.monotonic()
    try:
        with httpx.Client(verify=ctx, timeout=timeout) as client:
            r = client.get(url.replace(host, ip, 1), headers={"Host": host}, extensions={"sni_hostname": host})
            return {"url": url, "status": r.status_code, "length": len(r.content), "error": None,
                    "title": r.text.split("<title>")[1].split("</title>")[0] if "<title>" in r.text else None,
                    "seconds": round(time.monotonic() - started, 2)}
    except httpx.HTTPError as exc:
        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__
        cause: BaseException | None = exc
        while cause is not None:  # httpx -> httpcore -> the OSError that says what happened
            if isinstance(cause, OSError) and cause.errno in (104, 111):
                kind = {104: "reset", 111: "refused"}[cause.errno]
                break
            cause = cause.__cause__ or cause.__context__
        return {"url": url, "status": None, "error": kind, "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str]) -> None:
    if argv[0] == "dns":
        resolver, window, names = argv[1], float(argv[2]), argv[3:]
        with ThreadPoolExecutor(len(names)) as pool:
            print(json.dumps(list(pool.map(lambda n: query(n, resolver, window), names))))
    elif argv[0] == "web":
        ca, timeout, pairs = argv[1], float(argv[2]), argv[3:]
        with ThreadPoolExecutor(len(pairs)) as pool:
            targets = [p.rsplit("=", 1) for p in pairs]
            print(json.dumps(list(pool.map(lambda t: fetch(t[0], t[1], ca, timeout), targets))))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
