"""The control helper under hostile clients: nested JSON, malformed bodies, trickling headers and
bodies, and 200 slow clients at once. Every answer is a clean 4xx (never a 500 or a traceback)
and a real probe is still answered in its normal time. All on loopback, bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from probe import control
from probe.control_server import ControlServer, Limits, ServerConfig, json_depth_exceeds
from probe.experiments.base import Settings, Timeouts
from tests.support.loopback_site import loopback_site

T = TypeVar("T")
PAGE = b"<html><head><title>lab page</title></head><body>hi</body></html>"


def lab_settings() -> Settings:
    return Settings(use_system_resolver=False, resolvers=[], timeouts=Timeouts(dns=1, connect=2, tls=2, http=2))


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with loopback_site(PAGE) as url:
        yield url


def with_helper(config: ServerConfig, scenario: Callable[[ControlServer, str], Awaitable[T]]) -> T:
    async def main() -> T:
        config.host, config.port = "127.0.0.1", 0
        async with ControlServer(config) as server:
            host, port = server.address
            return await scenario(server, f"http://{host}:{port}")

    return asyncio.run(main())


async def raw_exchange(url: str, chunks: list[bytes], pause: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send ``chunks`` (``pause`` seconds apart) on one connection while reading what the
    server answers; the answer (the server may answer and close before all is sent)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def send() -> None:
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(pause)
        except ConnectionError:
            pass

    sender = asyncio.create_task(send())
    try:
        answer = bytearray()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except ConnectionError:
                break
            if not data:
                break
            answer += data
        return bytes(answer)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


# --------------------------------------------------------------------------- JSON


def test_json_depth_is_counted_outside_strings() -> None:
    assert json_depth_exceeds(b"[" * 17, 16) and not json_depth_exceeds(b"[" * 16 + b"]" * 16, 16)
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 4)
    assert not json_depth_exceeds(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 4)  # escaped quote
    assert json_depth_exceeds(b'{"a": "x", "b": [[[[[[["deep"]]]]]]]}', 4)


def hostile_bodies() -> dict[str, bytes]:
    rng = random.Random(13)  # seeded: the same cases every run
    good = json.dumps({"experiment": "web_connectivity", "input": "http://127.0.0.1:9/"}).encode()
    bodies = {
        "deep_list": b"[" * 60_000,
        "deep_object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "deep_in_targets": b'{"experiment": "web_connectivity", "targets": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
        "huge_int": b'{"experiment": "web_connectivity", "input": ' + b"9" * 20_000 + b"}",
        "lone_surrogate": b'{"experiment": "web_connectivity", "input": "http://\\ud800.example/"}',
        "surrogate_key": b'{"\\udfff": 1, "experiment": "web_connectivity", "input": "http://x.example/"}',
        "nan": b'{"experiment": NaN, "input": Infinity}',
        "nul_bytes": b'{"experiment": "web_connectivity\x00", "input": "http://x.example/\x00"}',
        "not_utf8": b'{"experiment": "\xff\xfe"}',
        "utf16": good.decode().encode("utf-16"),
        "list_top": b"[1, 2, 3]",
        "string_top": b'"web_connectivity"',
        "targets_wrong": b'{"experiment": "web_connectivity", "targets": {"input": "x"}}',
        "addresses_wrong": b'{"experiment": "web_connectivity", "input": "http://x.example/", "addresses": [1, {}]}',
        "control_for_wrong": b'{"experiment": "web_connectivity", "input": "http://x.example/", "control_for": [1]}',
        "run_id_wrong": b'{"experiment": "web_connectivity", "input": "http://x.example/", "run_id": "../../x"}',
        "input_wrong": b'{"experiment": "web_connectivity", "input": {"url": 1}}',
        "empty": b"",
    }
    for i in range(40):  # seeded mutations of a good body: flipped, cut, duplicated bytes
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            op, pos = rng.randrange(3), rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = data[pos:pos + rng.randint(1, 8)] * rng.randint(1, 50)
        bodies[f"mutation_{i}"] = bytes(data)
    return bodies


def test_hostile_bodies_get_clean_4xx_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bodies = hostile_bodies()

    async def scenario(server: ControlServer, url: str) -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            return {name: await client.post(url + control.MEASURE_PATH, content=body) for name, body in bodies.items()}

    caplog.set_level(logging.DEBUG)
    # The policy is on and no resolver is configured: a mutation that happens to be a valid
    # request is refused (403) or measures nothing beyond loopback.
    answers = with_helper(ServerConfig(settings=lab_settings()), scenario)
    for name, resp in answers.items():
        assert resp.status_code != 500, (name, resp.text)
        if resp.status_code != 200:
            error = resp.json()["error"]
            assert 400 <= resp.status_code < 500 and error["code"], (name, resp.text)
            assert "\n" not in error["message"] and "Traceback" not in resp.text, name
    codes = {name: resp.json().get("error", {}).get("code") for name, resp in answers.items()}
    for name in ("deep_list", "deep_object", "deep_in_targets"):
        assert (answers[name].status_code, codes[name]) == (400, "too_deep"), name
    assert codes["huge_int"] == "bad_json" and codes["not_utf8"] == "bad_json"
    for record in caplog.records:
        assert record.exc_info is None and "Traceback" not in record.getMessage(), record.getMessage()


def test_trap_brackets_inside_strings_are_not_depth(site: str) -> None:
    # A legitimate body whose strings hold many brackets is measured, not refused as too deep.
    payload = {"experiment": "web_connectivity", "input": site + "?q=" + "%5B" * 40, "category": "[[[[[[[[[[[[[[[["}

    async def scenario(server: ControlServer, url: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
            return await client.post(url + control.MEASURE_PATH, json=payload)

    resp = with_helper(ServerConfig(allow_private=True, settings=lab_settings()), scenario)
    assert resp.status_code == 200, resp.text


# --------------------------------------------------------------------------- deadlines


def test_trickled_headers_and_body_get_408_in_time() -> None:
    limits = Limits(header_timeout=0.5, read_timeout=1.0)
    head = b"POST /v1/measure HTTP/1.1\r\nHost: h\r\nContent-Length: 200\r\n\r\n"

    async def scenario(server: ControlServer, url: str) -> tuple[tuple[bytes, float], tuple[bytes, float]]:
        async def timed(chunks: list[bytes], pause: float) -> tuple[bytes, float]:
            t0 = time.monotonic()
            answer = await raw_exchange(url, chunks, pause)
            return answer, time.monotonic() - t0

        # one header byte every 0.1 s would take 2 s; the headers' deadline is 0.5 s
        headers = timed([bytes([b]) for b in b"GET /v1/info HTTP/1.1\r\nHost: h\r\n\r\n"], 0.1)
        # headers at once, then the body one byte every 0.1 s: 20 s; the request's deadline is 1 s
        body = timed([head] + [b"x"] * 200, 0.1)
        return await asyncio.gather(headers, body)

    (headers, t_headers), (body, t_body) = with_helper(ServerConfig(limits=limits, settings=lab_settings()), scenario)
    assert headers.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in headers
    assert body.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in body
    assert t_headers < 3 and t_body < 4  # the answer came at the deadline, not when the client finished


def test_malformed_http_and_huge_headers_get_400() -> None:
    async def scenario(server: ControlServer, url: str) -> list[bytes]:
        return [
            await raw_exchange(url, [b"GET /v1/info HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 200_000 + b"\r\n\r\n"]),
            await raw_exchange(url, [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200)]),  # TLS to http
            await raw_exchange(url, [b"POST /v1/measure HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n"]),
            await raw_exchange(url, [b"POST /v1/measure HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"]),
        ]

    for answer in with_helper(ServerConfig(settings=lab_settings()), scenario):
        assert answer.startswith(b"HTTP/1.1 400 ") and b"bad_http" in answer and b"Traceback" not in answer, answer


# --------------------------------------------------------------------------- slow clients


def test_200_slow_clients_do_not_starve_a_real_probe(site: str) -> None:
    """200 slowloris clients hold connections open, each sending a header byte now and then.
    A real probe's measure request is still answered, in about the time it takes alone."""
    n_slow = 200

    async def scenario(server: ControlServer, url: str) -> dict[str, Any]:
        host, port = url.removeprefix("http://").split(":")
        stop = asyncio.Event()

        async def slow_client() -> None:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                return
            try:
                writer.write(b"POST /v1/measure HTTP/1.1\r\nHost: h\r\n")
                while not stop.is_set():
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
                    try:
                        await asyncio.wait_for(stop.wait(), 0.3)
                    except TimeoutError:
                        pass
            except ConnectionError:
                pass  # evicted
            finally:
                writer.close()

        async def probe() -> tuple[httpx.Response, float]:
            t0 = time.monotonic()
            async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
                resp = await client.post(url + control.MEASURE_PATH, json={"experiment": "web_connectivity",
                                                                           "input": site})
            return resp, time.monotonic() - t0

        alone, t_alone = await probe()
        slow = [asyncio.create_task(slow_client()) for _ in range(n_slow)]
        for _ in range(100):  # until the server holds as many pending connections as it may
            await asyncio.sleep(0.05)
            if server.evicted >= n_slow - server.limits.max_pending:
                break
        pending_before = len(server._pending)
        resp, t_busy = await probe()
        stop.set()
        await asyncio.gather(*slow)
        return {"alone": alone, "t_alone": t_alone, "resp": resp, "t_busy": t_busy,
                "pending_before": pending_before, "evicted": server.evicted}

    r = with_helper(ServerConfig(allow_private=True, settings=lab_settings()), scenario)
    assert r["alone"].status_code == 200
    # the slow clients really were holding every pending slot when the probe came
    assert r["pending_before"] == Limits.max_pending and r["evicted"] >= 200 - Limits.max_pending
    assert r["resp"].status_code == 200, r["resp"].text
    assert r["resp"].json()["measurements"][0]["http"][-1]["title"] == "lab page"
    # "normal time": well under the helper's own 10 s header deadline that would otherwise
    # free a slot; the measurement alone takes tens of milliseconds on loopback
    assert r["t_busy"] < max(3.0, 5 * r["t_alone"]), (r["t_busy"], r["t_alone"])
