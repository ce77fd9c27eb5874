"""Property-based fuzzing of the list reader (plain and Citizen Lab CSV) and the tunnel endpoint
URL parser: whatever the bytes, only the documented error escapes (TestListError for a list that
cannot be read at all, InputError for an endpoint), and every good row survives beside bad ones.

Bounded (a fixed number of examples per property, no example database written): about 15 s on
two cores. The counts are printed at the end (pytest -s, or the -rA summary):
cases, clean errors, tracebacks (must be 0), good rows lost (must be 0).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.experiments import registry
from probe.experiments.base import InputError
from probe.experiments.ikev2 import parse_ikev2
from probe.experiments.openvpn import parse_openvpn
from probe.experiments.tor import parse_tor
from probe.experiments.tunnels.endpoints import decode_key, encode_key, parse_endpoint
from probe.experiments.wireguard import parse_wireguard
from probe.testlists import CITIZENLAB_COLUMNS, TestListError, load_list, load_lists

COUNTS: Counter[str] = Counter()
FUZZ = settings(
    max_examples=150,
    deadline=None,  # the machine is shared; time is bounded by the example count instead
    database=None,  # never write .hypothesis/ into the checkout
    derandomize=True,  # the same cases every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The whole-file properties build and read a file per example: fewer of them keep the suite
# near 15 s on a shared two-core machine.
FUZZ_FILES = settings(FUZZ, max_examples=70)


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print(
        f"\nfuzz lists/endpoints: cases {COUNTS['cases']}, clean errors {COUNTS['clean_errors']}, "
        f"tracebacks {COUNTS['tracebacks']}, good rows lost {COUNTS['good_lost']}, "
        f"good rows kept {COUNTS['good_kept']}, bad rows reported {COUNTS['bad_reported']}"
    )
    assert COUNTS["tracebacks"] == 0 and COUNTS["good_lost"] == 0


# ----------------------------------------------------------------------------- strategies

_label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
good_url = st.builds(
    lambda scheme, labels, port, path: f"{scheme}://{'.'.join(labels)}.example{port}/{path}",
    st.sampled_from(["http", "https"]),
    st.lists(_label, min_size=1, max_size=3),
    st.sampled_from(["", ":8080", ":443"]),
    st.from_regex(r"[a-z0-9_/-]{0,20}", fullmatch=True),
)
# Anything a hostile or broken list may hold on one line: controls, NUL, quotes, commas, BOMs,
# lone surrogates are impossible in a file, so the text is encoded and mixed with raw bytes.
junk_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=300
)
junk_line = st.one_of(
    junk_text.map(lambda s: s.encode("utf-8")),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
    st.sampled_from([
        b"http://", b"https://[::1", b"https://a..b/", b"ftp://x.example/", b"url,category_code",
        b"\xef\xbb\xbfhttps://bom.example/", b"https://x.example:99999/", b"https://" + b"a" * 70 + b".example/",
        b"http://" + b"a" * 140_000, b"\x00\x00\x00", b'"unterminated', b"#comment", b"   ",
    ]),
)
category = st.sampled_from(["NEWS", "HUMR", "POLR", "", "news", "XXXXXXXX"])


def _write(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with open(fd, "wb") as fh:
        fh.write(data)
    return Path(name)


def _load(path: Path) -> tuple[list, list] | None:  # type: ignore[type-arg]
    """load_list under the counters: the documented error is clean, anything else a traceback."""
    COUNTS["cases"] += 1
    try:
        return load_list(path)
    except TestListError:
        COUNTS["clean_errors"] += 1
        return None
    except Exception:
        COUNTS["tracebacks"] += 1
        raise
    finally:
        path.unlink(missing_ok=True)


def _count_kept(good: list[tuple[int, str]], entries: list) -> None:  # type: ignore[type-arg]
    got = {(e.line, e.url) for e in entries}
    lost = [g for g in good if g not in got]
    COUNTS["good_lost"] += len(lost)
    COUNTS["good_kept"] += len(good) - len(lost)
    assert not lost, lost


# ----------------------------------------------------------------------------- plain lists


@pytest.mark.slow  # hypothesis examples: ~7 s
@FUZZ_FILES
@given(st.lists(st.tuples(st.booleans(), good_url, junk_line), min_size=1, max_size=30), st.sampled_from([b"\n", b"\r\n"]))
def test_plain_list_good_lines_survive_any_junk(rows: list[tuple[bool, str, bytes]], eol: bytes) -> None:
    lines: list[bytes] = [b"# fuzzed list"]  # a first line that is not a CSV header
    good: list[tuple[int, str]] = []
    seen: set[str] = set()
    for is_good, url, junk in rows:
        if is_good and url not in seen:
            seen.add(url)
            lines.append(url.encode())
            good.append((len(lines), url))
        else:
            lines.append(junk)
    got = _load(_write(eol.join(lines) + eol, ".txt"))
    assert got is not None, "a plain list always reads"
    entries, problems = got
    COUNTS["bad_reported"] += len(problems)
    _count_kept(good, entries)
    for p in problems:
        assert 1 <= p.line <= len(lines) and len(str(p)) < 2000  # a bounded, located problem line


@FUZZ
@given(st.binary(max_size=4000), st.sampled_from([".txt", ".csv", ""]))
def test_any_bytes_are_a_list_or_one_clean_error(data: bytes, suffix: str) -> None:
    got = _load(_write(data, suffix))
    if got is not None:
        entries, problems = got
        assert all(e.url and e.line >= 1 for e in entries)


# ----------------------------------------------------------------------------- Citizen Lab CSV


bad_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@FUZZ_FILES
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("good"), good_url, category),
            st.tuples(st.just("bad_url"), bad_cell, category),  # any text where the URL goes
            st.tuples(st.just("bad_width"), good_url, st.integers(1, 9)),  # too few or many columns
            st.tuples(st.just("huge"), good_url, st.just(140_000)),  # a cell over the csv field limit
        ),
        min_size=1,
        max_size=25,
    ),
    st.booleans(),
)
def test_citizenlab_good_rows_survive_bad_ones(rows: list[tuple[str, str, object]], bom: bool) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # the upstream files' own dialect
    w.writerow(CITIZENLAB_COLUMNS)
    line = 2
    good: list[tuple[int, str]] = []
    seen: set[str] = set()
    for kind, url, extra in rows:
        if kind == "good":
            cells = [url, str(extra), "desc, with \"quotes\"\nand a newline", "2026-11-22", "fuzz", ""]
            if url not in seen:
                seen.add(url)
                good.append((line, url))
            else:
                kind = "dup"  # a duplicate is reported, not kept twice
        elif kind == "bad_url":
            cells = [str(url), str(extra), "", "", "", ""]
        elif kind == "bad_width":
            width = int(extra)  # type: ignore[call-overload]
            cells = [url, *(["x"] * (width - 1))] if width != len(CITIZENLAB_COLUMNS) else [url]
        else:
            cells = [url, "NEWS", "z" * int(extra), "", "", ""]  # type: ignore[call-overload]
        w.writerow(cells)
        line += sum(c.count("\n") + c.count("\r") - c.count("\r\n") for c in cells) + 1
    data = ("\ufeff" if bom else "") + buf.getvalue()
    got = _load(_write(data.encode("utf-8"), ".csv"))
    assert got is not None, "a list with a Citizen Lab header always reads"
    entries, problems = got
    COUNTS["bad_reported"] += len(problems)
    # A bad-URL cell may by chance be a good URL: it is then kept, never an error.
    _count_kept(good, entries)


# ----------------------------------------------------------------------------- endpoints

_PARSERS = (parse_openvpn, parse_wireguard, parse_tor, parse_ikev2)
_SCHEMES = ["openvpn", "wireguard", "tor", "obfs4", "ikev2", "http", "", "OPENVPN"]
ip_text = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.sampled_from(["", "[", "[::1", "999.1.1.1", "host.example", "[fe80::1%eth0]", "1.2.3.4:5"]),
)
port_text = st.one_of(st.integers(0, 70_000).map(lambda p: f":{p}"), st.sampled_from(["", ":", ":-1", ":x", ":1 2"]))
key_value = st.tuples(
    st.sampled_from(["transport", "tls_auth", "key_direction", "auth", "public_key", "private_key", "preshared_key",
                     "cert", "iat_mode", "nope", ""]),
    st.one_of(junk_text, st.binary(max_size=64).map(encode_key), st.sampled_from(["udp", "tcp", "0", "1", "SHA256"])),
)
endpoint_url = st.builds(
    lambda scheme, ip, port, kvs, raw: f"{scheme}://{ip}{port}/?" + "&".join(
        f"{quote(k)}={v if raw else quote(v, safe='')}" for k, v in kvs
    ),
    st.sampled_from(_SCHEMES), ip_text, port_text, st.lists(key_value, max_size=5), st.booleans(),
)


@FUZZ
@given(st.one_of(endpoint_url, junk_text))
def test_endpoint_parsers_raise_only_input_error(url: str) -> None:
    for parse in _PARSERS:
        COUNTS["cases"] += 1
        try:
            parse(url)
        except InputError as exc:
            COUNTS["clean_errors"] += 1
            assert url[:20] in str(exc) or len(str(exc)) < 2000
        except Exception:
            COUNTS["tracebacks"] += 1
            raise
    # The experiments' own input check answers with a reason, never an exception.
    for name in ("openvpn", "wireguard", "tor", "ikev2", "web_connectivity"):
        COUNTS["cases"] += 1
        try:
            problem = registry.get(name).input_problem(url)
        except Exception:
            COUNTS["tracebacks"] += 1
            raise
        assert problem is None or isinstance(problem, str)


@FUZZ
@given(st.ip_addresses(), st.integers(1, 65535), st.binary(min_size=32, max_size=32), st.sampled_from(["udp", "tcp"]))
def test_good_endpoints_parse_to_what_they_say(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                                               key: bytes, transport: str) -> None:
    """Trap beside the junk: a well-formed endpoint is never rejected, and parses exactly."""
    COUNTS["cases"] += 1
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    url = f"openvpn://{host}:{port}/?transport={transport}&tls_auth={encode_key(key * 8)}&key_direction=1"
    ep = parse_endpoint(url, ("openvpn",), transports=("udp", "tcp"), allowed=("tls_auth", "key_direction"))
    assert (ep.ip, ep.port, ep.transport) == (str(ip), port, transport)
    assert decode_key(url, "tls_auth", ep.params["tls_auth"]) == key * 8
    COUNTS["good_kept"] += 1


def test_lists_merged_keep_the_first_of_duplicates(tmp_path: Path) -> None:
    """Not random: the cross-file dedupe that the properties above rely on for 'kept'."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("https://x.example/\n", encoding="utf-8")
    b.write_text("https://x.example/\nhttps://y.example/\n", encoding="utf-8")
    entries, problems = load_lists([a, b])
    assert [(e.url, e.line) for e in entries] == [("https://x.example/", 1), ("https://y.example/", 2)]
    assert len(problems) == 1 and "duplicate of" in problems[0].message
