"""Messaging apps against fake app endpoints in the netns lab, measured by the real `vantage run`
as probe and control: Telegram's DCs dropped by address, WhatsApp's registration DNS-blocked,
Signal's TLS reset by SNI and Messenger's web alone blocked are each called blocked at the right
function and layer; with no censor nothing is; an endpoint down for probe and control alike is
down, not blocked (and one Telegram DC down leaves Telegram working)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import SERVER_PROGRAMS, entered, require_lab
from .lab import VENV_BIN, cli_options
from .messaging_lab import APPS, PHASES, TRUTH, MessagingLab, app_truth

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def messaging_lab(request: pytest.FixtureRequest) -> Iterator[MessagingLab]:
    require_lab(SERVER_PROGRAMS)
    if cli_options("run") is None or "--messaging-endpoints" not in (cli_options("run") or set()):
        pytest.skip("`vantage run --messaging-endpoints` is not available in this build")
    assert (VENV_BIN / "vantage").exists(), f"no vantage entry point in {VENV_BIN}"
    yield from entered(request, MessagingLab())


@pytest.fixture(scope="module")
def messaging_run(messaging_lab: MessagingLab) -> dict[str, list[dict[str, object]]]:
    return messaging_lab.run(step=lambda msg: print(f"[netns messaging lab] {msg}", flush=True))


def test_every_app_and_function_gets_the_truths_verdict(messaging_run: dict[str, list[dict[str, object]]]) -> None:
    rows = []  # (phase, app, function, truth status, truth layer, verdict status, verdict layer, method)
    for phase in PHASES:
        verdicts = {str(v["experiment"]): v for v in messaging_run[phase]}
        assert sorted(verdicts) == sorted(APPS), (phase, sorted(verdicts))
        for app in APPS:
            v = verdicts[app]
            functions = {f["function"]: f for f in v["functions"] or []}  # type: ignore[attr-defined]
            for (a, function), (status, layer) in sorted(TRUTH[phase].items()):
                if a != app:
                    continue
                f = functions.get(function, {})
                rows.append((phase, app, function, status, layer, f.get("status", "(none)"), f.get("layer"),
                             f"{f.get('failed')}/{f.get('endpoints')} endpoints failed {f.get('failure') or ''}"))
            t_status, t_layer, t_method = app_truth(phase, app)
            rows.append((phase, app, "(app)", t_status, t_layer, str(v["status"]), v["layer"], str(v["method"])))

    head = f"{'phase':<9} {'app':<19} {'function':<13} {'truth':<16} {'verdict':<16} method, or endpoints and failure"
    print("\n" + head + "\n" + "-" * len(head))
    for phase, app, function, ts, tl, vs, vl, detail in rows:
        truth = ts + (f"/{tl}" if tl else "")
        verdict = vs + (f"/{vl}" if vl and vs == "blocked" else "")
        mark = "" if (ts, tl if ts == "blocked" else None) == (vs, vl if vs == "blocked" else None) else "  <-- WRONG"
        print(f"{phase:<9} {app:<19} {function:<13} {truth:<16} {verdict:<16} {detail}{mark}")

    for level in ("function", "app"):
        scored = [r for r in rows if (r[2] == "(app)") == (level == "app")]
        tp = sum(1 for r in scored if r[3] == "blocked" and r[5] == "blocked")
        fp = sum(1 for r in scored if r[3] != "blocked" and r[5] == "blocked")
        fn = sum(1 for r in scored if r[3] == "blocked" and r[5] != "blocked")
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        layers = sum(1 for r in scored if r[3] == "blocked" and r[5] == "blocked" and r[4] == r[6])
        print(f"{level} level: {len(scored)} rows, blocked tp={tp} fp={fp} fn={fn}, precision {precision:.2f}, "
              f"recall {recall:.2f}, layer right {layers}/{tp}")
        assert fp == 0, [r for r in scored if r[3] != "blocked" and r[5] == "blocked"]
        assert precision == 1.0 and recall == 1.0 and layers == tp
    # The down phase's trap is real: Telegram's DC1 failed on both ports, and Telegram still works.
    down = {str(v["experiment"]): v for v in messaging_run["down"]}
    (tg,) = [f for f in down["telegram"]["functions"] if f["function"] == "messaging"]  # type: ignore[union-attr,index]
    assert (tg["status"], tg["failed"], tg["endpoints"]) == ("ok", 2, 6), tg
    wrong = [r for r in rows if r[3] != r[5] or (r[3] == "blocked" and r[4] != r[6])]
    assert not wrong, wrong
    # The app-level method names the rule (messaging.<layer>, down.messaging, ok.messaging).
    for phase in PHASES:
        for v in messaging_run[phase]:
            assert v["method"] == app_truth(phase, str(v["experiment"]))[2], (phase, v["experiment"], v["method"])
