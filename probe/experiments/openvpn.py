"""openvpn: can the probe start an OpenVPN session with a server? Over UDP or TCP it sends a
client hard reset (with the tls-auth HMAC when a key is given) and waits for the server's, then
opens the control channel: a TLS ClientHello in P_CONTROL_V1, answered by P_ACK_V1 or the
server's TLS flight. (A censor that lets the first exchange through and drops the rest shows.)

Input: ``openvpn://IP:PORT/?transport=udp|tcp&tls_auth=<base64url key or key file>
&key_direction=0|1&auth=SHA1`` (all parameters optional; a server with tls-auth answers only
a client that signs with its key).
"""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import Callable

from probe.experiments.base import InputError, Observation
from probe.experiments.context import MeasurementContext
from probe.experiments.tunnels.base import TunnelExperiment
from probe.experiments.tunnels.endpoints import Endpoint, decode_key, parse_endpoint
from probe.experiments.tunnels.openvpn_wire import (
    ControlPacket,
    TlsAuth,
    check_control_reply,
    check_server_reset,
    client_hard_reset,
    client_hello,
    tcp_frame,
)
from probe.experiments.tunnels.transport import (
    Outcome,
    Verdict,
    close_writer,
    guarded,
    handshake_record,
)
from probe.experiments.tunnels.wire import WireError
from probe.net.errors import classify

MAX_TCP_PACKET = 2048  # a hard reset is well under 200 bytes; more is not an OpenVPN answer


def parse_openvpn(url: str) -> tuple[Endpoint, TlsAuth | None]:
    ep = parse_endpoint(url, ("openvpn",), transports=("udp", "tcp"),
                        allowed=("tls_auth", "key_direction", "auth"))
    key = ep.params.get("tls_auth")
    direction_text = ep.params.get("key_direction")
    if direction_text not in (None, "0", "1"):
        raise InputError(f"{url!r}: key_direction must be 0 or 1, got {direction_text!r}")
    if key is None:
        if direction_text is not None or "auth" in ep.params:
            raise InputError(f"{url!r}: key_direction and auth need tls_auth")
        return ep, None
    try:
        tls_auth = TlsAuth.from_static_key(
            decode_key(url, "tls_auth", key),
            None if direction_text is None else int(direction_text),
            ep.params.get("auth", "SHA1"),
        )
    except WireError as exc:
        raise InputError(f"{url!r}: tls_auth: {exc}") from None
    return ep, tls_auth


class OpenVpn(TunnelExperiment[TlsAuth | None]):
    name = "openvpn"
    version = "0.1.0"

    def parse(self, url: str) -> tuple[Endpoint, TlsAuth | None]:
        return parse_openvpn(url)

    async def handshake(self, ep: Endpoint, tls_auth: TlsAuth | None, net: MeasurementContext) -> list[Observation]:
        clock = net.clock
        log = net.packet_log()
        session = os.urandom(8)
        signed = " tls-auth" if tls_auth else ""
        server: list[ControlPacket] = []  # the server's hard reset, once it came

        def validate_reset(data: bytes) -> Verdict:
            try:
                pkt = check_server_reset(data, session, tls_auth)
            except WireError as exc:
                return "bad", str(exc)
            server.append(pkt)
            return "ok", pkt.summary()

        def validate_control(data: bytes) -> Verdict:
            try:
                pkt = check_control_reply(data, session, server[0].session_id, tls_auth)
            except WireError as exc:
                return "bad", str(exc)
            if pkt is None:
                return "ignore", "P_CONTROL_HARD_RESET_SERVER_V2 (retransmitted)"
            return "ok", pkt.summary()

        def hello(n: int) -> bytes:
            return client_hello(session, server[0], tls_auth, tls_client_hello(), packet_id=2 + n)

        t0 = clock.now()
        timeout = net.timeouts.tls
        if ep.transport == "udp":
            try:
                async with net.udp_session(ep.ip, ep.port) as udp:
                    outcome = await udp.exchange(
                        lambda n: client_hard_reset(session, tls_auth, packet_id=1 + n), log=log,
                        validate=validate_reset, timeout=timeout, summary="P_CONTROL_HARD_RESET_CLIENT_V2" + signed,
                    )
                    if outcome.reply is not None:
                        reset = outcome.detail
                        outcome = await udp.exchange(hello, log=log, validate=validate_control, timeout=timeout,
                                                     summary="P_CONTROL_V1 TLS ClientHello" + signed)
                        outcome.detail = _second_step_detail(reset, outcome)
            except OSError as exc:
                outcome = Outcome(failure=classify(exc))
            return [handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                     failure=outcome.failure, detail=outcome.detail)]

        connect, reader, writer = await net.tcp_open(ep.ip, ep.port, tag="openvpn", log=log)
        if reader is None or writer is None:
            return [connect, handshake_record(ep, clock, t0, log, ok=False, failure=connect.failure,
                                              detail="tcp connect failed")]

        async def exchange(packet: bytes, summary: str, validate: Callable[[bytes], Verdict]) -> Outcome:
            assert reader is not None and writer is not None
            writer.write(tcp_frame(packet))
            log.sent(tcp_frame(packet), summary)
            await writer.drain()
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                if not 9 <= length <= MAX_TCP_PACKET:
                    log.received(head, f"length {length}")
                    return Outcome(failure="vpn_handshake_failure", detail=f"not an OpenVPN frame (length {length})")
                body = await reader.readexactly(length)
                verdict, what = validate(body)
                log.received(head + body, what)
                if verdict == "ok":
                    return Outcome(reply=body, detail=what)
                if verdict == "bad":
                    return Outcome(failure="vpn_handshake_failure", detail=what)

        try:
            outcome = await guarded(exchange(client_hard_reset(session, tls_auth),
                                             "P_CONTROL_HARD_RESET_CLIENT_V2" + signed, validate_reset), timeout)
            if outcome.failure == "eof" and not log.packets[3:]:
                outcome.detail = outcome.detail or "the server closed the connection without answering"
            if outcome.reply is not None:
                reset = outcome.detail
                outcome = await guarded(exchange(hello(0), "P_CONTROL_V1 TLS ClientHello" + signed,
                                                 validate_control), timeout)
                outcome.detail = _second_step_detail(reset, outcome)
        finally:
            await close_writer(writer)
        return [connect, handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                          failure=outcome.failure, detail=outcome.detail)]


def _second_step_detail(reset: str | None, outcome: Outcome) -> str:
    if outcome.reply is not None:
        return f"{reset}; control channel answered: {outcome.detail}"
    return f"{reset}; then no valid answer to the TLS ClientHello ({outcome.detail or outcome.failure})"


def tls_client_hello() -> bytes:
    """The first flight of a TLS client, as the OpenVPN client's control channel would send it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
