"""OONI failure values onto the closed set: OONI's names, Go error strings, false/true/"", and
every failure string that occurs anywhere in ../shared/data/ooni/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from analysis.ingest.ooni.fields import map_failure
from analysis.ingest.ooni.read import iter_documents
from probe.schema import FAILURES, UNKNOWN_FAILURE_PREFIX, is_valid_failure
from tests.support.paths import SHARED_DATA

OONI = SHARED_DATA / "ooni"

# Failure strings of the shared data that deliberately stay unknown_failure:<detail>, reviewed
# one by one. The closed set names network causes; none of these is one it has a name for.
REVIEWED_UNKNOWN = {
    # netxlite: "use of closed network connection", i.e. the probe closed its own socket from
    # another goroutine (df-007: "you can generally ignore this error"). Neither a network
    # failure nor the run cancelling the step.
    "connection_already_closed": "unknown_failure:connection_already_closed",
    # ooniprobe-legacy / the legacy test helper: any getaddrinfo failure, NXDOMAIN, no address
    # or timeout alike (netem scenario 49 has it for a name with no address): naming one member
    # would invent the cause.
    "dns_lookup_error": "unknown_failure:dns_lookup_error",
    # A response arrived; OONI declined to follow its Location (no host in it). An HTTP-level
    # observation that the analyzer reads from the hop itself, not a transport failure.
    "http_invalid_redirect_location_host": "unknown_failure:http_invalid_redirect_location_host",
    # whatsapp's web check: a response arrived with a status the test did not expect.
    "http_unexpected_status_code": "unknown_failure:http_unexpected_status_code",
    # The test helper's "something failed" with no further detail.
    "unknown_error": "unknown_failure:unknown_error",
    # openvpn: the local openvpn client process exited; a tool failure, not the network's.
    "unknown_failure openvpn_exited_unexpectedly": "unknown_failure:openvpn_exited_unexpectedly",
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # OONI (netxlite, Measurement Kit, ooniprobe-legacy, the test helper)
        ("dns_lookup_error", "unknown_failure:dns_lookup_error"),
        ("android_dns_cache_no_data", "dns_nxdomain"),
        ("dns_nxdomain_error", "dns_nxdomain"),
        ("dns_no_answer", "dns_no_answer"),
        ("dns_servfail_error", "dns_servfail"),
        ("dns_refused_error", "dns_refused"),
        ("generic_timeout_error", "generic_timeout"),
        ("ssl_invalid_hostname", "ssl_invalid_hostname"),
        ("ssl_unknown_authority", "ssl_unknown_authority"),
        ("ssl_invalid_certificate", "ssl_invalid_certificate"),
        ("eof_error", "eof"),
        ("connection_reset", "connection_reset"),
        ("connection_refused", "connection_refused"),
        ("host_unreachable", "host_unreachable"),
        ("network_unreachable", "network_unreachable"),
        ("timed_out", "generic_timeout"),
        ("interrupted", "interrupted"),
        # Go error strings, bare and inside OONI's "unknown_failure: <Go error>"
        ("dial tcp 10.0.0.1:443: connect: no route to host", "host_unreachable"),
        ("unknown_failure: dial tcp [scrubbed]: connect: no route to host", "host_unreachable"),
        ("dial tcp [::1]:443: connect: network is unreachable", "network_unreachable"),
        ("read tcp 10.0.0.2:5555->10.0.0.1:443: read: connection reset by peer", "connection_reset"),
        ("dial tcp 10.0.0.1:80: connect: connection refused", "connection_refused"),
        ("dial tcp 10.0.0.1:80: i/o timeout", "generic_timeout"),
        ("context deadline exceeded", "generic_timeout"),
        ("net/http: TLS handshake timeout", "generic_timeout"),
        ("EOF", "eof"),
        ("unexpected EOF", "eof"),
        ("Get http://199.58.81.140:80/tor/status-vote/current/consensus.z: eof_error", "eof"),
        ("x509: certificate signed by unknown authority", "ssl_unknown_authority"),
        ("tls: failed to verify certificate: x509: certificate signed by unknown authority", "ssl_unknown_authority"),
        ("x509: certificate is valid for a.example, b.example, not c.example", "ssl_invalid_hostname"),
        ("x509: certificate has expired or is not yet valid: current time 2024-01-01", "ssl_invalid_certificate"),
        ("remote error: tls: handshake failure", "tls_handshake_failure"),
        ("tls: first record does not look like a TLS handshake", "tls_handshake_failure"),
        ("lookup example.com: no such host", "dns_nxdomain"),
        ("lookup example.com on 10.0.0.53:53: server misbehaving", "dns_server_misbehaving"),
        ("unknown_failure: stopped after 10 redirects", "http_too_many_redirects"),
        # the probe cancelled its own step: the run, not the network
        ("context canceled", "interrupted"),
        ("dial tcp 10.0.0.1:443: operation was canceled", "interrupted"),
        ("unknown_failure: context canceled", "interrupted"),
        # not failure strings at all
        (None, None),
        (False, None),
        ("", None),
        ("   ", None),
        (True, "unknown_failure:unspecified"),
        # unknown stays unknown, with its detail
        ("quic_incompatible_version", "unknown_failure:quic_incompatible_version"),
        ("unknown_failure: something new", "unknown_failure:something new"),
        ("unknown_failure", "unknown_failure:unknown"),
        (17, "unknown_failure:17"),
    ],
)
def test_failure_values_map_onto_the_closed_set(value: Any, expected: str | None) -> None:
    got = map_failure(value)
    assert got == expected
    assert is_valid_failure(got)


def test_false_is_never_an_unknown_failure() -> None:
    """The bug seen: OONI's `"failure": false` became `unknown_failure:False`."""
    assert map_failure(False) is None
    assert "False" not in str(map_failure(True))


