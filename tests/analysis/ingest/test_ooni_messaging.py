"""OONI's messaging-app measurements (signal, telegram, whatsapp, facebook_messenger) imported and
judged by Vantage's analyzer: per function, the verdict agrees with OONI's own flags in test_keys.
Every such sample in ../shared/data/ooni/ (spec examples and fastpath fixtures) is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.db import open_datasets
from analysis.ingest.ooni import import_ooni
from analysis.ingest.ooni.messaging import TEST_NAMES
from analysis.messaging import functions_text
from analysis.verdicts import compute_verdicts
from tests.support.paths import SHARED_DATA

OONI = SHARED_DATA / "ooni"


def _docs(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def messaging_samples() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for folder in ("spec-examples", "fixtures"):
        for path in sorted((OONI / folder).glob("*.json")):
            out += [(path, d) for d in _docs(path) if isinstance(d, dict) and d.get("test_name") in TEST_NAMES]
    return out


def _short(path: Path) -> str:
    name = path.name.removesuffix(".json")
    return name.replace("ooni__spec__nettests__", "spec:").replace("ooni__backend__fastpath__fastpath__tests__data__",
                                                                     "fastpath:").replace(".md__example-line", "@")


def ooni_flags(doc: dict[str, Any]) -> dict[str, bool]:
    """OONI's per-function blocking flags, as each test's spec defines them."""
    tk = doc["test_keys"]
    name = doc["test_name"]
    if name == "signal":
        return {"messaging": tk.get("signal_backend_status") == "blocked"}
    if name == "telegram":
        return {"messaging": bool(tk.get("telegram_tcp_blocking") or tk.get("telegram_http_blocking")),
                "web": tk.get("telegram_web_status") == "blocked"}
    if name == "whatsapp":
        return {"registration": tk.get("registration_server_status") == "blocked",
                "messaging": tk.get("whatsapp_endpoints_status") == "blocked",
                "web": tk.get("whatsapp_web_status") == "blocked"}
    return {"messaging": bool(tk.get("facebook_tcp_blocking") or tk.get("facebook_dns_blocking"))}


def test_every_messaging_sample_agrees_with_oonis_flags(tmp_path: Path) -> None:
    samples = messaging_samples()
    assert {d["test_name"] for _, d in samples} == set(TEST_NAMES)
    src = tmp_path / "src"
    src.mkdir()
    for i, (_, doc) in enumerate(samples):
        (src / f"{i}.json").write_text(json.dumps(doc), encoding="utf-8")
    summary = import_ooni([src], tmp_path / "ds")
    assert summary.malformed == 0 and summary.measurements == len(samples), summary.errors
    con = open_datasets([tmp_path / "ds"])
    try:
        table = compute_verdicts(con)
        uid = dict(con.sql("SELECT measurement_id, origin_uid FROM measurements").fetchall())
    finally:
        con.close()
    by_uid = {uid[r["measurement_id"]]: r for r in table.to_pylist()}
    from analysis.ingest.ooni.common import origin_key

    lines = [f"{'sample':<36} {'test':<18} {'function':<12} {'OONI':<8} {'Vantage':<8} {'agree':<5} app verdict"]
    disagreements = []
    blocked_seen = ok_seen = 0
    for path, doc in samples:
        v = by_uid[origin_key(doc)]
        ours = {f["function"]: f["status"] for f in v["functions"] or []}
        flags = ooni_flags(doc)
        for function, blocked in flags.items():
            # A function the record holds no step of (old telegram without web requests) is
            # not blocked by either side's reading.
            vantage_blocked = ours.get(function) == "blocked"
            agree = vantage_blocked == blocked
            blocked_seen += blocked
            ok_seen += not blocked
            lines.append(f"{_short(path):<36} {doc['test_name']:<18} {function:<12} {'blocked' if blocked else 'ok':<8} "
                         f"{ours.get(function, '-'):<8} {'yes' if agree else 'NO':<5} {v['status']} ({v['method']})")
            if not agree:
                disagreements.append((path.name, function, blocked, ours, functions_text(v["functions"])))
        # The app-level verdict is blocked exactly when OONI flags some function.
        assert (v["status"] == "blocked") == any(flags.values()), (path.name, v["status"], v["method"], flags)
        assert v["method"].startswith(("messaging.", "ok.messaging")), v["method"]
    print("\n" + "\n".join(lines))
    print(f"{len(samples)} measurements, {blocked_seen + ok_seen} function flags "
          f"({blocked_seen} blocked, {ok_seen} ok), {len(disagreements)} disagreements")
    assert not disagreements, disagreements
    assert blocked_seen >= 3 and ok_seen >= 5  # the samples hold both outcomes


def test_observations_are_tagged_by_function(tmp_path: Path) -> None:
    path = OONI / "spec-examples" / "ooni__spec__nettests__ts-018-whatsapp.md__example-line278.json"
    import_ooni([path], tmp_path / "ds")
    con = open_datasets([tmp_path / "ds"])
    try:
        ((inp, http_tags, tcp_tags),) = con.sql(
            "SELECT input, list_transform(http, lambda h: h.tag), list_distinct(list_transform(tcp, lambda c: "
            "split_part(c.tag, '@', 1))) FROM measurements").fetchall()
    finally:
        con.close()
    assert inp == "whatsapp"
    assert sorted(http_tags) == ["registration@v.whatsapp.net:443", "web@web.whatsapp.com:443"]
    assert "messaging" in tcp_tags
