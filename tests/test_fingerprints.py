"""Blockpage fingerprints: the real OONI files load completely, known examples match, the fast
matcher agrees with plain matching, and a bad row is reported without stopping the load."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from analysis.fingerprints import (
    PROJECT_FINGERPRINTS,
    Fingerprint,
    FingerprintError,
    HttpMatcher,
    load_file,
    load_fingerprints,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fingerprints"
HEADER = "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,source,exp_url,notes\n"


def rows_in(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def test_real_ooni_files_load_completely() -> None:
    fps = load_fingerprints([SHARED / "fingerprints_dns.csv", SHARED / "fingerprints_http.csv"])
    assert fps.problems == []
    own = rows_in(PROJECT_FINGERPRINTS)
    assert len(fps) == own + rows_in(SHARED / "fingerprints_dns.csv") + rows_in(SHARED / "fingerprints_http.csv")
    assert len(fps.dns) >= 226 and len(fps.http) >= 1729
    locations = {f.location for f in fps.fingerprints}
    assert {"dns", "body", "header.location", "header.server", "header.via"} <= locations
    assert {f.pattern_type for f in fps.fingerprints} == {"full", "prefix", "contains", "regexp"}


def test_known_ooni_examples_match() -> None:
    fps = load_fingerprints([SHARED / "fingerprints_dns.csv", SHARED / "fingerprints_http.csv"], include_project=False)
    assert fps.match_dns("8.7.198.45").name == "ooni.cn_0"  # type: ignore[union-attr]
    assert fps.match_dns("restricted.tri.co.id.").name == "ooni.id_41"  # type: ignore[union-attr]  # a CNAME
    assert fps.match_dns("93.184.216.34") is None
    m = fps.http_matcher
    assert m.match_body("<html>... Blocked by ContentKeeper ...</html>").name == "ooni.au_2"  # type: ignore[union-attr]
    assert m.match_body("<html><p>Sorry, but the URL you are requesting is prohibited!</p></html>") is not None
    assert m.match_headers([("Location", "https://internet.mts.by/blocked/?x=1")]).name == "ooni.by_2"  # type: ignore[union-attr]
    assert m.match_headers([("Server", "Protected by WireFilter 8000")]).name == "ooni.ae_0"  # type: ignore[union-attr]
    # A header fingerprint is for its header only; an ordinary page matches nothing.
    assert m.match_headers([("X-Other", "https://internet.mts.by/blocked/")]) is None
    assert m.match_body("<html><title>Example Domain</title><body>Hello</body></html>") is None


def test_fast_matcher_agrees_with_plain_matching() -> None:
    fps = [
        Fingerprint("c", "body", "contains", "censored!"),
        Fingerprint("p", "body", "prefix", "<html>BLOCK"),
        Fingerprint("f", "body", "full", "exactly this"),
        Fingerprint("r", "body", "regexp", r"blocked by [a-z]+ order"),
        Fingerprint("h", "header.server", "full", "Filter/1.0"),
    ]
    m = HttpMatcher(fps)
    bodies = ["a censored! b", "<html>BLOCK page", "x<html>BLOCK", "exactly this", "exactly this!", "blocked by court order",
              "nothing to see"]
    for body in bodies:
        hit = m.match_body(body)
        slow = next((f for f in fps if f.location == "body" and f.matches(body)), None)
        assert (hit.name if hit else None) == (slow.name if slow else None), body
    assert m.match_headers([("server", "Filter/1.0")]).name == "h"  # type: ignore[union-attr]
    assert m.match_headers([("server", "Filter/1.0 extra")]) is None


def test_bad_rows_are_reported_not_fatal(tmp_path: Path) -> None:
    f = tmp_path / "fp.csv"
    f.write_text(
        HEADER
        + "good,isp,,body,contains,Access denied by law,8,XX,me,,\n"
        + "badre,isp,,body,regexp,blocked (by,5,XX,me,,\n"
        + "badloc,isp,,cookie,full,x,5,XX,me,,\n"
        + "badtype,isp,,body,fuzzy,x,5,XX,me,,\n"
        + "noconf,isp,,dns,full,10.1.1.1,high,XX,me,,\n",
        encoding="utf-8",
    )
    fps = load_file(f)
    assert [x.name for x in fps.fingerprints] == ["good"]
    assert len(fps.problems) == 4
    assert "fp.csv:3 (badre): bad regexp" in fps.problems[0]
    assert "unknown location_found" in fps.problems[1] and "unknown pattern_type" in fps.problems[2]
    assert fps.fingerprints[0].confidence == 0.8 and fps.fingerprints[0].expected_countries == ("XX",)


def test_unusable_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="cannot read"):
        load_file(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(FingerprintError, match="missing columns"):
        load_file(other)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FingerprintError):
        load_file(binary)


def test_project_file_is_in_the_ooni_format() -> None:
    with open(PROJECT_FINGERPRINTS, newline="", encoding="utf-8") as fh:
        assert fh.readline() == HEADER
    fps = load_file(PROJECT_FINGERPRINTS)
    assert fps.problems == [] and len(fps) >= 1
    page = "<h1>Access Denied</h1><p>This request cannot be served in your jurisdiction.</p>"
    assert fps.http_matcher.match_body(page).name == "vantage.netem_blockpage"  # type: ignore[union-attr]
