"""Tunnel experiments on loopback, no root: endpoint rows with what is wrong named, and servers
that answer right, answer with the wrong key, answer garbage, truncate, or stay silent. A bad
answer is a failure string, never a crash or a hang. (Real servers: test_netns_vpn.py.)
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest
import trustme

from probe.experiments.base import InputError, Settings, Target, Timeouts, Vantage, measure
from probe.experiments.ikev2 import Ikev2
from probe.experiments.openvpn import OpenVpn, parse_openvpn
from probe.experiments.tor import Tor, parse_tor
from probe.experiments.tunnels import ikev2_wire, openvpn_wire, tor_link, wireguard_wire
from probe.experiments.tunnels.endpoints import encode_key
from probe.experiments.wireguard import WireGuard, parse_wireguard
from probe.schema import Measurement, validate

FAST = Settings(timeouts=Timeouts(dns=1, connect=1.5, tls=1.5, http=1.5))
STATIC_KEY = os.urandom(256)
KEY = encode_key(STATIC_KEY)
WG_SERVER = os.urandom(32)
WG_CLIENT = os.urandom(32)


def _run(experiment, url: str) -> Measurement:  # type: ignore[no-untyped-def]
    m = asyncio.run(measure(experiment, Target(url), FAST, Vantage(), "run-test"))
    validate(m)
    return m


# --------------------------------------------------------------------------- endpoint rows


MALFORMED = [
    (OpenVpn(), "openvpn://198.51.100.7/", "missing port"),
    (OpenVpn(), "openvpn://vpn.example.org:1194/", "must be an IP address"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?transport=sctp", "transport must be udp or tcp"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?tls_auth=%%%", "not base64url"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?tls_auth=AAAA", "tls_auth: not an OpenVPN static key"),
    (OpenVpn(), f"openvpn://198.51.100.7:1194/?tls_auth={KEY}&key_direction=2", "key_direction must be 0 or 1"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?key_direction=1", "need tls_auth"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?cipher=AES", "unknown parameter 'cipher'"),
    (OpenVpn(), "openvpn://198.51.100.7:1194/?transport=udp&transport=tcp", "given 2 times"),
    (OpenVpn(), "wireguard://198.51.100.7:51820/", "expected an endpoint URL openvpn://..., got scheme 'wireguard'"),
    (WireGuard(), "wireguard://198.51.100.7:51820/?private_key=" + encode_key(WG_CLIENT), "missing parameter 'public_key'"),
    (WireGuard(), "wireguard://198.51.100.7:51820/?public_key=AAAA&private_key=" + encode_key(WG_CLIENT), "must be 32 bytes"),
    (WireGuard(), "wireguard://198.51.100.7:51820/?transport=tcp&public_key=x", "transport must be udp"),
    (Tor(), "tor://198.51.100.7:9001/?cert=abc", "takes no parameters"),
    (Tor(), "obfs4://198.51.100.7:443/?iat_mode=0", "missing parameter 'cert'"),
    (Tor(), "obfs4://198.51.100.7:443/?cert=" + encode_key(os.urandom(52)) + "&iat_mode=7", "iat_mode must be"),
    (Ikev2(), "ikev2://198.51.100.7:500/?psk=x", "unknown parameter 'psk'"),
    (Ikev2(), "ikev2://198.51.100.7:99999/", "malformed endpoint url"),
]


# Named by the message: the URLs hold random keys, and pytest-xdist's workers must collect the
# same test ids.
@pytest.mark.parametrize(("experiment", "url", "message"), MALFORMED, ids=[f"{type(e).__name__}: {m}" for e, _, m in MALFORMED])
def test_a_malformed_row_is_named_with_what_is_wrong(experiment, url: str, message: str) -> None:  # type: ignore[no-untyped-def]
    problem = experiment.input_problem(url)
    assert problem is not None and message in problem and url.split("?")[0][:20] in problem, problem
    m = _run(experiment, url)  # measured anyway (e.g. a resumed run): one clear failure, no crash
    assert m.failure is not None and m.failure.startswith("unknown_failure:invalid_input") and not m.vpn


def test_well_formed_rows_parse() -> None:
    ep, auth = parse_openvpn(f"openvpn://198.51.100.7:1194/?transport=tcp&tls_auth={KEY}&key_direction=1")
    assert (ep.ip, ep.port, ep.transport, auth is not None) == ("198.51.100.7", 1194, "tcp", True)
    assert auth is not None and auth.send_key == STATIC_KEY[192:212] and auth.recv_key == STATIC_KEY[64:84]
    text = "#\n-----BEGIN OpenVPN Static key V1-----\n" + "\n".join(
        STATIC_KEY[i : i + 16].hex() for i in range(0, 256, 16)) + "\n-----END OpenVPN Static key V1-----\n"
    _, from_file = parse_openvpn("openvpn://198.51.100.7:1194/?tls_auth=" + encode_key(text.encode()))
    assert from_file is not None and from_file.send_key == STATIC_KEY[64:84]  # no direction: key 0 both ways
    import base64
    from urllib.parse import quote

    std = quote(base64.b64encode(WG_SERVER).decode(), safe="")  # wg's own format, percent-encoded
    _, server, client, psk = parse_wireguard(f"wireguard://[2001:db8::1]:51820/?public_key={std}&private_key={encode_key(WG_CLIENT)}")
    assert (server, client, psk) == (WG_SERVER, WG_CLIENT, None)
    ep, args = parse_tor("obfs4://198.51.100.7:443/?cert=" + quote(base64.b64encode(os.urandom(52)).decode().rstrip("=")) + "&iat_mode=1")
    assert args is not None and args.startswith("cert=") and args.endswith(";iat-mode=1") and ep.protocol == "obfs4"


# --------------------------------------------------------------------------- UDP servers


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes], list[bytes]]):
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[bytes] = []

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(data)
        for reply in self.answer(data):
            assert self.transport is not None
            self.transport.sendto(reply, addr)


def _with_udp_server(answer: Callable[[bytes], list[bytes]], make_url: Callable[[int], str], experiment):  # type: ignore[no-untyped-def]
    async def main() -> tuple[Measurement, list[bytes]]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: _Udp(answer), local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            m = await measure(experiment, Target(make_url(port)), FAST, Vantage(), "run-test")
        finally:
            transport.close()
        return m, proto.seen

    m, seen = asyncio.run(main())
    validate(m)
    return m, seen


def _openvpn_server_reset(request: bytes, key: bytes = STATIC_KEY) -> bytes:
    """What an OpenVPN server answers: its hard reset to ours, P_ACK_V1 to our ClientHello."""
    auth = openvpn_wire.TlsAuth.from_static_key(key, 0)  # the server's key direction
    if key == STATIC_KEY:  # the client's HMAC verifies as the server sees it
        openvpn_wire.parse_packet(request, auth)
    if request[0] >> 3 == openvpn_wire.P_CONTROL_V1:
        return openvpn_wire.build_packet(openvpn_wire.P_ACK_V1, b"S" * 8, auth, packet_id=2, acks=(1,),
                                         remote_session=request[1:9], message_id=None)
    return openvpn_wire.build_packet(openvpn_wire.P_CONTROL_HARD_RESET_SERVER_V2, b"S" * 8, auth, acks=(0,),
                                     remote_session=request[1:9], message_id=0)


def _reset_only(answer_control: Callable[[bytes], list[bytes]]) -> Callable[[bytes], list[bytes]]:
    def answer(request: bytes) -> list[bytes]:
        if request[0] >> 3 == openvpn_wire.P_CONTROL_V1:
            return answer_control(request)
        return [_openvpn_server_reset(request)]

    return answer


def _openvpn_url(port: int) -> str:
    return f"openvpn://127.0.0.1:{port}/?tls_auth={KEY}&key_direction=1"


@pytest.mark.parametrize(
    ("answer", "failure", "detail"),
    [
        (lambda req: [_openvpn_server_reset(req)], None, "P_CONTROL_HARD_RESET_SERVER_V2"),
        (lambda req: [_openvpn_server_reset(req, os.urandom(256))], "vpn_handshake_failure", "HMAC"),
        (lambda req: [b"HTTP/1.1 400 Bad Request\r\n\r\n"], "vpn_handshake_failure", None),
        (lambda req: [_openvpn_server_reset(req)[:12]], "vpn_handshake_failure", "truncated"),
        (lambda req: [], "generic_timeout", None),
        (_reset_only(lambda req: []), "generic_timeout", "then no valid answer to the TLS ClientHello"),
        (_reset_only(lambda req: [b"\x20garbage-garbage-garbage"]), "vpn_handshake_failure", "then no valid answer"),
    ],
    ids=["server-reset", "wrong-key", "garbage", "truncated", "silent", "silent-after-reset", "garbage-after-reset"],
)
def test_openvpn_udp_answers(answer, failure: str | None, detail: str | None) -> None:  # type: ignore[no-untyped-def]
    m, seen = _with_udp_server(answer, _openvpn_url, OpenVpn())
    rec = m.vpn[0]
    assert (rec.failure, rec.handshake_ok) == (failure, failure is None), rec
    assert detail is None or detail in (rec.detail or ""), rec.detail
    assert seen and seen[0][0] >> 3 == openvpn_wire.P_CONTROL_HARD_RESET_CLIENT_V2
    assert rec.packets[0].direction == "sent" and rec.packets[0].summary == "P_CONTROL_HARD_RESET_CLIENT_V2 tls-auth"
    if failure is None:
        assert [p.summary for p in rec.packets if p.direction == "sent"][-1] == "P_CONTROL_V1 TLS ClientHello tls-auth"
        assert "control channel answered: P_ACK_V1" in (rec.detail or "")


def _wg_respond(init_msg: bytes, server_private: bytes, *, psk: bytes = b"\0" * 32) -> bytes:
    """A WireGuard responder (the server side of the Noise IK handshake), for the test only."""
    w = wireguard_wire
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    server = X25519PrivateKey.from_private_bytes(server_private)
    s_pub = w._public(server)
    e_i = init_msg[8:40]
    ck = w._hash(w.CONSTRUCTION)
    h = w._hash(w._hash(ck, w.IDENTIFIER), s_pub)
    ck = w._kdf(ck, e_i, 1)[0]
    h = w._hash(h, e_i)
    ck, k = w._kdf(ck, w._dh(server, e_i), 2)
    static_i = w._aead_open(k, 0, init_msg[40:88], h)
    h = w._hash(h, init_msg[40:88])
    ck, k = w._kdf(ck, w._dh(server, static_i), 2)
    w._aead_open(k, 0, init_msg[88:116], h)
    h = w._hash(h, init_msg[88:116])
    eph = X25519PrivateKey.generate()
    e_r = w._public(eph)
    ck = w._kdf(ck, e_r, 1)[0]
    h = w._hash(h, e_r)
    ck = w._kdf(ck, w._dh(eph, e_i), 1)[0]
    ck = w._kdf(ck, w._dh(eph, static_i), 1)[0]
    ck, tau, k = w._kdf(ck, psk, 3)
    h = w._hash(h, tau)
    body = b"\x02\0\0\0" + struct.pack("<I", 0x1234) + init_msg[4:8] + e_r + w._aead(k, 0, b"", h)
    return body + w._mac(w._hash(w.LABEL_MAC1, static_i), body) + b"\0" * 16


def _wg_url(port: int) -> str:
    server_public = wireguard_wire.public_from_private(WG_SERVER)
    return f"wireguard://127.0.0.1:{port}/?public_key={encode_key(server_public)}&private_key={encode_key(WG_CLIENT)}"


@pytest.mark.parametrize(
    ("answer", "failure", "detail"),
    [
        (lambda req: [_wg_respond(req, WG_SERVER)], None, "handshake response"),
        (lambda req: [_wg_respond(req, WG_SERVER, psk=b"\1" * 32)], "vpn_handshake_failure", "does not decrypt"),
        (lambda req: [_wg_respond(req, WG_SERVER)[:60]], "vpn_handshake_failure", "92"),
        (lambda req: [b"\x02\0\0\0" + os.urandom(88)], "vpn_handshake_failure", None),
        (lambda req: [b"\x07garbage"], "vpn_handshake_failure", None),
        (lambda req: [], "generic_timeout", None),
    ],
    ids=["response", "wrong-key", "truncated", "random-response", "garbage", "silent"],
)
def test_wireguard_answers(answer, failure: str | None, detail: str | None) -> None:  # type: ignore[no-untyped-def]
    m, seen = _with_udp_server(answer, _wg_url, WireGuard())
    rec = m.vpn[0]
    assert (rec.failure, rec.handshake_ok) == (failure, failure is None), rec
    assert detail is None or detail in (rec.detail or ""), rec.detail
    assert len(seen[0]) == wireguard_wire.INITIATION_SIZE and seen[0][:4] == b"\x01\0\0\0"


def _ike_response(req: bytes, *, notify: int | None = None, data: bytes = b"", spi: bytes | None = None) -> bytes:
    from scapy.contrib.ikev2 import IKEv2, IKEv2_KE, IKEv2_Nonce, IKEv2_Notify, IKEv2_SA
    from scapy.packet import Packet

    sent = IKEv2(req)
    payload: Packet
    if notify is not None:
        payload = IKEv2_Notify(type=notify, notify=data)
    else:
        payload = IKEv2_SA(prop=sent[IKEv2_SA].prop) / IKEv2_KE(group=14, ke=b"\1" * 256) / IKEv2_Nonce(nonce=b"n" * 32)
    resp = IKEv2(init_SPI=spi or sent.init_SPI, resp_SPI=b"R" * 8, exch_type=34, flags="Response", id=0) / payload
    return bytes(resp)


def _ike_url(port: int) -> str:
    return f"ikev2://127.0.0.1:{port}/"


def _ike_answer_groups(req: bytes) -> list[bytes]:
    from scapy.contrib.ikev2 import IKEv2, IKEv2_KE

    if int(IKEv2(req)[IKEv2_KE].group) != 14:
        return [_ike_response(req, notify=ikev2_wire.NOTIFY_INVALID_KE_PAYLOAD, data=b"\x00\x0e")]
    return [_ike_response(req)]


@pytest.mark.parametrize(
    ("answer", "failure", "detail"),
    [
        (lambda req: [_ike_response(req)], None, "SA, KE"),
        (_ike_answer_groups, None, "SA, KE (group 14)"),
        (lambda req: [_ike_response(req, spi=b"X" * 8)], "vpn_handshake_failure", "another IKE SA"),
        (lambda req: [_ike_response(req)[:-10]], "vpn_handshake_failure", "truncated"),
        (lambda req: [os.urandom(100)], "vpn_handshake_failure", None),
        (lambda req: [], "generic_timeout", None),
    ],
    ids=["response", "invalid-ke-retry", "other-spi", "truncated", "garbage", "silent"],
)
def test_ikev2_answers(answer, failure: str | None, detail: str | None) -> None:  # type: ignore[no-untyped-def]
    m, seen = _with_udp_server(answer, _ike_url, Ikev2())
    rec = m.vpn[0]
    assert (rec.failure, rec.handshake_ok) == (failure, failure is None), rec
    assert detail is None or detail in (rec.detail or ""), rec.detail
    assert seen[0][18] == ikev2_wire.IKE_SA_INIT


# --------------------------------------------------------------------------- TCP servers


@pytest.fixture(scope="module")
def tls_server_context() -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example").configure_cert(ctx)
    return ctx


def _with_tcp_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                     make_url: Callable[[int], str], experiment, ssl_ctx: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    async def main() -> Measurement:
        async def guarded(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await handler(r, w)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=ssl_ctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await measure(experiment, Target(make_url(port)), FAST, Vantage(), "run-test")

    m = asyncio.run(main())
    validate(m)
    return m


async def _tor_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readexactly(5)
    await reader.readexactly(struct.unpack("!H", head[3:5])[0])
    writer.write(tor_link.versions_cell((3, 4, 5)) + struct.pack("!IBH", 0, tor_link.CMD_CERTS, 3) + b"\0\0\0")
    await writer.drain()
    await reader.read(100)


async def _garbage_after_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await writer.drain()


async def _close_after_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)


async def _truncated_versions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(tor_link.versions_cell((3, 4, 5))[:6])
    await writer.drain()


@pytest.mark.parametrize(
    ("handler", "failure"),
    [(_tor_relay, None), (_garbage_after_tls, "vpn_handshake_failure"), (_close_after_tls, "eof"),
     (_truncated_versions, "eof")],
    ids=["relay", "garbage", "closed", "truncated"],
)
def test_tor_or_port_answers(tls_server_context: ssl.SSLContext, handler, failure: str | None) -> None:  # type: ignore[no-untyped-def]
    m = _with_tcp_server(handler, lambda p: f"tor://127.0.0.1:{p}/", Tor(), tls_server_context)
    rec = m.vpn[0]
    assert (rec.failure, rec.handshake_ok) == (failure, failure is None), rec
    assert m.tcp[0].failure is None and m.tls[0].failure is None and m.tls[0].tls_version
    if failure is None:
        assert "link protocol 5, CERTS received" in (rec.detail or "")
    if failure == "vpn_handshake_failure":
        assert rec.packets[-1].direction == "received" and rec.packets[-1].size == 5, rec.packets


def test_tor_to_a_server_that_is_not_tls() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + os.urandom(64))
        await writer.drain()

    m = _with_tcp_server(http, lambda p: f"tor://127.0.0.1:{p}/", Tor())
    assert m.tls[0].failure in ("tls_handshake_failure", "eof", "connection_reset")
    assert m.vpn[0].failure == m.tls[0].failure and not m.vpn[0].handshake_ok


@pytest.mark.parametrize(
    ("reply", "failure", "detail"),
    [
        (lambda req: openvpn_wire.tcp_frame(_openvpn_server_reset(req[2:])), None, "P_CONTROL_HARD_RESET_SERVER_V2"),
        (lambda req: b"\xff\xff" + os.urandom(30), "vpn_handshake_failure", "not an OpenVPN frame"),
        (lambda req: openvpn_wire.tcp_frame(_openvpn_server_reset(req[2:]))[:20], "eof", None),
        (lambda req: b"", "eof", "closed the connection"),
    ],
    ids=["server-reset", "garbage", "truncated", "closed"],
)
def test_openvpn_tcp_answers(reply, failure: str | None, detail: str | None) -> None:  # type: ignore[no-untyped-def]
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readexactly(2)
            req = head + await reader.readexactly(struct.unpack("!H", head)[0])
            out = reply(req)
            writer.write(out)
            await writer.drain()
            if len(out) < 2 or struct.unpack("!H", out[:2])[0] != len(out) - 2:
                return  # garbage, truncated or nothing: then close

    m = _with_tcp_server(server, lambda p: f"openvpn://127.0.0.1:{p}/?transport=tcp&tls_auth={KEY}&key_direction=1",
                         OpenVpn())
    rec = m.vpn[0]
    assert (rec.failure, rec.handshake_ok) == (failure, failure is None), rec
    assert detail is None or detail in (rec.detail or ""), rec.detail
    assert [p.summary for p in rec.packets[:2]] == ["TCP SYN", "TCP SYN-ACK (connected)"]


def test_obfs4_without_obfs4proxy_records_tcp_reachability_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import probe.experiments.tor as tor_module

    monkeypatch.setattr(tor_module, "obfs4proxy_path", lambda: None)

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)

    cert = encode_key(os.urandom(52))
    m = _with_tcp_server(idle, lambda p: f"obfs4://127.0.0.1:{p}/?cert={cert}&iat_mode=0", Tor())
    rec = m.vpn[0]
    assert rec.tag == "tcp_only" and rec.failure is None and not rec.handshake_ok
    assert "obfs4proxy is not installed" in (rec.detail or "") and m.tcp[0].failure is None


def test_nothing_listening_is_refused_fast() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for experiment, url in ((OpenVpn(), f"openvpn://127.0.0.1:{port}/"), (WireGuard(), _wg_url(port)),
                            (Ikev2(), _ike_url(port)), (Tor(), f"tor://127.0.0.1:{port}/")):
        m = _run(experiment, url)
        assert m.vpn[-1].failure == "connection_refused", (url, m.vpn)


def test_parse_errors_are_value_errors() -> None:
    with pytest.raises(openvpn_wire.WireError):
        openvpn_wire.parse_static_key(b"-----BEGIN OpenVPN Static key V1-----\nzz\n-----END OpenVPN Static key V1-----")
    with pytest.raises(InputError):
        parse_wireguard("wireguard://127.0.0.1:1/?public_key=a&private_key=b")


# --------------------------------------------------------------------------- lists


def test_the_shipped_endpoint_list_parses_for_every_experiment() -> None:
    from pathlib import Path

    from probe.testlists import load_lists

    path = Path(__file__).resolve().parents[2] / "testlists" / "endpoints.csv"
    entries, problems = load_lists([path])
    assert not problems and len(entries) == 7
    by_scheme = {"openvpn": OpenVpn(), "wireguard": WireGuard(), "tor": Tor(), "obfs4": Tor(), "ikev2": Ikev2()}
    for e in entries:
        assert by_scheme[e.url.split(":")[0]].input_problem(e.url) is None, e.url
    assert {e.url.split(":")[0] for e in entries} == set(by_scheme)


def test_vantage_run_names_a_malformed_endpoint_row(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from vantage.cli import main

    bad = tmp_path / "endpoints.csv"
    bad.write_text("url,category_code\nopenvpn://203.0.113.5:1194/?transport=quic,ANON\n")
    result = CliRunner().invoke(main, ["run", "--experiment", "openvpn", "--list", str(bad),
                                       "--output", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "transport must be udp or tcp" in result.output and "openvpn://203.0.113.5:1194" in result.output
