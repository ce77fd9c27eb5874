"""openvpn: can the probe start an OpenVPN session with a server? Over UDP or TCP it sends a
client hard reset (with the tls-auth HMAC when a key is given) and waits for the server's.

Input: ``openvpn://IP:PORT/?transport=udp|tcp&tls_auth=<base64url key or key file>
&key_direction=0|1&auth=SHA1`` (all parameters optional; a server with tls-auth answers only
a client that signs with its key).
"""

from __future__ import annotations

import os
import struct

from probe.experiments.base import Experiment, InputError, Observation, Settings, Target, current_clock
from probe.experiments.tunnels.endpoints import Endpoint, decode_key, parse_endpoint
from probe.experiments.tunnels.openvpn_wire import (
    TlsAuth,
    WireError,
    check_server_reset,
    client_hard_reset,
    tcp_frame,
)
from probe.experiments.tunnels.transport import (
    Outcome,
    PacketLog,
    Verdict,
    close_writer,
    guarded,
    handshake_record,
    tcp_open,
    udp_exchange,
)

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


class OpenVpn(Experiment):
    name = "openvpn"
    version = "0.1.0"

    def input_problem(self, input_: str) -> str | None:
        try:
            parse_openvpn(input_)
        except InputError as exc:
            return str(exc)
        return None

    def host_key(self, target: Target) -> str:
        try:
            return parse_openvpn(target.input)[0].ip
        except InputError:
            return target.input

    async def run(self, target: Target, settings: Settings) -> list[Observation]:
        ep, tls_auth = parse_openvpn(target.input)
        clock = current_clock()
        log = PacketLog(clock)
        session = os.urandom(8)
        sent_summary = "P_CONTROL_HARD_RESET_CLIENT_V2" + (" tls-auth" if tls_auth else "")

        def validate(data: bytes) -> Verdict:
            try:
                pkt = check_server_reset(data, session, tls_auth)
            except WireError as exc:
                return "bad", str(exc)
            return "ok", pkt.summary()

        t0 = clock.now()
        if ep.transport == "udp":
            outcome = await udp_exchange(
                ep.ip, ep.port, lambda n: client_hard_reset(session, tls_auth, packet_id=1 + n),
                log=log, validate=validate, timeout=settings.timeouts.tls, summary=sent_summary,
            )
            return [handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                     failure=outcome.failure, detail=outcome.detail)]

        connect, reader, writer = await tcp_open(ep.ip, ep.port, clock=clock, timeout=settings.timeouts.connect,
                                                 tag="openvpn", log=log)
        if reader is None or writer is None:
            return [connect, handshake_record(ep, clock, t0, log, ok=False, failure=connect.failure,
                                              detail="tcp connect failed")]
        try:
            packet = tcp_frame(client_hard_reset(session, tls_auth))

            async def converse() -> Outcome:
                writer.write(packet)
                log.sent(packet, sent_summary)
                await writer.drain()
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
                return Outcome(failure="vpn_handshake_failure", detail=what)

            outcome = await guarded(converse(), settings.timeouts.tls)
            if outcome.failure == "eof" and not log.packets[3:]:
                outcome.detail = outcome.detail or "the server closed the connection without answering"
        finally:
            await close_writer(writer)
        return [connect, handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                          failure=outcome.failure, detail=outcome.detail)]
