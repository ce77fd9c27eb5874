"""`vantage report --site`: the static site built from a shutdown scenario, the demo and the OONI
samples, opened page by page in headless Chromium (no request leaves the machine, no console
error, every chart drawn), with totals that add up to the verdict table."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analysis.events import EVENT_SCHEMA
from analysis.ingest.ooni import import_ooni
from analysis.pipeline import Verdicts, load_verdicts, run_stage
from analysis.report import ReportResult, write_report
from analysis.report.site import page_name
from analysis.rules import RULES
from tests.support import scenario as sc
from tests.support.browser import CHROMIUM, PageVisit, chromium
from tests.support.paths import OONI_DATA
from vantage.cli import main
from vantage.lab import LoopbackLab

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
BLOCKPAGE_URL = "http://blog-b.example/"
SCREENS = Path("/tmp/vantage-screens")  # a few screenshots for a human to look at


def _at(day: int, hour: int) -> dt.datetime:
    return START + dt.timedelta(days=day, hours=hour)


Built = tuple[str, Path, Verdicts, ReportResult]


def _build(name: str, datasets: list[Path], verdicts: Verdicts, out: Path, max_pages: int = 60) -> Built:
    result = write_report(datasets, out / "report.html", verdicts=verdicts, site=out / "site", max_pages=max_pages,
                          title=f"Vantage report: {name}")
    return name, out / "site", verdicts, result


@pytest.fixture(scope="module")
def shutdown_site(tmp_path_factory: pytest.TempPathFactory) -> Built:
    nets = [sc.Network("IR", "AS1001", "Example Telecom IR", ("pi", "laptop"), 3),
            sc.Network("IR", "AS1002", "Example Mobile IR", ("pi",), 3),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")]
    events = [
        sc.PlantedEvent("steady_block", START, None, "IR", ("AS1001", "AS1002"), ("https://news-b.example/",),
                        "dns.dns_nxdomain"),
        sc.PlantedEvent("shutdown", _at(6, 9), _at(6, 15), "IR", ("AS1001", "AS1002"), label="national"),
        sc.PlantedEvent("service_blocking", _at(7, 2), None, "IR", ("AS1001",), (BLOCKPAGE_URL,), "http.blockpage"),
    ]
    root = tmp_path_factory.mktemp("site_shutdown")
    scn = sc.Scenario(start=START, days=9, networks=nets, events=events, seed=5,
                      targets=(*sc.DEFAULT_TARGETS, (BLOCKPAGE_URL, "POLR")))
    sc.write_dataset(sc.generate_measurements(scn), root / "dataset")
    return _build("shutdown scenario", [root / "dataset"], run_stage([root / "dataset"]), root)


@pytest.fixture(scope="module")
def ooni_site(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not OONI_DATA.is_dir():
        pytest.skip(f"no OONI samples at {OONI_DATA}")
    root = tmp_path_factory.mktemp("site_ooni")
    sources = sorted(p for p in OONI_DATA.rglob("*") if p.suffix in (".json", ".jsonl"))
    summary = import_ooni(sources, root / "dataset")
    assert summary.measurements > 0
    return _build("OONI samples", [root / "dataset"], run_stage([root / "dataset"]), root)


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory, loopback_lab_session: LoopbackLab) -> Built:
    from vantage.demo import run_demo

    loopback_lab_session.set_censor(True)
    root = tmp_path_factory.mktemp("site_demo")
    demo = run_demo(root / "demo", lab=loopback_lab_session)
    return _build("demo", [demo.probe_dataset, demo.control_dataset], load_verdicts(demo.verdicts), root)


SITES = ["shutdown_site", "ooni_site", "demo_site"]


def _counts(page: Path) -> dict[str, int]:
    text = page.read_text(encoding="utf-8")
    return {s: int(n.replace(",", "")) for s, n in re.findall(r"data-status='([a-z_]+)'>([\d,]+)<", text)}


def _rows(verdicts: Verdicts) -> list[dict[str, Any]]:
    return verdicts.table.select(["probe_cc", "probe_asn", "status"]).to_pylist()


# --------------------------------------------------------------------------- totals


@pytest.mark.slow  # builds and reads three report sites: ~3-7 s a site
@pytest.mark.parametrize("built", SITES)
def test_every_count_matches_the_verdict_table(built: str, request: pytest.FixtureRequest) -> None:
    name, site, verdicts, result = request.getfixturevalue(built)
    rows = _rows(verdicts)
    want = Counter(r["status"] for r in rows)
    index = _counts(site / "index.html")
    assert index.pop("total") == verdicts.table.num_rows == sum(want.values())
    assert index == dict(want), name
    # the blocked measurements split three ways, none negative, adding up to all blocked
    text = (site / "index.html").read_text(encoding="utf-8")
    parts = [int(n.replace(",", "")) for n in re.findall(r"data-blocked='\d'>([\d,]+)<", text)]
    assert len(parts) == 3 and all(p >= 0 for p in parts) and sum(parts) == want["blocked"]
    with (site / "findings.csv").open(encoding="utf-8") as fh:
        findings = list(csv.DictReader(fh))
    assert len(findings) == result.blocked_rows
    assert sum(int(f["blocked"]) for f in findings) == parts[0]
    # every country's and network's page: its own counts
    for cc in {r["probe_cc"] for r in rows}:
        page = _counts(site / "country" / f"{re.sub(r'[^A-Za-z0-9]', '_', cc)}.html")
        assert page.pop("total") == sum(1 for r in rows if r["probe_cc"] == cc)
        assert page == dict(Counter(r["status"] for r in rows if r["probe_cc"] == cc))
    for cc, asn in {(r["probe_cc"], r["probe_asn"] or "?") for r in rows}:
        slug = "-".join(re.sub(r"[^A-Za-z0-9]", "_", p) for p in (cc, asn))
        page = _counts(site / "network" / f"{slug}.html")
        mine = [r for r in rows if r["probe_cc"] == cc and (r["probe_asn"] or "?") == asn]
        assert page.pop("total") == len(mine)
        assert page == dict(Counter(r["status"] for r in mine))


def test_a_wrong_count_is_caught(shutdown_site: Built) -> None:
    """Trap for the check above: one status count off by one no longer matches."""
    _, site, verdicts, _ = shutdown_site
    want = Counter(r["status"] for r in _rows(verdicts))
    index = _counts(site / "index.html")
    index.pop("total")
    index["ok"] += 1
    assert index != dict(want)


# --------------------------------------------------------------------------- content


def test_shutdown_site_names_evidence_and_exports(shutdown_site: Built) -> None:
    _, site, verdicts, result = shutdown_site
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "Iran (IR)" in index and "Example Telecom IR (AS1001)" in index and "Example Mobile IR (AS1002)" in index
    assert "ZZ" not in index
    events_at = index.index("<h2>Events (")
    assert events_at < index.index("By country")  # events first
    assert "kind-shutdown" in index[events_at:index.index("By country")]
    # a page per anomalous measurement (the newest, up to max_pages), named from its id
    blocked = [r for r in verdicts.table.to_pylist() if r["status"] == "blocked"]
    pages = sorted(p.name for p in (site / "m").iterdir())
    assert len(pages) == min(60, len(blocked))
    newest = max(blocked, key=lambda r: r["measurement_start_time"])
    page = (site / "m" / page_name(newest["measurement_id"])).read_text(encoding="utf-8")
    assert newest["measurement_id"] in page and "control (uncensored network)" in page
    # the blockpage measurement: its page excerpt beside the control's
    bp = [r for r in blocked if r["input"] == BLOCKPAGE_URL and (site / "m" / page_name(r["measurement_id"])).exists()]
    assert bp, "no page for the blockpage block"
    text = (site / "m" / page_name(bp[0]["measurement_id"])).read_text(encoding="utf-8")
    assert "Page excerpt" in text and "HTTP 200" in text
    # exports
    events = json.loads((site / "events.json").read_text(encoding="utf-8"))
    assert len(events) == result.events and events and set(events[0]) == set(EVENT_SCHEMA.names)
    assert any(e["kind"] == "shutdown" for e in events)
    with (site / "events.csv").open(encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == result.events
    findings = json.loads((site / "findings.json").read_text(encoding="utf-8"))
    assert len(findings) == result.blocked_rows and {f["country_name"] for f in findings} == {"Iran"}
    # methodology: every rule of the table in plain words, and the options used
    method = (site / "methodology.html").read_text(encoding="utf-8")
    assert all(f"<td>{r.id}</td>" in method for r in RULES)
    assert "control window: 6 hours" in method


def test_demo_site_marks_the_fingerprint(demo_site: Built) -> None:
    _, site, verdicts, _ = demo_site
    confirmed = [r for r in verdicts.table.to_pylist() if r["confirmed"] and r["status"] == "blocked"]
    assert confirmed
    marked = 0
    for r in confirmed:
        text = (site / "m" / page_name(r["measurement_id"])).read_text(encoding="utf-8")
        assert f"yes: {r['fingerprint']}" in text
        marked += "<mark>" in text
    assert marked, "no confirmed blockpage page marks the fingerprint in its excerpt"


_INTERNAL = re.compile(r"\b(?:analysis|probe|vantage)\.[a-z_]+\.[a-z_]+\b|\b[\w/]+\.py\b|\bdocs/[\w.]+|compute_verdicts")


@pytest.mark.parametrize("built", SITES)
def test_no_internal_names_in_pages(built: str, request: pytest.FixtureRequest) -> None:
    _, site, _, _ = request.getfixturevalue(built)
    # where the analyst keeps the datasets (the tests' temporary directories) is not published:
    # the methodology page names the dataset directories alone
    private = str(request.getfixturevalue("tmp_path_factory").getbasetemp())
    for page in site.rglob("*.html"):
        raw = page.read_text(encoding="utf-8")
        assert private not in raw, f"{page.name}: an absolute dataset path"
        text = re.sub(r"<[^>]+>", " ", raw)
        hit = _INTERNAL.search(text)
        assert hit is None, f"{page.name}: {hit[0] if hit else ''}"
    method = (site / "methodology.html").read_text(encoding="utf-8")
    assert re.search(r"from [\w.-]+(, [\w.-]+)*</li>", method), "the datasets are not named on the methodology page"


@pytest.mark.slow  # builds a report site twice: ~3.4 s
def test_site_refuses_a_foreign_directory(tmp_path: Path, shutdown_site: Built) -> None:
    _, site, _, _ = shutdown_site
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    dataset = site.parent / "dataset"
    res = CliRunner().invoke(main, ["report", str(dataset), "--site", str(other)])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    res = CliRunner().invoke(main, ["report", str(dataset)])
    assert res.exit_code == 2 and "--site" in res.output
    # a site it wrote before is replaced, and the CLI says how many pages
    res = CliRunner().invoke(main, ["report", str(dataset), "--site", str(tmp_path / "s"), "--max-pages", "5", "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["report", str(dataset), "--site", str(tmp_path / "s"), "--max-pages", "3"])
    assert res.exit_code == 0 and "pages" in res.output, res.output
    assert len(list((tmp_path / "s" / "m").iterdir())) == 3


# --------------------------------------------------------------------------- in the browser


def _local(ref: str) -> bool:
    """A reference that stays on this machine: relative, a fragment, or inline data."""
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", ref) or ref.startswith("data:")


def _check_visit(v: PageVisit, page: Path) -> list[str]:
    problems = [f"request leaving the page's files: {u}" for u in v.requests
                if not (u.startswith("file://") or u.startswith("data:"))]
    problems += v.errors
    problems += [f"not local: {ref}" for ref in v.links if not _local(ref)]
    problems += [f"broken link: {ref}" for ref in v.links
                 if _local(ref) and not ref.startswith(("data:", "#")) and not (page.parent / ref.split("#")[0]).exists()]
    problems += [f"image not drawn: {src} ({w}x{h}, shown {shown:.0f} px)" for src, ok, w, h, shown in v.images
                 if not (ok and w > 0 and h > 0 and shown > 0)]
    return problems


def _require_chromium() -> None:
    if CHROMIUM is None:
        print("SKIP: chromium is not installed (scripts/test.sh installs the Debian package)")
        pytest.skip("chromium is not installed (scripts/test.sh installs the Debian package `chromium`)")


@pytest.mark.slow  # a headless chromium per page of three sites: ~3 s a site
@pytest.mark.parametrize("built", SITES)
def test_every_page_opens_in_chromium(built: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _require_chromium()
    name, site, _, result = request.getfixturevalue(built)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == len(result.pages) and (site / "index.html") in pages
    first = {d: next((p for p in pages if p.parent.name == d), None) for d in ("country", "network", "m")}
    # the measurement to look at: one whose excerpt marks a fingerprint, when there is one
    first["m"] = next((p for p in pages if p.parent.name == "m" and "<mark>" in p.read_text(encoding="utf-8")),
                      first["m"])
    shots = {"index": site / "index.html", "methodology": site / "methodology.html",
             **{k: v for k, v in first.items() if v is not None}}
    tag = re.sub(r"\W+", "-", name)
    SCREENS.mkdir(exist_ok=True)
    problems: dict[str, list[str]] = {}
    charts = 0
    with chromium(tmp_path / "profile") as browser:
        for page in pages:
            label = next((k for k, v in shots.items() if v == page), None)
            shot = tmp_path / f"{tag}-{label}.png" if label else None
            visit = browser.visit(page, shot)
            charts += len(visit.images)
            if bad := _check_visit(visit, page):
                problems[str(page.relative_to(site))] = bad
            if shot is not None:
                assert shot.stat().st_size > 10_000, f"{shot}: a blank screenshot?"
                shutil.copy(shot, SCREENS / shot.name)
                print(f"screenshot {shot} (copy: {SCREENS / shot.name})")
    assert not problems, json.dumps(problems, indent=1)[:4000]
    assert charts >= 2  # the index's anomalies-over-time and methods charts at least
    print(f"{name}: {len(pages)} pages opened in Chromium, {charts} chart(s) drawn, no request left the files")


@pytest.mark.slow  # a headless chromium run: ~8 s
def test_the_browser_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """Trap for the check above: a page with a remote image and a script error is caught (the
    browser resolves no name, so the attempt leaves nothing but a record)."""
    _require_chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='https://report-assets.invalid/chart.png'>"
                    "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    with chromium(tmp_path / "profile") as browser:
        problems = _check_visit(browser.visit(page), page)
    assert any("request leaving" in p for p in problems)
    assert any("boom" in p for p in problems)
    assert any("not local" in p for p in problems)
    assert any("image not drawn" in p for p in problems)
