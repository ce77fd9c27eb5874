"""Blockpage fingerprints: the real OONI and Censored Planet files load completely, known
examples match, false-positive signatures veto a match, the fast matcher agrees with plain
matching, bad rows are reported without stopping the load, and `vantage fingerprints update`
(served from loopback) feeds the default set that the verdicts use."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from analysis.db import open_datasets
from analysis.downloads import DownloadError
from analysis.fingerprints import (
    DOWNLOADS,
    PROJECT_FINGERPRINTS,
    Fingerprint,
    FingerprintError,
    HttpMatcher,
    load_cp_signatures,
    load_default_fingerprints,
    load_file,
    load_fingerprints,
    regex_literal,
    update_fingerprints,
)
from analysis.verdicts import compute_verdicts
from probe.dataset import write_records
from probe.schema import DnsAnswer, DnsQuery, HttpHeader, HttpRequest, Measurement, TcpConnect, new_uuid7
from tests.support.loopback_site import LoopbackServer
from tests.support.paths import REPO
from vantage.cli import main

DATA = REPO.parent / "shared" / "data"
SHARED = DATA / "fingerprints"
CP_DIR = DATA / "censoredplanet"
CP_BLOCKPAGES = CP_DIR / "censoredplanet__censoredplanet-analysis__pipeline__metadata__data__blockpage_signatures.json"
CP_FALSE_POSITIVES = CP_DIR / "censoredplanet__censoredplanet-analysis__pipeline__metadata__data__false_positive_signatures.json"
# What the loopback server serves under each upstream file name.
UPSTREAM_FILES = {
    "fingerprints_dns.csv": SHARED / "fingerprints_dns.csv",
    "fingerprints_http.csv": SHARED / "fingerprints_http.csv",
    "blockpage_signatures.json": CP_BLOCKPAGES,
    "false_positive_signatures.json": CP_FALSE_POSITIVES,
}
HEADER = "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,source,exp_url,notes\n"

# The Indonesian national blockpage (Internet Positif / TrustPositif) as ISPs serve it, with
# HTTP 200, in place of the site: the sentence is the one OONI's ooni.id_6 fingerprints.
ID_BLOCKPAGE = (
    "<html><head><title>Internet Positif</title></head><body><center>"
    "<p>Maaf, situs yang Anda tuju tidak dapat diakses.</p>"
    "<p>This page is blocked by <a href=http://trustpositif.kominfo.go.id>TrustPositif Kominfo</a></p>"
    "</center></body></html>"
)
# The trap: a news article about the same list (named, and the ministry linked) is not a
# blockpage. (A page linking https://trustpositif.kominfo.go.id/ itself would be: OONI's
# cp.b_nat_id_kominfo_body fingerprints that URL.)
ID_NEWS = (
    "<html><head><title>Kominfo adds 200 sites to its list</title></head><body><article>"
    "<p>The ministry's list of blocked sites, TrustPositif (Internet Positif), grew again, "
    "<a href=\"https://www.kominfo.go.id/berita\">Kominfo</a> said; this page is blocked in no network.</p>"
    f"{'<p>Jakarta reporters followed the announcement.</p>' * 20}</article></body></html>"
)


def rows_in(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def lines_in(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# --------------------------------------------------------------------------- reading files


def test_real_ooni_files_load_completely() -> None:
    fps = load_fingerprints([SHARED / "fingerprints_dns.csv", SHARED / "fingerprints_http.csv"])
    assert fps.problems == []
    own = rows_in(PROJECT_FINGERPRINTS)
    assert len(fps) == own + rows_in(SHARED / "fingerprints_dns.csv") + rows_in(SHARED / "fingerprints_http.csv")
    assert len(fps.dns) >= 226 and len(fps.http) >= 1729
    locations = {f.location for f in fps.fingerprints}
    assert {"dns", "body", "header.location", "header.server", "header.via"} <= locations
    assert {f.pattern_type for f in fps.fingerprints} == {"full", "prefix", "contains", "regexp"}


def test_real_censored_planet_files_load_completely() -> None:
    fps = load_fingerprints([CP_BLOCKPAGES, CP_FALSE_POSITIVES], include_project=False)
    assert fps.problems == []
    assert len(fps.fingerprints) == lines_in(CP_BLOCKPAGES) and len(fps.false_positives) == lines_in(CP_FALSE_POSITIVES)
    assert all(f.name.startswith("cp.") and f.pattern_type == "regexp" for f in fps.fingerprints)
    assert all(f.false_positive for f in fps.false_positives) and not any(f.false_positive for f in fps.fingerprints)
    # Header-line signatures ("Location: ...") are matched against header lines, the rest against bodies.
    assert {f.location for f in fps.fingerprints} == {"body", "headers"}
    assert [s.count for s in fps.sources] == [len(fps.fingerprints), len(fps.false_positives)]


def test_literal_signatures_match_what_their_regexp_matches() -> None:
    # The fast path turns escaped-literal regexps into Aho-Corasick words; each such word must be
    # a text its regexp matches, entirely (so nothing is lost or invented by the conversion).
    fps = load_fingerprints([CP_BLOCKPAGES, CP_FALSE_POSITIVES], include_project=False)
    converted = 0
    for f in fps.fingerprints + fps.false_positives:
        lit = regex_literal(f.pattern)
        if lit is not None:
            converted += 1
            assert re.fullmatch(f.pattern, lit, f.regex_flags), f
    assert converted > 900  # most of Censored Planet's signatures are literals
    assert regex_literal(r"fortinet\.net") == "fortinet.net"
    assert regex_literal("URL .* Sp.*er Gate") is None and regex_literal(r"a\d") is None
    assert regex_literal("blocked (by|for)") is None and regex_literal("colou?r") is None


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


def test_censored_planet_header_signature_matches_header_lines_only() -> None:
    fps = load_fingerprints([CP_BLOCKPAGES], include_project=False)
    m = fps.http_matcher
    # Lower-case names (as some records store them) are written as a raw response would be.
    hit = m.match_headers([("location", "https://notice.cuii.info/?q=1")])
    assert hit is not None and hit.name == "cp.c_isp_gr_cuii_copyright_satellite"
    assert m.match_headers([("Referer", "https://notice.cuii.info/")]) is None
    assert m.match_body("see https://notice.cuii.info for the list") is None


FP_PAGE = (
    "<html><head><title>Application Blocked</title></head><body><table><tr>"
    "<td><span>DDOS attempt was blocked.</span></td></tr></table></body></html>"
)


def test_false_positive_signature_stops_a_blockpage_match() -> None:
    # A hosting provider's DDoS-protection page (Censored Planet's x_godaddy_ddos_warning) whose
    # title also carries a phrase of Fortinet's blockpage (a_prod_fortinet_7).
    fps = load_fingerprints([CP_BLOCKPAGES, CP_FALSE_POSITIVES], include_project=False)
    m = fps.http_matcher
    assert m.false_positive([], FP_PAGE).name == "cp.x_godaddy_ddos_warning"  # type: ignore[union-attr]
    assert m.match_body(FP_PAGE) is None
    assert m.match_response([("Server", "nginx")], FP_PAGE) is None
    # The trap beside it: the same blockpage phrase without the false-positive text matches.
    real = FP_PAGE.replace("DDOS attempt was blocked.", "FortiGuard policy")
    assert m.match_body(real) is not None and m.match_response([], real) is not None
    # Without the false-positive list loaded, the DDoS page would be called a blockpage.
    only_bp = load_fingerprints([CP_BLOCKPAGES], include_project=False).http_matcher
    assert only_bp.match_body(FP_PAGE).name == "cp.a_prod_fortinet_7"  # type: ignore[union-attr]


def test_fast_matcher_agrees_with_plain_matching() -> None:
    fps = [
        Fingerprint("c", "body", "contains", "censored!"),
        Fingerprint("p", "body", "prefix", "<html>BLOCK"),
        Fingerprint("f", "body", "full", "exactly this"),
        Fingerprint("r", "body", "regexp", r"blocked by [a-z]+ order"),
        Fingerprint("l", "body", "regexp", r"court\.order\.example"),
        Fingerprint("h", "header.server", "full", "Filter/1.0"),
    ]
    m = HttpMatcher(fps)
    bodies = ["a censored! b", "<html>BLOCK page", "x<html>BLOCK", "exactly this", "exactly this!", "blocked by court order",
              "see court.order.example", "see courtXorderXexample", "nothing to see"]
    for body in bodies:
        hit = m.match_body(body)
        slow = next((f for f in fps if f.location == "body" and f.matches(body)), None)
        assert (hit.name if hit else None) == (slow.name if slow else None), body
    assert m.match_headers([("server", "Filter/1.0")]).name == "h"  # type: ignore[union-attr]
    assert m.match_headers([("server", "Filter/1.0 extra")]) is None


def test_full_sets_load_and_match() -> None:
    # Speed is measured by benchmarks/fingerprint_matching.py (no timed assertion here).
    fps = load_fingerprints([SHARED / "fingerprints_dns.csv", SHARED / "fingerprints_http.csv",
                             CP_BLOCKPAGES, CP_FALSE_POSITIVES])
    m = fps.http_matcher
    assert len(fps.http) >= 1729 + 622
    body = "<html><body>" + "lorem ipsum dolor sit amet " * 400 + "</body></html>"
    assert m.match_body(body) is None


def test_bad_rows_are_reported_as_file_line_reason(tmp_path: Path) -> None:
    f = tmp_path / "fp.csv"
    f.write_text(
        HEADER
        + "good,isp,,body,contains,Access denied by law,8,XX,me,,\n"
        + "badre,isp,,body,regexp,blocked (by,5,XX,me,,\n"
        + "badloc,isp,,cookie,full,x,5,XX,me,,\n"
        + "badtype,isp,,body,fuzzy,x,5,XX,me,,\n"
        + "noconf,isp,,dns,full,10.1.1.1,high,XX,me,,\n"
        + "good2,isp,,dns,full,10.9.9.9,5,XX,me,,\n",
        encoding="utf-8",
    )
    fps = load_file(f)
    assert [x.name for x in fps.fingerprints] == ["good", "good2"]
    assert len(fps.problems) == 4
    assert fps.problems[0].startswith(f"{f}:3: badre: bad regexp")
    assert fps.problems[1].startswith(f"{f}:4: badloc: unknown location_found")
    assert fps.problems[2].startswith(f"{f}:5: badtype: unknown pattern_type")
    assert fps.problems[3] == f"{f}:6: noconf: confidence_no_fp is not an integer"
    assert fps.fingerprints[0].confidence == 0.8 and fps.fingerprints[0].expected_countries == ("XX",)


def test_bom_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_bytes(b"\xef\xbb\xbf" + (HEADER + "bom.1,isp,,body,contains,Blocked by BOM Telecom,5,XX,me,,\n").encode())
    fps = load_file(f)
    assert fps.problems == [] and [x.name for x in fps.fingerprints] == ["bom.1"]
    j = tmp_path / "sigs_blockpage_signatures.json"
    j.write_bytes(b"\xef\xbb\xbf" + b'{"fingerprint":"bom","pattern":"Blocked by BOM"}\n')
    assert [x.name for x in load_cp_signatures(j).fingerprints] == ["cp.bom"]


def test_one_overlong_row_is_skipped_not_the_file(tmp_path: Path) -> None:
    f = tmp_path / "long.csv"
    f.write_text(
        HEADER
        + "before,isp,,body,contains,Blocked before,5,XX,me,,\n"
        + "huge,isp,,body,contains," + "x" * 200_000 + ",5,XX,me,,\n"  # over the csv module's field limit
        + "long,isp,,body,contains," + "y" * 20_000 + ",5,XX,me,,\n"  # under it, over our pattern cap
        + "\"multi\nline\",isp,,body,contains,Blocked multi,5,XX,me,,\n"
        + "after,isp,,body,contains,Blocked after,5,XX,me,,\n",
        encoding="utf-8",
    )
    fps = load_file(f)
    assert [x.name for x in fps.fingerprints] == ["before", "multi\nline", "after"]
    assert len(fps.problems) == 2
    assert fps.problems[0].startswith(f"{f}:3: ") and "field limit" in fps.problems[0]
    assert fps.problems[1] == f"{f}:4: long: pattern longer than 8192 characters"


def test_row_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    f = tmp_path / "latin1.csv"
    f.write_bytes(HEADER.encode() + b"ok,isp,,body,contains,Blocked,5,XX,me,,\n"
                  + b"bad,isp,,body,contains,Bloqu\xe9,5,XX,me,,\n" + b"ok2,isp,,body,contains,Stop,5,XX,me,,\n")
    fps = load_file(f)
    assert [x.name for x in fps.fingerprints] == ["ok", "ok2"]
    assert fps.problems == [f"{f}:3: not UTF-8 text"]


def test_unusable_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="cannot read"):
        load_file(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("url,category_code\nhttps://x.example/,NEWS\n", encoding="utf-8")  # a test list
    with pytest.raises(FingerprintError, match=rf"^{re.escape(str(other))}: not a blocking-fingerprints CSV \(missing columns"):
        load_file(other)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FingerprintError, match=re.escape(str(binary))):
        load_file(binary)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(FingerprintError, match="missing columns"):
        load_file(empty)
    # A Censored Planet file that is not one: an HTML page (a captive portal), or the CSV.
    html = tmp_path / "blockpage_signatures.json"
    html.write_text("<html><body>Please log in</body></html>\n", encoding="utf-8")
    with pytest.raises(FingerprintError, match=rf"^{re.escape(str(html))}: not a Censored Planet signatures file"):
        load_cp_signatures(html)
    with pytest.raises(FingerprintError, match="not a Censored Planet signatures file"):
        load_cp_signatures(SHARED / "fingerprints_dns.csv")


def test_bad_cp_lines_are_reported_and_good_ones_kept(tmp_path: Path) -> None:
    f = tmp_path / "blockpage_signatures.json"
    f.write_text(
        '{"fingerprint":"one","pattern":"Blocked one"}\n'
        "not json\n"
        '{"fingerprint":"badre","pattern":"blocked (by"}\n'
        "[1, 2]\n"
        '{"fingerprint":"nopattern"}\n'
        "\n"
        '{"fingerprint":"two","pattern":"Blocked\\rtwo"}\n',
        encoding="utf-8",
    )
    fps = load_cp_signatures(f)
    assert [x.name for x in fps.fingerprints] == ["cp.one", "cp.two"]
    assert [p.split(": ")[0] for p in fps.problems] == [f"{f}:2", f"{f}:3", f"{f}:4", f"{f}:5"]


def test_project_file_holds_the_labs_blockpages_only() -> None:
    with open(PROJECT_FINGERPRINTS, newline="", encoding="utf-8") as fh:
        assert fh.readline() == HEADER
    fps = load_file(PROJECT_FINGERPRINTS)
    assert fps.problems == [] and len(fps) >= 1
    # Documented as lab-only, row by row.
    with open(PROJECT_FINGERPRINTS, newline="", encoding="utf-8") as fh:
        assert all(r["notes"].startswith("Lab only:") for r in csv.DictReader(fh))
    page = "<h1>Access Denied</h1><p>This request cannot be served in your jurisdiction.</p>"
    assert fps.http_matcher.match_body(page).name == "vantage.netem_blockpage"  # type: ignore[union-attr]
    # Every row of the loopback lab's and the netns lab's own files is in it (kept in step).
    own = {(f.name, f.location, f.pattern_type, f.pattern) for f in fps.fingerprints}
    for lab_file in (REPO / "vantage" / "lab" / "fingerprints.csv", REPO / "tests" / "netns" / "fingerprints.csv"):
        lab = load_file(lab_file)
        assert lab.problems == [] and len(lab) > 0
        assert {(f.name, f.location, f.pattern_type, f.pattern) for f in lab.fingerprints} <= own, lab_file


def test_lab_blockpages_survive_the_full_default_set() -> None:
    # The real-world sets (and their false positives) must not veto or rename the labs' pages.
    from vantage.lab.web import blockpage

    fps = load_fingerprints([SHARED / "fingerprints_dns.csv", SHARED / "fingerprints_http.csv",
                             CP_BLOCKPAGES, CP_FALSE_POSITIVES])
    m = fps.http_matcher
    assert m.match_body(blockpage("site.example").decode()).name == "vantage_lab.zz_body"  # type: ignore[union-attr]
    netem = "<html><body><p>This request cannot be served in your jurisdiction.</p></body></html>"
    assert m.match_body(netem).name == "vantage.netem_blockpage"  # type: ignore[union-attr]
    netns = "<p>The page you requested has been blocked by order of the Lab Telecommunications Authority.</p>"
    assert m.match_response([], netns) is not None


# --------------------------------------------------------------------------- update, from loopback



@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    server = LoopbackServer(prefix="/fp", files={name: path.read_bytes() for name, path in UPSTREAM_FILES.items()})
    yield server
    server.close()


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VANTAGE_FINGERPRINTS_URL_BASE", raising=False)
    return tmp_path / "xdg" / "vantage" / "fingerprints"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_update_then_default_set_names_its_sources(upstream: LoopbackServer, data_home: Path) -> None:
    before = load_default_fingerprints()
    assert [s.origin for s in before.sources] == ["built-in"] and before.false_positives == []
    result = update_fingerprints(url_base=upstream.url)
    assert result.dest == data_home
    assert sorted(upstream.hits) == sorted(f"/fp/{name}" for name, _, _ in DOWNLOADS)
    manifest = json.loads((data_home / "manifest.json").read_text())
    today = dt.datetime.now(dt.UTC).date().isoformat()
    by_file = {e["file"]: e for e in manifest["files"]}
    for name, src in UPSTREAM_FILES.items():
        assert (data_home / name).read_bytes() == src.read_bytes()
        e = by_file[name]
        assert e["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert e["url"] == f"{upstream.url}/{name}" and e["downloaded_at"] == today
    assert by_file["fingerprints_http.csv"]["rows"] == rows_in(SHARED / "fingerprints_http.csv")
    assert by_file["false_positive_signatures.json"]["rows"] == lines_in(CP_FALSE_POSITIVES)
    assert not list(data_home.glob(".*.tmp"))

    fps = load_default_fingerprints()
    assert fps.problems == []
    assert [(s.name, s.origin, s.date) for s in fps.sources[1:]] == [(n, "downloaded", today) for n in UPSTREAM_FILES]
    assert fps.sources[2].count == rows_in(SHARED / "fingerprints_http.csv")
    assert len(fps.false_positives) == lines_in(CP_FALSE_POSITIVES)
    meta = json.loads(fps.sources_metadata())
    assert meta[0]["origin"] == "built-in" and {m["name"] for m in meta[1:]} == set(UPSTREAM_FILES)
    assert "fingerprints_http.csv (downloaded, " in fps.describe()
    # An extra file already in the set is not loaded twice.
    again = load_default_fingerprints([PROJECT_FINGERPRINTS, data_home / "fingerprints_http.csv"])
    assert len(again) == len(fps)


def test_indonesian_blockpage_matches_with_the_default_set(upstream: LoopbackServer, data_home: Path) -> None:
    assert load_default_fingerprints().http_matcher.match_body(ID_BLOCKPAGE) is None  # built-in only: labs
    update_fingerprints(url_base=upstream.url)
    m = load_default_fingerprints().http_matcher
    hit = m.match_body(ID_BLOCKPAGE)
    assert hit is not None and hit.name == "ooni.id_6" and "ID" in hit.expected_countries
    assert m.match_body(ID_NEWS) is None  # the trap


def web(url: str, body: str, *, role: str, title: str, control_for: str | None = None,
        at: dt.datetime = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)) -> Measurement:
    """A plain-HTTP web_connectivity measurement that got HTTP 200 with ``body``."""
    m = Measurement(measurement_id=new_uuid7(), run_id=f"run-{role}", experiment="web_connectivity",
                    experiment_version="0.1.0", input=url, measurement_start_time=at, role=role, probe_cc="ID",
                    probe_asn="AS17974" if role == "probe" else "AS64500", control_for=control_for)
    ip = "93.184.216.34"  # the same answer on both sides: DNS is consistent, HTTP decides
    host = url.split("/")[2]
    m.dns = [DnsQuery(t0=0.0, t=0.05, failure=None, resolver="system", engine="system", query_type="A", hostname=host,
                      rcode="NOERROR", answers=[DnsAnswer("A", ip, 300)])]
    m.tcp = [TcpConnect(t0=0.1, t=0.2, failure=None, ip=ip, port=80)]
    m.http = [HttpRequest(t0=0.3, t=0.6, failure=None, url=url, ip=ip, status_code=200,
                          headers=[HttpHeader("Content-Type", "text/html")], body_length=len(body.encode()),
                          body_sha256=hashlib.sha256(body.encode()).hexdigest(), body_sample=body, title=title)]
    return m


def test_indonesian_blockpage_is_confirmed_by_compute_verdicts(upstream: LoopbackServer, data_home: Path,
                                                               tmp_path: Path) -> None:
    update_fingerprints(url_base=upstream.url)
    site = "<html><head><title>Queer Net</title></head><body>" + "<p>community news and resources</p>" * 60 + "</body></html>"
    blocked = web("http://www.queernet.org/", ID_BLOCKPAGE, role="probe", title="Internet Positif")
    news_probe = web("http://news.example/", ID_NEWS, role="probe", title="Kominfo adds 200 sites to its list")
    news_site = ID_NEWS.replace("200 sites", "300 sites") + "<p>Updated.</p>" * 80  # the page changed meanwhile
    records = [
        blocked, web("http://www.queernet.org/", site, role="control", title="Queer Net", control_for=blocked.measurement_id),
        news_probe, web("http://news.example/", news_site, role="control", title="Kominfo adds 300 sites to its list",
                        control_for=news_probe.measurement_id),
    ]
    root = tmp_path / "ds"
    write_records(root, "run-test", records)

    def verdicts(fingerprints: object) -> dict[str, dict]:
        con = open_datasets([root])
        try:
            table = compute_verdicts(con, fingerprints=fingerprints)  # type: ignore[arg-type]
        finally:
            con.close()
        return {r["measurement_id"]: r for r in table.to_pylist()}

    v = verdicts(load_default_fingerprints())
    b = v[blocked.measurement_id]
    assert (b["status"], b["method"], b["confirmed"], b["fingerprint"]) == (
        "blocked", "http.blockpage:ooni.id_6", True, "ooni.id_6")
    n = v[news_probe.measurement_id]  # the trap: whatever the body rules say, no blockpage
    assert n["confirmed"] is False and n["fingerprint"] is None and not (n["method"] or "").startswith("http.blockpage")
    # With the built-in (lab-only) set, the same page is at best an unconfirmed body difference.
    plain = verdicts(load_fingerprints())[blocked.measurement_id]
    assert plain["confirmed"] is False and plain["method"] != "http.blockpage:ooni.id_6"


def test_offline_update_keeps_the_old_copy(upstream: LoopbackServer, data_home: Path) -> None:
    update_fingerprints(url_base=upstream.url)
    before = {p.name: p.read_bytes() for p in data_home.iterdir()}
    res = CliRunner().invoke(main, ["fingerprints", "update", "--url-base", f"http://127.0.0.1:{closed_port()}/x",
                                    "--timeout", "5"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot download http://127.0.0.1:"), res.output
    assert "offline" in lines[0] and "nothing replaced" in lines[0]
    assert {p.name: p.read_bytes() for p in data_home.iterdir()} == before


@pytest.mark.parametrize("broken, served, expect", [
    ("blockpage_signatures.json", 500, "HTTP 500"),
    ("false_positive_signatures.json", 404, "HTTP 404"),
    ("fingerprints_http.csv", b"<html><body>Please log in to the Wi-Fi</body></html>", "not a blocking-fingerprints CSV"),
    ("blockpage_signatures.json", b"<html>portal</html>\n", "not a Censored Planet signatures file"),
])
def test_failed_or_foreign_download_replaces_nothing(upstream: LoopbackServer, data_home: Path, broken: str,
                                                    served: bytes | int, expect: str) -> None:
    update_fingerprints(url_base=upstream.url)
    before = {p.name: p.read_bytes() for p in data_home.iterdir()}
    upstream.files[broken] = served
    with pytest.raises(DownloadError, match=re.escape(expect)) as err:
        update_fingerprints(url_base=upstream.url)
    assert broken in str(err.value) and "nothing replaced" in str(err.value)
    assert {p.name: p.read_bytes() for p in data_home.iterdir()} == before


def test_cli_update_and_show(upstream: LoopbackServer, data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VANTAGE_FINGERPRINTS_URL_BASE", upstream.url)  # the env var, as documented
    res = CliRunner().invoke(main, ["fingerprints", "update"])
    assert res.exit_code == 0, res.output
    assert f"{data_home / 'fingerprints_http.csv'}: {rows_in(SHARED / 'fingerprints_http.csv')} fingerprints" in res.output
    res = CliRunner().invoke(main, ["fingerprints", "show"])
    assert res.exit_code == 0, res.output
    for name in UPSTREAM_FILES:
        assert name in res.output
    assert "built-in" in res.output and "downloaded" in res.output
    # A corrupted downloaded file is one error line naming it.
    (data_home / "fingerprints_dns.csv").write_text("url,category_code\nhttps://x.example/,NEWS\n")
    res = CliRunner().invoke(main, ["fingerprints", "show"])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert str(data_home / "fingerprints_dns.csv") in res.output


def test_the_users_own_file_names_the_match_before_generic_downloaded_ones(upstream: LoopbackServer, data_home: Path,
                                                                        tmp_path: Path) -> None:
    update_fingerprints(url_base=upstream.url)
    own = tmp_path / "mine.csv"
    own.write_text(HEADER + "my.isp_page,isp,,body,contains,<!-- my-isp-blockpage -->,9,ZZ,me,,\n", encoding="utf-8")
    page = "<html><head><title>Blocked</title></head><body><!-- my-isp-blockpage -->Denied</body></html>"
    # Censored Planet's generic f_gen_blocked_37 ("<title>Blocked</title>") matches too...
    assert load_default_fingerprints().http_matcher.match_body(page).name == "cp.f_gen_blocked_37"  # type: ignore[union-attr]
    # ...but the analyst's own fingerprint, loaded before the downloaded sets, names the match.
    fps = load_default_fingerprints([own])
    assert [s.origin for s in fps.sources] == ["built-in", "extra"] + ["downloaded"] * 4
    assert fps.http_matcher.match_body(page).name == "my.isp_page"  # type: ignore[union-attr]
