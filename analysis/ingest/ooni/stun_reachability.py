"""stunreachability: the generic observations plus one ``vpn`` row (protocol stun) for the server."""

from __future__ import annotations

from typing import Any

from analysis.ingest.ooni.common import Observations, convert_generic
from analysis.ingest.ooni.fields import (
    BodyStats,
    as_list,
)
from analysis.ingest.ooni.tunnels import _vpn


def convert_stun(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    address = next((str(ev["address"]) for ev in as_list(tk.get("network_events"))
                    if isinstance(ev, dict) and ev.get("operation") == "connect" and ev.get("address")), "")
    obs.vpn.append(_vpn("stun", address or str(tk.get("endpoint") or ""), tk.get("failure"), transport="udp",
                        detail=str(tk.get("endpoint") or "") or None))
    return obs
