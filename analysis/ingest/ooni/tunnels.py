"""The tunnel tests (tor, vanilla_tor, torsf, openvpn, riseupvpn, psiphon): their generic
observations plus one ``vpn`` handshake per endpoint or bootstrap."""

from __future__ import annotations

from typing import Any

from analysis.ingest.ooni.common import Observations, convert_generic
from analysis.ingest.ooni.fields import (
    BodyStats,
    as_float,
    as_int,
    as_list,
    map_failure,
    split_endpoint,
    times,
)
from probe.schema import (
    UNKNOWN_FAILURE_PREFIX,
    VpnHandshake,
    VpnPacket,
)


def _vpn(
    protocol: str, endpoint: str, failure: Any, *, transport: str = "tcp", ok: bool | None = None,
    t0: float = 0.0, t: float = 0.0, detail: str | None = None, packets: list[VpnPacket] | None = None,
) -> VpnHandshake:
    ip, port = split_endpoint(endpoint) if endpoint else ("", 0)
    mapped = map_failure(failure)
    return VpnHandshake(
        t0=t0, t=t, failure=mapped, protocol=protocol, endpoint=endpoint, ip=ip, port=port,
        transport=transport, handshake_ok=(mapped is None) if ok is None else ok,
        packets=packets or [], detail=detail,
    )


_TOR_PROTOCOLS = {"or_port": "tor", "or_port_dirauth": "tor", "dir_port": "tor_dirport", "obfs4": "obfs4"}


def convert_tor(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    targets = tk.get("targets")
    items = targets.items() if isinstance(targets, dict) else enumerate(as_list(targets))
    for name, target in items:
        if not isinstance(target, dict):
            continue
        proto = _TOR_PROTOCOLS.get(str(target.get("target_protocol")), str(target.get("target_protocol") or "tor"))
        address = str(target.get("target_address") or name)
        obs.vpn.append(_vpn(proto, address, target.get("failure"), detail=target.get("target_name") or str(name)))
    return obs


def convert_tor_bootstrap(doc: dict[str, Any], tk: dict[str, Any]) -> Observations:
    """vanilla_tor / torsf: one bootstrap of a whole tor client, no single endpoint."""
    protocol = {"torsf": "snowflake"}.get(str(doc.get("test_name")), "tor")
    failure = tk.get("failure") or (tk.get("error") if tk.get("success") is False else None)
    if failure is None and tk.get("success") is False:
        failure = "unknown_failure:bootstrap_failed"
    detail = " ".join(
        f"{k}={tk[k]}" for k in ("bootstrap_time", "tor_progress", "tor_progress_summary", "transport_name", "rendezvous_method")
        if tk.get(k) is not None
    )
    t = as_float(tk.get("bootstrap_time"))
    return Observations(vpn=[_vpn(protocol, "", failure, t=t, ok=failure is None, detail=detail or None)])


def _openvpn_packets(events: Any) -> dict[Any, list[VpnPacket]]:
    by_tx: dict[Any, list[VpnPacket]] = {}
    for ev in as_list(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("packet"), dict):
            continue
        pkt = ev["packet"]
        by_tx.setdefault(ev.get("transaction_id"), []).append(
            VpnPacket(
                t=as_float(ev.get("t")),
                direction="sent" if ev.get("operation") == "packet_out" else "received",
                size=as_int(pkt.get("payload_size")) or 0,
                summary=str(pkt.get("opcode") or "") or None,
            )
        )
    return by_tx


def convert_openvpn(doc: dict[str, Any], tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    handshakes = [h for h in as_list(tk.get("openvpn_handshake")) if isinstance(h, dict)]
    packets = _openvpn_packets(tk.get("network_events"))
    for h in handshakes:
        endpoint = f"{h.get('ip')}:{h.get('port')}" if h.get("ip") else str(h.get("endpoint") or "")
        t0, t = times(h)
        obs.vpn.append(
            _vpn("openvpn", endpoint, h.get("failure"), transport=str(h.get("transport") or "udp"), t0=t0, t=t,
                 packets=packets.get(h.get("transaction_id")), detail=h.get("provider"))
        )
    if not handshakes:
        # Older openvpn (2022) and openvpn_client_test (2016): one outcome for the whole run.
        endpoint = str(tk.get("remote") or "")
        failure = tk.get("failure")
        if failure is None and tk.get("success") is False:
            failure = "unknown_failure:handshake_failed"
        obs.vpn.append(
            _vpn(str(tk.get("vpn_protocol") or "openvpn"), endpoint, failure, transport=str(tk.get("transport") or "udp"),
                 t=as_float(tk.get("bootstrap_time")), detail=tk.get("provider") or tk.get("obfuscation"))
        )
    return obs


def convert_riseupvpn(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    tcp_failures = {(c.ip, c.port): c.failure for c in obs.tcp}
    for gw in as_list(tk.get("failing_gateways")):
        if not isinstance(gw, dict):
            continue
        endpoint = f"{gw.get('IP') or gw.get('ip')}:{gw.get('Port') or gw.get('port')}"
        ip, port = split_endpoint(endpoint)
        failure = tcp_failures.get((ip, port)) or UNKNOWN_FAILURE_PREFIX + "gateway_unreachable"
        obs.vpn.append(_vpn(str(gw.get("Transport") or gw.get("transport_type") or "openvpn"), endpoint, failure))
    return obs


def convert_psiphon(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    obs.vpn.append(_vpn("psiphon", "", tk.get("failure"), t=as_float(tk.get("bootstrap_time")),
                        detail=f"bootstrap_time={tk.get('bootstrap_time')}"))
    return obs
