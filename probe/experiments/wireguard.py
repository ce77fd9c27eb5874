"""wireguard: does a WireGuard server answer our handshake? Sends a handshake initiation (Noise
IK, built with scapy's WireGuard layer) and checks the response cryptographically.

Input: ``wireguard://IP:PORT/?public_key=<server key>&private_key=<client key>
&preshared_key=<optional>`` (keys in base64url or base64; the server must know the client's
public key, or it stays silent by design).
"""

from __future__ import annotations

from probe.experiments.base import Observation
from probe.experiments.context import MeasurementContext
from probe.experiments.tunnels.base import TunnelExperiment
from probe.experiments.tunnels.endpoints import Endpoint, decode_key, parse_endpoint
from probe.experiments.tunnels.transport import Verdict, handshake_record
from probe.experiments.tunnels.wire import WireError
from probe.experiments.tunnels.wireguard_wire import build_initiation, check_reply

# wireguard-go retries after 5 s (REKEY_TIMEOUT) plus jitter; servers accept at most one
# initiation per peer every 20 ms and only with a newer timestamp, so a retry helps when
# several clients share a key.
RETRANSMIT_S = 1.5


def parse_wireguard(url: str) -> tuple[Endpoint, bytes, bytes, bytes | None]:
    ep = parse_endpoint(url, ("wireguard",), transports=("udp",),
                        allowed=("public_key", "private_key", "preshared_key"),
                        required=("public_key", "private_key"))
    server_public = decode_key(url, "public_key", ep.params["public_key"], size=32)
    client_private = decode_key(url, "private_key", ep.params["private_key"], size=32)
    psk = ep.params.get("preshared_key")
    return ep, server_public, client_private, decode_key(url, "preshared_key", psk, size=32) if psk else None


Keys = tuple[bytes, bytes, bytes | None]  # the server's public, our private, the preshared key


class WireGuard(TunnelExperiment[Keys]):
    name = "wireguard"
    version = "0.1.0"
    wire_module = "scapy.contrib.wireguard"

    def parse(self, url: str) -> tuple[Endpoint, Keys]:
        ep, server_public, client_private, psk = parse_wireguard(url)
        return ep, (server_public, client_private, psk)

    async def handshake(self, ep: Endpoint, keys: Keys, net: MeasurementContext) -> list[Observation]:
        server_public, client_private, psk = keys
        clock = net.clock
        log = net.packet_log()
        inits = []

        def initiation(attempt: int) -> bytes:
            # A fresh initiation per attempt: the server rejects a replayed timestamp.
            inits.append(build_initiation(client_private, server_public))
            return inits[-1].message

        def validate(data: bytes) -> Verdict:
            errors = []
            for init in reversed(inits):
                try:
                    return "ok", check_reply(data, init, client_private, psk)
                except WireError as exc:
                    errors.append(str(exc))
            return "bad", errors[0] if errors else "no initiation sent"

        t0 = clock.now()
        outcome = await net.udp_exchange(ep.ip, ep.port, initiation, log=log, validate=validate,
                                         timeout=net.timeouts.tls, retransmit=RETRANSMIT_S,
                                         summary="handshake initiation")
        return [handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                 failure=outcome.failure, detail=outcome.detail)]
