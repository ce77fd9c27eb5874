"""tor: can the probe reach a Tor relay or an obfs4 bridge? TCP connect, TLS, and the link
protocol's VERSIONS exchange (the relay answers VERSIONS and CERTS). For obfs4 bridges the
obfs4 handshake runs through ``obfs4proxy`` as a client when it is installed; without it only
TCP reachability is recorded, and said so.

Inputs: ``tor://IP:ORPORT/`` and ``obfs4://IP:PORT/?cert=<percent-encoded>&iat_mode=0``.
"""

from __future__ import annotations

import asyncio

from probe.experiments.base import InputError, Observation
from probe.experiments.context import MeasurementContext
from probe.experiments.tunnels.base import TunnelExperiment
from probe.experiments.tunnels.endpoints import Endpoint, decode_key, parse_endpoint
from probe.experiments.tunnels.tor_link import (
    CMD_CERTS,
    OUR_VERSIONS,
    PtError,
    obfs4_client,
    obfs4proxy_path,
    read_var_cell,
    read_versions,
    socks5_connect,
    tor_tls_context,
    versions_cell,
)
from probe.experiments.tunnels.transport import (
    Outcome,
    PacketLog,
    close_writer,
    guarded,
    handshake_record,
)
from probe.experiments.tunnels.wire import WireError
from probe.net.clock import Clock
from probe.net.errors import classify
from probe.schema import TlsHandshake

OBFS4_CERT_SIZE = 52  # node id (20) + public key (32), base64 without padding in bridge lines


def parse_tor(url: str) -> tuple[Endpoint, str | None]:
    """The endpoint and, for obfs4, the PT arguments ("cert=...;iat-mode=N")."""
    ep = parse_endpoint(url, ("tor", "obfs4"), transports=("tcp",), allowed=("cert", "iat_mode"))
    if ep.protocol == "tor":
        if ep.params:
            raise InputError(f"{url!r}: tor:// takes no parameters (obfs4 bridges are obfs4://)")
        return ep, None
    cert = ep.params.get("cert")
    if not cert:
        raise InputError(f"{url!r}: missing parameter 'cert' (from the bridge line)")
    decode_key(url, "cert", cert, size=OBFS4_CERT_SIZE)
    iat = ep.params.get("iat_mode", "0")
    if iat not in ("0", "1", "2"):
        raise InputError(f"{url!r}: iat_mode must be 0, 1 or 2, got {iat!r}")
    # obfs4proxy wants the cert as in the bridge line: standard base64 without padding.
    cert_text = cert.strip().replace(" ", "+").rstrip("=")
    return ep, f"cert={cert_text};iat-mode={iat}"


async def link_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: PacketLog) -> Outcome:
    """VERSIONS out, VERSIONS (and CERTS) back."""
    cell = versions_cell()
    writer.write(cell)
    log.sent(cell, f"VERSIONS {list(OUR_VERSIONS)}")
    await writer.drain()
    try:
        theirs, cell = await read_versions(reader)
    except WireError as exc:
        log.received(exc.data, "not a VERSIONS cell")
        return Outcome(failure="vpn_handshake_failure", detail=str(exc))
    log.received(cell, f"VERSIONS {theirs}")
    common = sorted(set(theirs) & set(OUR_VERSIONS))
    if not common:
        return Outcome(failure="vpn_handshake_failure", detail=f"no common link protocol version (relay: {theirs})")
    version = common[-1]
    detail = f"link protocol {version}"
    try:
        cmd, body = await asyncio.wait_for(read_var_cell(reader, 4 if version >= 4 else 2), 2.0)
        log.received(body, "CERTS" if cmd == CMD_CERTS else f"cell {cmd}")
        if cmd == CMD_CERTS:
            detail += ", CERTS received"
    except (TimeoutError, WireError, asyncio.IncompleteReadError):
        pass  # VERSIONS already proves a Tor relay answered; CERTS only adds to the detail
    return Outcome(reply=b"ok", detail=detail)


