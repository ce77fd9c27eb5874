"""Alt-Svc parsing (RFC 7838): which answers advertise HTTP/3."""

from __future__ import annotations

import pytest

from probe.net.altsvc import advertises_h3, parse


@pytest.mark.parametrize(("values", "h3"), [
    (['h3=":443"; ma=86400'], True),
    (['h3-29=":443"; ma=86400, h3-27=":443"'], True),  # IETF drafts
    (['h2=":443"; ma=2592000, h3=":443"; ma=2592000'], True),  # h3 not first
    (['h2=":443"', 'h3="alt.example:8443"'], True),  # several field lines form one list
    (['h3%2D29=":443"'], True),  # the protocol-id is percent-encoded
    (['quic=":443"; ma=2592000; v="46,43"'], False),  # Google QUIC, not HTTP/3
    (['h3-Q050=":443"; ma=2592000'], False),  # gQUIC version ids
    (['h2=":443"'], False),
    (["clear"], False),
    (['h3=":443"', "clear"], False),  # clear invalidates everything of the origin
    (['h3=":443"; ma=0'], False),  # stale on arrival: no client uses it
    (['h3x=":443"', 'h33=":443"'], False),
    (['h2="a,b:443"; persist=1'], False),  # a comma inside the quoted authority is not a separator
    ([], False),
    ([",, ;=", "h3"], False),  # malformed entries are skipped
])
def test_advertises_h3(values: list[str], h3: bool) -> None:
    assert advertises_h3(values) is h3


def test_parse_keeps_authority_and_parameters() -> None:
    [svc] = parse(['h3="alt.example:8443"; ma=3600; persist=1']) or []
    assert (svc.protocol, svc.authority, svc.params) == ("h3", "alt.example:8443", {"ma": "3600", "persist": "1"})
    assert parse(["clear"]) is None
