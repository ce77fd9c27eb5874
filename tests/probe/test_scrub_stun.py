"""--stun: the public address a STUN server reports is learned at the start of a run and scrubbed,
never written. A loopback STUN server plays the NAT by reporting a documentation address."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aioice import stun
from netns.address_forms import find, forms

from probe.net.stun import StunError, parse_server, public_address
from tests.support.loopback_site import LoopbackServer

NAT_ADDR = "198.51.100.99"  # what the "router" makes of us


class _StunServer(asyncio.DatagramProtocol):
    """A STUN binding responder on UDP (not tests.support.loopback_site, which is HTTP over TCP):
    aioice builds and parses the messages; no STUN server library is a dependency."""

    def __init__(self, *, junk_first: bool = False, answer: bool = True) -> None:
        self.junk_first = junk_first
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        assert self.transport is not None
        if not self.answer:
            return
        if self.junk_first:
            self.transport.sendto(b"\x01\x01junk", addr)
            other = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, attributes={"XOR-MAPPED-ADDRESS": ("192.0.2.1", 1)})
            self.transport.sendto(bytes(other), addr)  # another transaction: ignored
        reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id,
                             attributes={"XOR-MAPPED-ADDRESS": (NAT_ADDR, 40000)})
        self.transport.sendto(bytes(reply), addr)


def stun_thread(**kwargs: bool) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(lambda: _StunServer(**kwargs), local_addr=("127.0.0.1", 0))
        )
        box["transport"] = transport
        box["port"] = transport.get_extra_info("sockname")[1]
        ready.set()
        loop.run_forever()
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield f"127.0.0.1:{box['port']}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture()
def stun_server() -> Iterator[str]:
    yield from stun_thread(junk_first=True)


@pytest.fixture()
def silent_stun_server() -> Iterator[str]:
    yield from stun_thread(answer=False)


def test_binding_request_learns_the_mapped_address(stun_server: str) -> None:
    assert asyncio.run(public_address(stun_server)) == NAT_ADDR


def test_a_silent_server_is_one_clear_error(silent_stun_server: str) -> None:
    with pytest.raises(StunError, match=r"no binding response"):
        asyncio.run(public_address(silent_stun_server, timeout=1.0))


def test_server_forms() -> None:
    assert parse_server("stun.example:19302") == ("stun.example", 19302)
    assert parse_server("[2001:db8::1]:3478") == ("2001:db8::1", 3478)
    assert parse_server("192.0.2.7") == ("192.0.2.7", 3478)
    for bad in ("host:0", "host:port", ":3478"):
        with pytest.raises(ValueError):
            parse_server(bad)


def _echo_page() -> bytes:
    """What a site behind the NAT would echo: the public address, in a few encodings."""
    f = forms(NAT_ADDR)
    return f"<title>You are {NAT_ADDR}</title><p>{f['hex']} {f['base64']} {f['hostname']}</p>".encode()


def test_run_with_stun_scrubs_the_public_address(stun_server: str, tmp_path: Path) -> None:
    with LoopbackServer(page=_echo_page(), headers=[("X-Client-IP", NAT_ADDR)], protocol_version="HTTP/1.1") as site:
        out = subprocess.run(
            [sys.executable, "-c", "from vantage.cli import main; main()", "-vv", "run", "--url", site.url,
             "--stun", stun_server, "--output", str(tmp_path / "ds"), "--no-progress", "--timeout", "5"],
            capture_output=True, text=True, timeout=120,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "privacy: this network's public address" in out.stderr
    rows = [r for p in (tmp_path / "ds").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    text = json.dumps(rows, default=str)
    assert rows and rows[0]["http"][0]["title"] == "You are [scrubbed]"
    assert find(text, [NAT_ADDR]) == [] and find(out.stderr + out.stdout, [NAT_ADDR]) == []
    assert "127.0.0.1" in text  # the target is kept


@pytest.mark.slow  # waits out STUN timeouts: ~3.6 s
def test_run_with_a_silent_stun_server_goes_paranoid(silent_stun_server: str, tmp_path: Path) -> None:
    with socket.socket() as s:  # nothing listens here: the run is quick, only the opening lines matter
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-c", "from vantage.cli import main; main()", "run", "--url", f"http://127.0.0.1:{port}/",
         "--stun", silent_stun_server, "--output", str(tmp_path / "ds"), "--no-progress", "--timeout", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"STUN server {silent_stun_server}: no binding response" in out.stderr
    assert "privacy: public address unknown" in out.stderr


def test_stun_name_with_resolver_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vantage.cli import main

    result = CliRunner().invoke(main, ["run", "--url", "http://127.0.0.1:9/", "--resolver", "127.0.0.1",
                                       "--stun", "stun.example:3478", "--output", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "with --resolver, give the STUN server as IP:PORT" in result.output
