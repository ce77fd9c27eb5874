"""One OONI measurement (a decoded JSON object) as Vantage Measurements: the dispatch by
test name to one module per test family (common, web_connectivity, tunnels, stun_reachability).

web_connectivity gets a probe row and, when the test helper answered, a ``role = control``
row; tunnel tests (tor, vanilla_tor, torsf, openvpn, riseupvpn, psiphon, stunreachability)
get ``vpn`` observations; the messaging tests (signal, telegram, whatsapp, facebook_messenger)
get their observations tagged by app function (messaging.py); every other test keeps its
generic DNS/TCP/TLS/HTTP observations.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from analysis.ingest.ooni.common import (
    ID_NAMESPACE,
    NO_REPORT_ID,
    Converted,
    NotAMeasurement,
    Observations,
    _merge,
    base_record,
    convert_generic,
    generic,
    measurement_id,
    origin_key,
)
from analysis.ingest.ooni.fields import (
    BodyStats,
    is_public_ip,
    replace,
)
from analysis.ingest.ooni.messaging import TEST_NAMES as MESSAGING_TESTS
from analysis.ingest.ooni.messaging import convert_messaging
from analysis.ingest.ooni.stun_reachability import convert_stun
from analysis.ingest.ooni.tunnels import (
    convert_openvpn,
    convert_psiphon,
    convert_riseupvpn,
    convert_tor,
    convert_tor_bootstrap,
)
from analysis.ingest.ooni.web_connectivity import control_observations, has_control, unrecorded_hop
from probe.schema import (
    UNKNOWN_FAILURE_PREFIX,
    Measurement,
)

# --------------------------------------------------------------------------- entry point

_TUNNELS: dict[str, Callable[[dict[str, Any], BodyStats, tuple[str, ...]], Observations]] = {
    "tor": convert_tor,
    "riseupvpn": convert_riseupvpn,
    "psiphon": convert_psiphon,
    "stunreachability": convert_stun,
    "stun_reachability": convert_stun,
}


def _apply(record: Measurement, obs: Observations) -> Measurement:
    record.dns, record.tcp, record.tls, record.http, record.vpn = obs.dns, obs.tcp, obs.tls, obs.http, obs.vpn
    return record


def convert(doc: Any, raw: str, stats: BodyStats) -> Converted:
    """One OONI measurement as one probe row (plus a control row for web_connectivity)."""
    if not isinstance(doc, dict) or not doc.get("test_name"):
        raise NotAMeasurement("not an OONI measurement (no test_name)")
    test_name = str(doc["test_name"])
    probe = base_record(doc, origin_key(doc))
    probe_ip = doc.get("probe_ip")
    # OONI scrubs the probe's address itself; if an unscrubbed one slipped in, it never
    # reaches a Vantage file (the probe_ip field itself is never stored).
    scrub = (str(probe_ip),) if isinstance(probe_ip, str) and is_public_ip(probe_ip) else ()
    tk = doc.get("test_keys")
    if not isinstance(tk, dict):
        probe.failure = UNKNOWN_FAILURE_PREFIX + "missing_test_keys"
        return Converted([probe], test_name, missing_test_keys=True)
    if test_name == "web_connectivity":
        _apply(probe, generic(tk, stats, scrub))
        missing = unrecorded_hop(tk, probe.http)
        if missing is not None:
            probe.http.append(missing)
        if has_control(tk):
            # Same input, run and time as the probe row; nothing of the probe's network.
            control = replace(
                probe, measurement_id=str(uuid.uuid5(ID_NAMESPACE, probe.measurement_id + ":control")),
                role="control", control_for=probe.measurement_id, runtime_s=None, platform=None,
                software_version="ooni-test-helper", probe_asn=None, probe_network=None, resolver_asn=None,
            )
            _apply(control, control_observations(tk["control"], probe.input, probe.dns))
            return Converted([probe, control], test_name)
        return Converted([probe], test_name, null_control=True)
    if test_name in ("vanilla_tor", "torsf"):
        obs = convert_generic(tk, stats, scrub)
        _merge(obs, convert_tor_bootstrap(doc, tk))
        return Converted([_apply(probe, obs)], test_name)
    if test_name in ("openvpn", "openvpn_client_test"):
        return Converted([_apply(probe, convert_openvpn(doc, tk, stats, scrub))], test_name)
    if test_name in MESSAGING_TESTS:
        probe.input = probe.input or test_name  # OONI's input is null; Vantage's is the app's name
        return Converted([_apply(probe, convert_messaging(doc, tk, stats, scrub))], test_name)
    handler = _TUNNELS.get(test_name, convert_generic)
    return Converted([_apply(probe, handler(tk, stats, scrub))], test_name)


__all__ = [
    "NO_REPORT_ID",
    "Converted",
    "NotAMeasurement",
    "control_observations",
    "convert",
    "has_control",
    "measurement_id",
    "origin_key",
    "unrecorded_hop",
]
