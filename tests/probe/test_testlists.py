"""Target lists: Citizen Lab CSV and plain text, line-numbered problems, `vantage lists`."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe import testlists
from tests.support.loopback_site import LoopbackServer, closed_port_url
from tests.support.paths import REPO, SHARED_DATA
from vantage.cli import main

SHARED_LISTS = SHARED_DATA / "testlists"
LIST_NAMES = ["global", "by", "cn", "eg", "in", "ir", "kz", "mm", "ru", "tr", "ve"]
HEADER = "url,category_code,category_description,date_added,source,notes\n"


def data_rows(path: Path) -> list[list[str]]:
    """The data rows of a CSV, counted independently of the loader (header and blank rows out)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return [r for r in rows[1:] if r]


@pytest.mark.parametrize("name", LIST_NAMES)
def test_citizenlab_lists_load_every_data_row(name: str) -> None:
    path = SHARED_LISTS / f"{name}.csv"
    expected = data_rows(path)
    assert len(expected) > 100  # the files are real lists, not stubs
    entries, problems = testlists.load_list(path)
    assert problems == []
    assert len(entries) == len(expected)
    assert [e.url for e in entries] == [r[0] for r in expected]
    assert entries[0].line == 2
    assert all(e.category_code for e in entries)


def test_all_eleven_lists_are_present() -> None:
    found = sorted(p.stem for p in SHARED_LISTS.glob("*.csv") if not p.name.startswith("00-LEGEND"))
    assert found == sorted(LIST_NAMES)


def test_broken_rows_are_skipped_and_reported_by_real_line_number(tmp_path: Path) -> None:
    text = (
        HEADER  # line 1
        + "https://good.example/,NEWS,News Media,2020-01-01,x,\n"  # 2
        + 'https://multi.example/,HUMR,Human Rights Issues,2020-01-01,x,"a note\nover\nthree lines"\n'  # 3-5
        + "https://short.example/,NEWS\n"  # 6: too few columns
        + "\n"  # 7: blank, ignored
        + "not a url,NEWS,News Media,2020-01-01,x,\n"  # 8: bad URL
        + ",NEWS,News Media,2020-01-01,x,\n"  # 9: missing url
        + "ftp://files.example/,FILE,File-sharing,2020-01-01,x,\n"  # 10: unsupported scheme
        + "https://bad port.example:99999/,NEWS,News Media,2020-01-01,x,\n"  # 11
        + "https://good.example/,NEWS,News Media,2020-01-01,x,\n"  # 12: duplicate of line 2
        + "https://extra.example/,NEWS,News Media,2020-01-01,x,,surplus\n"  # 13: too many columns
        + "https://after.example/,LGBT,LGBT,2020-01-01,x,\n"  # 14
        + "wireguard://192.0.2.1:51820/?public_key=abc,ANON,Anonymization,2020-01-01,x,\n"  # 15
    )
    path = tmp_path / "broken.csv"
    path.write_text(text, encoding="utf-8")
    entries, problems = testlists.load_list(path)
    assert [e.url for e in entries] == [
        "https://good.example/",
        "https://multi.example/",
        "https://after.example/",
        "wireguard://192.0.2.1:51820/?public_key=abc",
    ]
    assert [e.line for e in entries] == [2, 3, 14, 15]
    assert entries[1].notes == "a note\nover\nthree lines"
    assert [p.line for p in problems] == [6, 8, 9, 10, 11, 12, 13]
    messages = {p.line: p.message for p in problems}
    assert "expected 6 columns, found 2" in messages[6]
    assert "missing url" in messages[9]
    assert "unsupported scheme" in messages[10]
    assert "duplicate of line 2" in messages[12]
    assert str(problems[0]) == f"{path}:6: {messages[6]}"


def test_unterminated_quote_and_bad_bytes_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "nasty.csv"
    path.write_bytes(
        HEADER.encode()
        + b"https://ok.example/,NEWS,News Media,2020-01-01,x,\n"
        + b"https://bad\xff\xfe.example/,NEWS,News Media,2020-01-01,x,\n"
        + b'https://q.example/,NEWS,"News Media,2020-01-01,x,\n'
        + b"https://swallowed.example/,NEWS,News Media,2020-01-01,x,\n"
    )
    entries, problems = testlists.load_list(path)
    assert [e.url for e in entries] == ["https://ok.example/"]
    assert [p.line for p in problems] == [3, 4]
    assert "unterminated quote" in problems[1].message