async def _tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ep: Endpoint, clock: Clock,
               timeout: float) -> TlsHandshake:
    rec = TlsHandshake(t0=clock.now(), t=0.0, failure=None, ip=ep.ip, port=ep.port, sni=None, tag=ep.protocol)
    try:
        await asyncio.wait_for(writer.start_tls(tor_tls_context()), timeout)
        obj = writer.get_extra_info("ssl_object")
        if obj is not None:
            rec.tls_version = obj.version()
            rec.cipher_suite = (obj.cipher() or (None,))[0]
    except Exception as exc:  # a network failure is data
        rec.failure = classify(exc)
    rec.t = clock.now()
    return rec


class Tor(TunnelExperiment[str | None]):
    name = "tor"
    version = "0.1.0"

    def parse(self, url: str) -> tuple[Endpoint, str | None]:
        return parse_tor(url)

    async def handshake(self, ep: Endpoint, pt_args: str | None, net: MeasurementContext) -> list[Observation]:
        if pt_args is None:
            return await self._relay(ep, net)
        binary = obfs4proxy_path()
        if binary is None:
            return await self._tcp_only(ep, net)
        return await self._obfs4(ep, pt_args, binary, net)

    async def _relay(self, ep: Endpoint, net: MeasurementContext) -> list[Observation]:
        clock = net.clock
        log = net.packet_log()
        t0 = clock.now()
        connect, reader, writer = await net.tcp_open(ep.ip, ep.port, tag="tor", log=log)
        if reader is None or writer is None:
            return [connect, handshake_record(ep, clock, t0, log, ok=False, failure=connect.failure,
                                              detail="tcp connect failed")]
        try:
            tls = await _tls(reader, writer, ep, clock, net.timeouts.tls)
            if tls.failure is not None:
                return [connect, tls, handshake_record(ep, clock, t0, log, ok=False, failure=tls.failure,
                                                       detail="TLS handshake failed")]
            outcome = await guarded(link_handshake(reader, writer, log), net.timeouts.tls)
        finally:
            await close_writer(writer)
        return [connect, tls, handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                               failure=outcome.failure, detail=outcome.detail)]

    async def _tcp_only(self, ep: Endpoint, net: MeasurementContext) -> list[Observation]:
        clock = net.clock
        t0 = clock.now()
        log = net.packet_log()
        connect, _, writer = await net.tcp_open(ep.ip, ep.port, tag="obfs4", log=log)
        await close_writer(writer)
        rec = handshake_record(ep, clock, t0, log, ok=False, failure=connect.failure,
                               detail="obfs4proxy is not installed: TCP reachability only", tag="tcp_only")
        rec.failure = connect.failure  # TCP worked: no failure, but no handshake either
        return [connect, rec]

    async def _obfs4(self, ep: Endpoint, pt_args: str, binary: str, net: MeasurementContext) -> list[Observation]:
        clock = net.clock
        log = net.packet_log()
        t0 = clock.now()
        timeout = net.timeouts.connect + net.timeouts.tls
        # obfs4proxy reports every dial error as "general failure": a direct TCP connect first
        # says whether the bridge's port is reachable at all (refused, reset, silent).
        connect, _, probe_writer = await net.tcp_open(ep.ip, ep.port, tag="obfs4", log=log)
        await close_writer(probe_writer)
        if connect.failure is not None:
            return [connect, handshake_record(ep, clock, t0, log, ok=False, failure=connect.failure,
                                              detail="tcp connect failed")]
        try:
            async with obfs4_client(binary, net.timeouts.connect) as client:
                reader, writer = await asyncio.open_connection(*client.socks)

                async def through_bridge() -> Outcome:
                    await socks5_connect(reader, writer, ep.ip, ep.port, pt_args)
                    log.sent(b"", "obfs4 handshake (obfs4proxy) completed")
                    await writer.start_tls(tor_tls_context())
                    return await link_handshake(reader, writer, log)

                try:
                    outcome = await guarded(through_bridge(), timeout)
                except PtError as exc:
                    outcome = Outcome(failure=exc.failure, detail=exc.detail)
                except Exception as exc:  # the TLS inside obfs4: a failure is data
                    outcome = Outcome(failure=classify(exc), detail="TLS through the bridge failed")
                finally:
                    await close_writer(writer)
        except PtError as exc:
            outcome = Outcome(failure=exc.failure, detail=exc.detail)
        return [connect, handshake_record(ep, clock, t0, log, ok=outcome.reply is not None,
                                          failure=outcome.failure, detail=outcome.detail)]
