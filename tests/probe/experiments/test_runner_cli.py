"""`vantage run` end to end against the loopback farm: CliRunner and a real process for Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from loopfarm import Farm

from probe.dataset import read_manifest
from probe.experiments.anchors import load_anchors, shipped_anchors_path
from tests.support.paths import REPO
from vantage.cli import main


@pytest.fixture(scope="module")
def farm30(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    kinds = ["blackhole" if i % 3 == 2 else "ok" for i in range(30)] + ["https"]
    with Farm(kinds, workdir=tmp_path_factory.mktemp("farm30")) as f:
        yield f


def query(output: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect()
    try:
        view = f"read_parquet('{output}/measurements/**/*.parquet', hive_partitioning=true, union_by_name=true)"
        return con.sql(sql.replace("@M", view)).fetchall()
    finally:
        con.close()


def write_list(path: Path, farm: Farm, kinds: tuple[str, ...] = ("ok", "blackhole", "https")) -> list[str]:
    urls = [s.url for s in farm.sites if s.kind in kinds]
    lines = ["url,category_code,category_description,date_added,source,notes"]
    lines += [f"{u},{'NEWS' if i % 2 else 'HUMR'},x,2026-11-22,test," for i, u in enumerate(urls)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return urls


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    return result.exit_code, result.output


def test_run_end_to_end(farm30: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.csv"
    urls = write_list(lst, farm30, ("ok", "https"))
    out = tmp_path / "out"
    code, text = invoke(
        "--list", str(lst), "--resolver", farm30.resolver, "--output", str(out), "--timeout", "2",
        "--cc", "ir", "--asn", "64496", "--network", "Lab ISP", "--ca-bundle", str(farm30.ca_bundle),
        "--no-progress",
    )
    assert code == 0, text
    assert "Traceback" not in text
    assert "web_connectivity" in text and f"output: {out}" in text
    run_id = text.split("run id: ", 1)[1].split()[0]
    got = query(out, "SELECT input, probe_cc, probe_asn, probe_network, role, run_id, input_category FROM @M")
    assert sorted(r[0] for r in got) == sorted(urls)
    assert {r[1:6] for r in got} == {("IR", "AS64496", "Lab ISP", "probe", run_id)}
    assert {r[6] for r in got} == {"NEWS", "HUMR"}
    # All fetched: the https one validated against the lab CA given with --ca-bundle.
    ok = query(out, "SELECT count(*) FROM @M WHERE http[len(http)].status_code = 200")
    assert ok == [(len(urls),)]
    # Only the given resolver was asked: no system resolver queries on record.
    engines = query(out, "SELECT DISTINCT d.engine FROM (SELECT unnest(dns) AS d FROM @M)")
    assert engines == [("udp",)]
    manifest = read_manifest(out, run_id)
    assert manifest is not None and manifest["resolvers"] == [farm30.resolver]


def test_category_filter_and_url(farm30: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.csv"
    write_list(lst, farm30, ("ok",))
    extra = next(s.url for s in farm30.sites if s.kind == "ok")
    out = tmp_path / "out"
    code, text = invoke(
        "--list", str(lst), "--category", "news", "--url", extra, "--resolver", farm30.resolver,
        "--output", str(out), "--no-progress",
    )
    assert code == 0, text
    cats = query(out, "SELECT input_category, count(*) FROM @M GROUP BY ALL ORDER BY 1 NULLS LAST")
    # The --url duplicates a list entry (HUMR, filtered out), so it is measured once, uncategorised.
    assert cats[0][0] == "NEWS" and all(c in ("NEWS", None) for c, _ in cats)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cc", "IRN"], "country code is two letters"),
        (["--asn", "ASX"], "AS number"),
        (["--resolver", "not-a-resolver"], "is not IP"),
        (["--concurrency", "0"], "--concurrency"),
        (["--url", "ftp://x.test/"], "unsupported scheme"),
        (["--experiment", "nope", "--url", "http://x.test/"], "--experiment"),
        (["--list", "/nonexistent/list.csv"], "no such list"),
        (["--resume", "20260101T000000Z-deadbeef"], "no run 20260101T000000Z-deadbeef"),
        (["--resume", "../../etc/x"], "a run id has only"),
        ([], "nothing to measure"),
    ],
)
def test_wrong_input_is_one_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    code, text = invoke(*args, "--output", str(tmp_path / "out"), "--no-progress")
    assert code != 0
    assert message in text, text
    assert "Traceback" not in text
    assert len([ln for ln in text.splitlines() if ln.startswith("Error")]) == 1


@pytest.mark.slow  # waits out a max runtime, then resumes: ~3.3 s
def test_max_runtime_then_resume_from_the_manifest(farm30: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.csv"
    urls = write_list(lst, farm30, ("ok", "blackhole"))
    out = tmp_path / "out"
    code, text = invoke(
        "--list", str(lst), "--resolver", farm30.resolver, "--output", str(out), "--timeout", "1",
        "--concurrency", "1", "--max-runtime", "1.5", "--no-progress",
    )
    assert code == 0, text
    assert "stopped early (the --max-runtime budget ran out)" in text
    run_id = text.split("run id: ", 1)[1].split()[0]
    first = query(out, "SELECT count(*) FROM @M")[0][0]
    assert 0 < first < len(urls)
    # Only --resume and --output: the list, resolver and timeouts come from the manifest.
    code, text = invoke("--resume", run_id, "--output", str(out), "--no-progress", "--concurrency", "50")
    assert code == 0, text
    assert f"already measured (resume): {first}" in text
    got = query(out, "SELECT input, count(*) FROM @M GROUP BY input")
    assert sorted(i for i, _ in got) == sorted(urls) and {n for _, n in got} == {1}
    assert query(out, "SELECT DISTINCT run_id FROM @M") == [(run_id,)]


@pytest.mark.slow  # a CLI run interrupted with SIGINT: ~4.4 s
def test_ctrl_c_flushes_what_was_measured(farm30: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.csv"
    urls = write_list(lst, farm30, ("ok", "blackhole"))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-c", "from vantage.cli import main; main()", "run", "--list", str(lst), "--resolver", farm30.resolver,
        "--output", str(out), "--timeout", "30", "--concurrency", "2", "--no-progress",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        # Two slots and 30 s timeouts: the black holes soon hold both slots, and nothing
        # would be written before the 30 s flush timer. Ctrl-C must write what is done.
        assert proc.stderr is not None
        first_line = proc.stderr.readline()  # printed just before measuring starts
        assert first_line.startswith("Measuring"), first_line
        time.sleep(2.5)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped early (interrupted)" in stdout
    n = query(out, "SELECT count(*) FROM @M")[0][0]
    assert 0 < n < len(urls)
    # No temporary file is left behind.
    assert not [p for p in out.rglob(".*") if p.is_file() and "measurements" in p.parts]


def test_anchors_from_a_list(farm30: Farm, tmp_path: Path) -> None:
    ok = next(s for s in farm30.sites if s.kind == "ok")
    port = ok.url.rsplit(":", 1)[1].strip("/")
    lst = tmp_path / "anchors.csv"
    lst.write_text(
        "url,category_code,category_description,date_added,source,notes\n"
        f"tcp://{ok.ip}:{port},ANCHOR,a,2026-11-22,t,\n"
        "smtp://192.0.2.1:25,ANCHOR,a,2026-11-22,t,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code, text = invoke("--experiment", "anchors", "--list", str(lst), "--resolver", farm30.resolver,
                        "--output", str(out), "--no-progress")
    assert code == 0, text
    assert "anchors.csv:3: an anchor is one of" in text  # the bad row is reported, not measured
    assert query(out, "SELECT input, tcp[1].failure FROM @M") == [(f"tcp://{ok.ip}:{port}", None)]


def test_the_shipped_anchors_list_loads_cleanly() -> None:
    # Loaded only, never contacted: these are real internet addresses.
    targets, problems = load_anchors(shipped_anchors_path())
    assert problems == []
    assert len(targets) >= 10 and all(t.category == "ANCHOR" for t in targets)
    assert {t.input.split("://")[0] for t in targets} == {"dns", "tcp", "https"}
    repo_copy = REPO / "testlists" / "anchors.csv"
    assert repo_copy.read_text() == shipped_anchors_path().read_text()


def test_anchors_first_then_the_list_in_one_run(farm30: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe.experiments.anchors as anchors_module

    ok = next(s for s in farm30.sites if s.kind == "ok")
    port = ok.url.rsplit(":", 1)[1].strip("/")
    lab_anchors = tmp_path / "lab-anchors.csv"
    lab_anchors.write_text(f"tcp://{ok.ip}:{port}\ndns://{farm30.resolver}\n", encoding="utf-8")
    # The shipped anchors are real internet addresses: the test swaps in loopback ones.
    monkeypatch.setattr(anchors_module, "shipped_anchors_path", lambda: lab_anchors)
    out = tmp_path / "out"
    code, text = invoke("--anchors", "--url", ok.url, "--resolver", farm30.resolver, "--output", str(out), "--no-progress")
    assert code == 0, text
    assert "Measuring 2 anchors, then 1 input(s)" in text
    got = query(out, "SELECT experiment, count(*), count(DISTINCT run_id) FROM @M GROUP BY ALL ORDER BY 1")
    assert got == [("anchors", 2, 1), ("web_connectivity", 1, 1)]
    assert "anchors" in text.split("run id:")[0] and "web_connectivity" in text


def test_anchors_file_replaces_the_shipped_anchors(farm30: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe.experiments.anchors as anchors_module

    def never(*_a: object) -> Path:
        raise AssertionError("the shipped (real internet) anchors were read")

    monkeypatch.setattr(anchors_module, "shipped_anchors_path", never)
    ok = next(s for s in farm30.sites if s.kind == "ok")
    port = ok.url.rsplit(":", 1)[1].strip("/")
    lab_anchors = tmp_path / "lab-anchors.csv"
    lab_anchors.write_text("url,category_code\n"
                           f"tcp://{ok.ip}:{port},ANCHOR\ndns://{farm30.resolver},ANCHOR\ntcp://{ok.ip}:1,ANCHOR\n",
                           encoding="utf-8")
    out = tmp_path / "out"
    code, text = invoke("--anchors", "--anchors-file", str(lab_anchors), "--url", ok.url, "--resolver", farm30.resolver,
                        "--output", str(out), "--no-progress")
    assert code == 0, text
    assert "Measuring 3 anchors, then 1 input(s)" in text
    got = query(out, "SELECT experiment, count(*), count(DISTINCT run_id) FROM @M GROUP BY ALL ORDER BY 1")
    assert got == [("anchors", 3, 1), ("web_connectivity", 1, 1)]
    # Trap: --anchors-file alone measures no anchors silently; it is a usage error.
    code, text = invoke("--anchors-file", str(lab_anchors), "--url", ok.url, "--resolver", farm30.resolver,
                        "--output", str(tmp_path / "out2"), "--no-progress")
    assert code == 2 and "--anchors-file goes with --anchors" in text, text


def test_an_unwritable_dataset_is_one_clear_error(farm30: Farm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements").write_text("not a directory")  # every Parquet write must fail
    ok = next(s for s in farm30.sites if s.kind == "ok")
    code, text = invoke("--url", ok.url, "--resolver", farm30.resolver, "--output", str(out), "--no-progress")
    assert code == 1, text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "cannot write" in errors[0], text
    assert "Traceback" not in text


def test_control_helper_rows_come_with_the_probe_rows(farm30: Farm, tmp_path: Path) -> None:
    import asyncio
    import threading

    from loopfarm import lab_settings

    from probe.control_server import ControlServer, ServerConfig
    from probe.experiments.base import Vantage

    # A control helper on loopback, in a thread of its own (the CLI runs its own event loop).
    config = ServerConfig(
        host="127.0.0.1", port=0, allow_private=True, settings=lab_settings(farm30),
        vantage=Vantage(role="control", probe_cc="DE"),
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    address: list[tuple[str, int]] = []

    async def serve() -> None:
        async with ControlServer(config) as server:
            address.append(server.address)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        host, port = address[0]
        ok = next(s for s in farm30.sites if s.kind == "ok")
        out = tmp_path / "out"
        code, text = invoke("--url", ok.url, "--resolver", farm30.resolver, "--control", f"http://{host}:{port}",
                            "--cc", "IR", "--asn", "AS64496", "--output", str(out), "--no-progress")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    assert code == 0, text
    assert "control measurements: 1" in text
    got = query(out, "SELECT role, probe_cc, measurement_id, control_for FROM @M ORDER BY role DESC")
    (p_role, p_cc, p_id, p_for), (c_role, c_cc, _, c_for) = got
    assert (p_role, p_cc, p_for) == ("probe", "IR", None)
    assert (c_role, c_cc, c_for) == ("control", "DE", p_id)