def test_tunnel_inputs_are_valid() -> None:
    good = [
        "https://example.org/",
        "http://[2001:db8::1]:8080/x",
        "openvpn://203.0.113.5:1194/?transport=udp&tls_auth=AAAA&key_direction=1",
        "wireguard://203.0.113.5:51820/?public_key=abc_-&private_key=def",
        "tor://203.0.113.5:9001/",
        "obfs4://203.0.113.5:443/?cert=a%2Bb&iat_mode=0",
        "ikev2://203.0.113.5:500/",
        "https://xn--80ak6aa92e.com/",
        "https://пример.рф/",
        "dns://198.41.0.4",
        "tcp://1.1.1.1:443",
    ]
    for url in good:
        assert testlists.input_problem(url) is None, url
    bad = ["tor://203.0.113.5/", "tcp://1.1.1.1", "https:///path", "example.org", "gopher://x.org/", "https://a..b/", "https://-a.org/"]
    for url in bad:
        assert testlists.input_problem(url) is not None, url


def test_plain_text_list(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text(
        "# my list\n\nhttps://a.example/\n  https://b.example/path?q=1  \nnot-a-url\n"
        "tor://192.0.2.9:9001/\n# https://commented.example/\nhttps://a.example/\n",
        encoding="utf-8",
    )
    entries, problems = testlists.load_list(path)
    assert [(e.url, e.line, e.category_code) for e in entries] == [
        ("https://a.example/", 3, None),
        ("https://b.example/path?q=1", 4, None),
        ("tor://192.0.2.9:9001/", 6, None),
    ]
    assert [(p.line, "duplicate" in p.message) for p in problems] == [(5, False), (8, True)]


def test_category_filter_and_merge() -> None:
    path = SHARED_LISTS / "ir.csv"
    rows = data_rows(path)
    entries, _ = testlists.load_list(path, categories=["news", "HUMR"])
    assert len(entries) == sum(1 for r in rows if r[1] in ("NEWS", "HUMR"))
    assert {e.category_code for e in entries} == {"NEWS", "HUMR"}
    # global and a country list overlap; merging keeps each URL once and says so
    merged, problems = testlists.load_lists([SHARED_LISTS / "global.csv", path])
    urls = [r[0] for r in data_rows(SHARED_LISTS / "global.csv")] + [r[0] for r in rows]
    assert len(merged) == len(set(urls))
    assert len(problems) == len(urls) - len(set(urls))


def test_csv_without_header_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "noheader.csv"
    path.write_text("https://a.example/,NEWS,News,2020-01-01,x,\n", encoding="utf-8")
    with pytest.raises(testlists.TestListError, match=r"noheader.csv:1: not a Citizen Lab list"):
        testlists.load_list(path)
    with pytest.raises(testlists.TestListError, match="cannot read"):
        testlists.load_list(tmp_path / "missing.csv")


def test_shipped_list_is_valid_and_varied() -> None:
    path = testlists.shipped_list_path()
    entries, problems = testlists.load_list(path)
    assert problems == []
    assert len(entries) >= 30
    categories = {e.category_code for e in entries}
    assert {"NEWS", "HUMR", "POLR", "COMT", "GRP", "LGBT", "REL", "ANON", "HOST", "MMED", "FILE"} <= categories
    anchors, problems = testlists.load_list(testlists.resolve_list("anchors"))
    assert problems == [] and len(anchors) >= 5
    # the user-visible copy in testlists/ is the same file
    visible = REPO / "testlists" / "vantage.csv"
    assert visible.read_bytes() == path.read_bytes()


def test_lists_show_cli(tmp_path: Path) -> None:
    broken = tmp_path / "b.csv"
    broken.write_text(HEADER + "https://a.example/,NEWS,News Media,,,\nhttps://x.example/,NEWS\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["lists", "show", str(SHARED_LISTS / "ir.csv"), str(broken)])
    assert result.exit_code == 0, result.output
    ir_news = sum(1 for r in data_rows(SHARED_LISTS / "ir.csv") if r[1] == "NEWS")
    assert f"{len(data_rows(SHARED_LISTS / 'ir.csv'))} entries" in result.stdout
    assert any(line.split("│")[1:4] and "NEWS" in line and f" {ir_news} " in line for line in result.stdout.splitlines())
    assert f"skipped {broken}:3: expected 6 columns, found 2" in result.stderr

    shipped = runner.invoke(main, ["lists", "show", "-c", "ANON"])
    assert shipped.exit_code == 0
    assert "ANON" in shipped.stdout and "NEWS" not in shipped.stdout

    missing = runner.invoke(main, ["lists", "show", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1
    assert missing.output.count("\n") == 1 and missing.output.startswith("Error: no such list")


def test_lists_update_offline_is_one_line(tmp_path: Path) -> None:
    url = closed_port_url() + "lists/"
    result = CliRunner().invoke(
        main, ["lists", "update", "--dest", str(tmp_path), "--country", "ir"], env={testlists.BASE_URL_ENV: url}
    )
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"Error: cannot download {url}global.csv: cannot connect")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def list_server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server with a global list, an IR list and a captive-portal-like page."""
    files: dict[str, bytes | int] = {
        "global.csv": (SHARED_LISTS / "global.csv").read_bytes(),
        "ir.csv": (SHARED_LISTS / "ir.csv").read_bytes(),
        "xx.csv": b"<html>please log in</html>\n",
    }
    with LoopbackServer(files) as server:
        yield server.url


def test_lists_update_downloads_atomically(list_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    result = runner.invoke(main, ["lists", "update", "--country", "IR", "--base-url", list_server])
    assert result.exit_code == 0, result.output
    dest = tmp_path / "xdg" / "vantage" / "testlists"
    assert testlists.lists_dir() == dest
    assert sorted(p.name for p in dest.iterdir()) == ["global.csv", "ir.csv"]
    assert (dest / "ir.csv").read_bytes() == (SHARED_LISTS / "ir.csv").read_bytes()
    assert f"ir.csv: {len(data_rows(SHARED_LISTS / 'ir.csv'))} entries" in result.output
    # downloaded lists are found by name
    shown = runner.invoke(main, ["lists", "show", "ir"])
    assert shown.exit_code == 0 and str(dest / "ir.csv") in shown.stdout

    before = (dest / "global.csv").read_bytes()
    portal = runner.invoke(main, ["lists", "update", "--country", "xx", "--base-url", list_server])
    assert portal.exit_code == 1 and "not a Citizen Lab CSV" in portal.output
    missing = runner.invoke(main, ["lists", "update", "--country", "zz", "--base-url", list_server])
    assert missing.exit_code == 1 and "no Citizen Lab list for country ZZ" in missing.output
    assert (dest / "global.csv").read_bytes() == before
    assert not (dest / "xx.csv").exists()
    assert not any(p.name.startswith(".") for p in dest.iterdir())

    bad_cc = runner.invoke(main, ["lists", "update", "--country", "iran", "--base-url", list_server])
    assert bad_cc.exit_code == 1 and "two letters" in bad_cc.output


@pytest.mark.parametrize(
    "first",
    [
        "http://" + "a" * 140_000 + ".example/",  # a plain list whose first line is 137 KiB
        '"' + "x" * 140_000 + ",url",  # an unbalanced quote and a 'url' cell: looked like a header
        "https://x.example/?" + "q" * 9000,  # long, but under the csv module's field limit
    ],
)
def test_an_overlong_first_line_is_one_problem_and_the_rest_loads(first: str, tmp_path: Path) -> None:
    """Issue 13: a first line over 128 KiB raised _csv.Error (a traceback); it is now one
    problem naming its line, and the good lines around it load."""
    lst = tmp_path / "long.txt"
    lst.write_text(first + "\nhttps://ok.example/\n\nhttps://ok2.example/\n", encoding="utf-8")
    entries, problems = testlists.load_list(lst)
    assert [(e.url, e.line) for e in entries] == [("https://ok.example/", 2), ("https://ok2.example/", 4)]
    assert len(problems) == 1 and problems[0].line == 1
    assert "longer than 8192 characters" in problems[0].message
    assert len(str(problems[0])) < 400  # the problem line quotes a bounded part of the input
    res = CliRunner().invoke(main, ["lists", "show", str(lst)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output


def test_a_url_just_under_the_length_bound_is_kept(tmp_path: Path) -> None:
    """Trap beside the bound: an 8 KiB URL (servers accept request lines of 8 KiB) stays."""
    url = "https://x.example/?" + "q" * (testlists.URL_MAX - 19)
    assert len(url) == testlists.URL_MAX
    lst = tmp_path / "ok.txt"
    lst.write_text(url + "\r\nhttps://ok.example/\n", encoding="utf-8")
    entries, problems = testlists.load_list(lst)
    assert problems == [] and [e.url for e in entries] == [url, "https://ok.example/"]
