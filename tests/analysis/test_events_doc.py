"""docs/shutdowns.md documents every column of the events table, every kind and every rule id
the classifier can give (the docs track the code)."""

from __future__ import annotations

import re
from pathlib import Path

from analysis import classify, events, evidence
from tests.support.paths import DOCS

DOC = (DOCS / "shutdowns.md").read_text()
# the rule ids are given by the decisions (classify), the evidence gathering and the merging
SOURCE = "".join(Path(m.__file__).read_text() for m in (classify, evidence, events))


def _section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_every_event_column_is_documented() -> None:
    table = _section("The event table")
    documented = {name.strip() for row in re.findall(r"^\| ([^|]+) \|", table, re.M) for name in row.split(",")}
    assert set(events.EVENT_SCHEMA.names) <= documented, set(events.EVENT_SCHEMA.names) - documented
    assert documented - {"column"} <= set(events.EVENT_SCHEMA.names)  # and no column that is gone


def test_every_kind_scope_and_rule_is_documented() -> None:
    for kind in events.KINDS:
        assert f"`{kind}`" in DOC or kind in _section("The event table"), kind
    for scope in events.SCOPES:
        assert f"`{scope}`" in _section("The event table"), scope
    rules = set(re.findall(r'rule(?:=|, base\.rule = |\s*=\s*)"([a-z_]+\.[a-z_]+)"', SOURCE))
    rules |= set(re.findall(r'"((?:shutdown|service_blocking|site_outage|probe_fault|unclassified|connectivity)'
                            r'\.[a-z_]+)"', SOURCE))
    assert len(rules) >= 10, rules  # the pattern still finds the rules
    for rule in rules:
        assert f"`{rule}`" in DOC, rule
