"""ikev2: does an IKEv2 VPN gateway answer? Sends IKE_SA_INIT (scapy's IKEv2 layer) over UDP and
checks the responder's IKE_SA_INIT; asked for another DH group or a cookie, it asks again once.

Input: ``ikev2://IP:PORT/`` (port 500 usually; 4500 for NAT traversal is not covered).
"""

from __future__ import annotations

from probe.experiments.base import InputError, Observation
from probe.experiments.context import MeasurementContext
from probe.experiments.tunnels.base import TunnelExperiment
from probe.experiments.tunnels.endpoints import Endpoint, parse_endpoint
from probe.experiments.tunnels.ikev2_wire import (
    GROUP_CURVE25519,
    SUPPORTED_GROUPS,
    Reply,
    Request,
    build_sa_init,
    check_reply,
)
from probe.experiments.tunnels.transport import Verdict, handshake_record
from probe.experiments.tunnels.wire import WireError

RETRANSMIT_S = 2.0


def parse_ikev2(url: str) -> Endpoint:
    ep = parse_endpoint(url, ("ikev2",), transports=("udp",))
    if ep.params:
        raise InputError(f"{url!r}: ikev2:// takes no parameters")
    return ep


class Ikev2(TunnelExperiment[None]):
    name = "ikev2"
    version = "0.1.0"
    wire_module = "scapy.contrib.ikev2"

    def parse(self, url: str) -> tuple[Endpoint, None]:
        return parse_ikev2(url), None

    async def handshake(self, ep: Endpoint, config: None, net: MeasurementContext) -> list[Observation]:
        clock = net.clock
        log = net.packet_log()
        t0 = clock.now()
        group, cookie = GROUP_CURVE25519, None
        previous: Request | None = None
        outcome = None
        for _round in range(4):  # first try, then at most one group change and a cookie for each
            if cookie is not None and previous is not None and previous.group == group:
                request = build_sa_init(group, cookie=cookie, spi=previous.spi, ke=previous.ke, nonce=previous.nonce)
            else:
                request = build_sa_init(group, cookie=cookie)
            previous = request
            replies: list[Reply] = []

            def validate(data: bytes, request: Request = request, replies: list[Reply] = replies) -> Verdict:
                try:
                    reply = check_reply(data, request)
                except WireError as exc:
                    return "bad", str(exc)
                replies.append(reply)
                return "ok", reply.summary

            def message(_attempt: int, request: Request = request) -> bytes:
                return request.message  # a retransmission repeats the request exactly

            remaining = net.timeouts.tls - (clock.now() - t0)
            outcome = await net.udp_exchange(ep.ip, ep.port, message, log=log, validate=validate,
                                             timeout=max(remaining, 0.5), retransmit=RETRANSMIT_S,
                                             summary=f"IKE_SA_INIT request (KE group {group})")
            if outcome.reply is None or not replies:
                break
            reply = replies[-1]
            if reply.ok:
                return [handshake_record(ep, clock, t0, log, ok=True, failure=None, detail=reply.summary)]
            if reply.retry_group is not None and reply.retry_group in SUPPORTED_GROUPS and reply.retry_group != group:
                group = reply.retry_group
            elif reply.cookie is not None and reply.cookie != cookie:
                cookie = reply.cookie
            else:
                return [handshake_record(ep, clock, t0, log, ok=False, failure="vpn_handshake_failure",
                                         detail=f"{reply.summary} (cannot continue)")]
        assert outcome is not None
        return [handshake_record(ep, clock, t0, log, ok=False, failure=outcome.failure, detail=outcome.detail)]
