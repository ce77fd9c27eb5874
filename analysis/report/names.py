"""Names a reader knows: countries (pycountry), networks (the measurements' own network names and
the organisation names DNS answers carry), and the rule that fired in plain words (the rule table),
never an internal identifier or a repository path."""

from __future__ import annotations

import re
from typing import Any

import duckdb
import pycountry

from analysis.rules import RULES, RULES_BY_ID, Rule

# Where no country could be told (OONI's "ZZ", a probe that hid it) the code means nothing to a reader.
_UNKNOWN_CC = {"ZZ", "XX", "", None}

STATUS_WORDS = {
    "blocked": "blocked (an anomaly the rules attribute to interference)",
    "ok": "reachable",
    "down": "down everywhere (the control failed too: an outage, not censorship)",
    "no_control": "not judged: no usable control measurement",
    "probe_failure": "not judged: the measurement itself failed to run",
    "no_connectivity": "not judged: the vantage point had no network then",
    "throttled": "throttled (reachable, but slowed down against the control and the network's other hosts)",
}


def country_name(cc: str | None) -> str:
    """``IR`` -> ``Iran``: the common name where ISO's official one is long-winded."""
    if cc in _UNKNOWN_CC:
        return "Unknown country"
    country = pycountry.countries.get(alpha_2=str(cc).upper())
    if country is None:
        return str(cc)
    return str(getattr(country, "common_name", None) or country.name)


def country_label(cc: str | None) -> str:
    return f"{country_name(cc)} ({cc})" if cc not in _UNKNOWN_CC else country_name(cc)


def network_names(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """ASN -> organisation: the probe's own network name (most frequent), else the organisation
    name a DNS answer carried for that ASN (OONI imports and the ASN database fill it)."""
    names: dict[str, str] = {}
    for sql in (_ANSWER_ORGS, _PROBE_NETWORKS):  # the probe's own name wins
        try:
            rows = con.sql(sql).fetchall()
        except duckdb.Error:
            continue  # a dataset without these columns: the ASN alone is shown
        names.update({_asn(a): str(o) for a, o in rows if _asn(a)})
    return names


_ANSWER_ORGS = """
SELECT asn, arg_max(org, n) FROM (
  SELECT a.asn AS asn, a.as_org_name AS org, count(*) AS n
  FROM (SELECT unnest(flatten(list_transform(dns, lambda q: q.answers))) AS a FROM measurements)
  WHERE a.asn IS NOT NULL AND a.as_org_name IS NOT NULL AND a.as_org_name <> '' GROUP BY a.asn, a.as_org_name)
GROUP BY asn
"""
_PROBE_NETWORKS = """
SELECT probe_asn, arg_max(probe_network, n) FROM (
  SELECT probe_asn, probe_network, count(*) AS n FROM measurements
  WHERE probe_asn IS NOT NULL AND probe_network IS NOT NULL AND probe_network <> '' GROUP BY probe_asn, probe_network)
GROUP BY probe_asn
"""


def _asn(value: Any) -> str:
    s = str(value or "").strip().upper()
    if not s:
        return ""
    return s if s.startswith("AS") else f"AS{s}"


def network_label(asn: str | None, names: dict[str, str]) -> str:
    if not asn or asn == "?":
        return "Unknown network"
    name = names.get(_asn(asn))
    return f"{name} ({asn})" if name else str(asn)


_PATHS = re.compile(r"\s*\([^()]*\.(?:py|md)\)|; the method ends with [^.;]*")


def plain(text: str) -> str:
    """A rule's explanation for the public: no repository paths, no code quoting."""
    return _PATHS.sub("", text).replace("`", "")


def rule_of(method: str | None) -> Rule | None:
    if not method:
        return None
    return RULES_BY_ID.get(method.split(":", 1)[0])


def rule_text(method: str | None) -> str:
    """The rule that fired, in words; a blockpage rule names its fingerprint."""
    rule = rule_of(method)
    if rule is None:
        return "no rule recorded" if not method else f"rule {method}"
    text = plain(rule.explanation)
    if method and ":" in method:
        text += f" Fingerprint: {method.split(':', 1)[1]}."
    return text


def rule_table() -> list[Rule]:
    return list(RULES)
