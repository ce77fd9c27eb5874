"""HTTP/3 over QUIC in the netns lab (tests/netns/quic_lab.py): real aioquic HTTP/3 and nginx
sites, a censor that drops or rejects UDP 443 for one host, drops QUIC Initials with one SNI
(decrypting them inline), or resets TCP 443 while QUIC passes; traps: another SNI on the
Initial-filtered address, a site without QUIC (refusing UDP 443, or dropping it and advertising
no h3: the probe stops waiting for QUIC), an uncensored site. Prints the truth-vs-verdict
table; precision and recall must be 1.0 with no false positive.

The QUIC Initial filter's parsing is also tested here without root (a real aioquic Initial).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .scoring import Truth, render, score

# --------------------------------------------------------------------------- the filter, no root


def _client_initial(sni: str) -> bytes:
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=sni))
    conn.connect(("192.0.2.1", 443), now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def test_the_initial_filter_reads_the_sni_of_a_real_initial() -> None:
    from .quic_dpi import initial_sni

    assert initial_sni(_client_initial("blocked.quic.lab.test")) == "blocked.quic.lab.test"
    assert initial_sni(_client_initial("other.quic.lab.test")) == "other.quic.lab.test"
    assert initial_sni(b"\x00" * 1200) is None  # not QUIC
    garbled = bytearray(_client_initial("blocked.quic.lab.test"))
    garbled[100] ^= 0xFF  # inside the protected payload: the AEAD tag no longer verifies
    assert initial_sni(bytes(garbled)) is None


def test_the_filter_drops_the_blocked_sni_and_its_flow_only() -> None:
    import struct

    from .quic_dpi import QuicFilter

    def ip_udp(payload: bytes, sport: int, dst: bytes = bytes([10, 77, 7, 13])) -> bytes:
        udp = struct.pack("!HHHH", sport, 443, 8 + len(payload), 0) + payload
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 77, 1, 2]), dst) + udp

    qf = QuicFilter(["blocked.quic.lab.test"])
    blocked = ip_udp(_client_initial("blocked.quic.lab.test"), 40000)
    other = ip_udp(_client_initial("other.quic.lab.test"), 40001)  # same address, another SNI
    assert qf.packets_for(blocked) == []
    assert qf.packets_for(other) == [other]
    later = ip_udp(b"\x40" + b"\x00" * 40, 40000)  # a short-header packet of the blocked flow
    assert qf.packets_for(later) == []
    assert qf.packets_for(ip_udp(b"\x40" + b"\x00" * 40, 40002)) != []


# --------------------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def quic_lab(request: pytest.FixtureRequest) -> Iterator[object]:
    from .conftest import entered, require_lab
    from .quic_lab import QuicLab

    require_lab(("ip", "nft", "ss", "sysctl", "dnsmasq", "nginx"))
    yield from entered(request, QuicLab())


@pytest.mark.netns
@pytest.mark.slow
def test_every_quic_scenario_gets_the_right_verdict_and_method(quic_lab: object) -> None:
    import glob

    import pyarrow.parquet as pq

    from probe.schema import row_to_record

    from .lab import cli_options
    from .quic_lab import STEP_TIMEOUT, QuicLab

    assert isinstance(quic_lab, QuicLab)
    if cli_options("run") is None:
        pytest.skip("`vantage run` is not available in this build")
    run = quic_lab.run(step=lambda msg: print(f"[netns quic lab] {msg}", flush=True))
    by_input = quic_lab.by_input()
    truths = [Truth(sc.name, url, sc.status, sc.layer, sc.description) for url, sc in by_input.items()]
    result = score(truths, run.verdicts)
    print()
    print(render(result))
    print("runtime: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items()))
    assert len(result.rows) == len(by_input)
    wrong = [
        (sc.name, v.get("status"), v.get("layer"), v.get("method"), sc.status, sc.layer, sc.method)
        for v in run.verdicts
        if (sc := by_input.get(str(v["input"]))) is not None
        and (v.get("status"), v.get("layer"), v.get("method")) != (sc.status, sc.layer, sc.method)
    ]
    assert not wrong, wrong
    assert result.precision == 1.0 and result.recall == 1.0 and not result.false_blocks

    # The records behind the verdicts: what the probe and the control saw over QUIC.
    seen: dict[tuple[str, str], object] = {}
    for ds in run.datasets:
        for path in glob.glob(f"{ds}/measurements/**/*.parquet", recursive=True):
            for row in pq.read_table(path).to_pylist():
                m = row_to_record(row)
                seen[(m.role, by_input[m.input].name)] = m
    for role in ("probe", "control"):
        open_ = seen[(role, "open")]
        [hs] = open_.quic  # type: ignore[attr-defined]
        assert hs.failure is None and hs.alpn == "h3" and hs.cert_valid is True, (role, hs)
        h3 = [h for h in open_.http if h.http_version == "HTTP/3"]  # type: ignore[attr-defined]
        assert len(h3) == 1 and h3[0].status_code == 200 and h3[0].title == "open - quic lab", (role, h3)
        # The kernel's ICMP port unreachable usually beats the HTTPS answer (one round trip
        # against several); if the answer (no Alt-Svc) comes first, the attempt is cut short.
        [refused] = seen[(role, "no-quic")].quic  # type: ignore[attr-defined]
        assert refused.failure in ("connection_refused", "interrupted"), (role, refused)
        # A site that drops UDP 443 and advertises no h3: QUIC is not waited for (no step limit).
        silent = seen[(role, "no-quic-silent")]
        assert [q.failure for q in silent.quic] == ["interrupted"], (role, silent.quic)  # type: ignore[attr-defined]
        assert silent.runtime_s is not None and silent.runtime_s < STEP_TIMEOUT, (role, silent.runtime_s)  # type: ignore[attr-defined]
        alt_svc = [x.value for hop in open_.http if hop.tag is None for x in hop.headers if x.name == "alt-svc"]  # type: ignore[attr-defined]
        assert alt_svc == ['h3=":443"; ma=86400'], (role, alt_svc)
    assert [q.failure for q in seen[("probe", "udp-drop")].quic] == ["generic_timeout"]  # type: ignore[attr-defined]
    assert [q.failure for q in seen[("probe", "initial-sni")].quic] == ["generic_timeout"]  # type: ignore[attr-defined]
    assert [q.failure for q in seen[("control", "initial-sni")].quic] == [None]  # type: ignore[attr-defined]
    assert [q.failure for q in seen[("probe", "tcp-blocked")].quic] == [None]  # type: ignore[attr-defined]
    log = (quic_lab.topo.workdir / "quic-dpi.log").read_text()
    assert "sni=initial-sni.quic.lab.test -> drop" in log and "other-sni" not in log