def test_a_long_unknown_failure_is_bounded() -> None:
    got = map_failure("weird " * 1000)
    assert got is not None and got.startswith(UNKNOWN_FAILURE_PREFIX) and len(got) < 600


def _failures(value: Any, in_test_keys: bool = False) -> Iterator[Any]:
    """Every failure value in a JSON value: keys named `failure` or ending in `_failure`, and
    any key containing "failure" under test_keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if name == "failure" or name.endswith("_failure") or (in_test_keys and "failure" in name):
                if not isinstance(item, (dict, list)):
                    yield item
            yield from _failures(item, in_test_keys or name == "test_keys")
    elif isinstance(value, list):
        for item in value:
            yield from _failures(item, in_test_keys)


def shared_failure_values() -> set[Any]:
    values: set[Any] = set()
    files = sorted(p for p in OONI.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert len(files) >= 50, f"expected the shared OONI data in {OONI}"
    for path in files:
        for raw in iter_documents(path):
            assert raw.error is None, (path, raw.error)
            values.update(_failures(raw.doc))
    return values


def test_every_failure_string_in_the_shared_data_maps_onto_the_closed_set() -> None:
    values = shared_failure_values()
    strings = {v for v in values if isinstance(v, str)}
    assert len(strings) >= 20  # the walk found the data's failures, not nothing
    assert False in values  # the `"failure": false` case the bug came from is in the data
    surprises = {}
    for value in values:
        got = map_failure(value)
        assert is_valid_failure(got), (value, got)
        if got is not None and got not in FAILURES and REVIEWED_UNKNOWN.get(value) != got:
            surprises[value] = got
    assert not surprises, f"unreviewed unknown failures (map them or add them to REVIEWED_UNKNOWN): {surprises}"
    # The reviewed table lists only what the data holds, so it cannot rot unnoticed.
    assert set(REVIEWED_UNKNOWN) <= strings, set(REVIEWED_UNKNOWN) - strings
    mapped = sorted({map_failure(v) for v in strings} & FAILURES)
    print(f"\n{len(strings)} distinct failure strings in the shared OONI data: "
          f"{len(strings) - len(REVIEWED_UNKNOWN)} onto {len(mapped)} members of the closed set, "
          f"{len(REVIEWED_UNKNOWN)} reviewed unknown")


def test_failure_inside_test_keys_of_every_shape_is_seen() -> None:
    """The walk itself: a trap against a collector that finds nothing."""
    doc = {"test_keys": {"x_control_failure": "a", "deep": [{"failure": "b"}], "dns_experiment_failure": "c",
                         "failures_seen": "d"}, "failure": None}
    assert set(_failures(doc)) == {"a", "b", "c", "d", None}
    assert json.dumps(doc)  # plain JSON
