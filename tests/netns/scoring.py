"""Verdicts against the lab's ground truth: a confusion table of statuses, precision and recall
of `blocked`, and per-layer agreement. Pure functions, tested without root.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "blocked", "down", "probe_failure", "no_control", "no_connectivity")
MISSING = "(none)"  # no verdict came back for a scenario


@dataclass(frozen=True)
class Truth:
    name: str
    input: str
    status: str
    layer: str | None
    description: str = ""


@dataclass(frozen=True)
class Scored:
    truth: Truth
    status: str
    layer: str | None
    method: str | None

    @property
    def layer_right(self) -> bool:
        return self.status == "blocked" and self.layer == self.truth.layer


@dataclass
class Score:
    rows: list[Scored]
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def tp(self) -> int:
        return sum(1 for r in self.rows if r.truth.status == "blocked" and r.status == "blocked")

    @property
    def fp(self) -> int:
        return sum(1 for r in self.rows if r.truth.status != "blocked" and r.status == "blocked")

    @property
    def fn(self) -> int:
        return sum(1 for r in self.rows if r.truth.status == "blocked" and r.status != "blocked")

    @property
    def precision(self) -> float:
        called = self.tp + self.fp
        return self.tp / called if called else 0.0

    @property
    def recall(self) -> float:
        actual = self.tp + self.fn
        return self.tp / actual if actual else 0.0

    @property
    def wrong_layer(self) -> list[Scored]:
        """Blocked scenarios whose verdict is not blocked at the true layer."""
        return [r for r in self.rows if r.truth.status == "blocked" and not r.layer_right]

    @property
    def false_blocks(self) -> list[Scored]:
        """ok or down scenarios the analyzer called blocked."""
        return [r for r in self.rows if r.truth.status in ("ok", "down") and r.status == "blocked"]

    @property
    def status_agreement(self) -> int:
        return sum(1 for r in self.rows if r.status == r.truth.status)

    def layer_agreement(self) -> dict[str, tuple[int, int]]:
        """For each true blocking layer: (scenarios with the layer right, scenarios)."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            if r.truth.status != "blocked" or r.truth.layer is None:
                continue
            right, total = out.get(r.truth.layer, (0, 0))
            out[r.truth.layer] = (right + r.layer_right, total + 1)
        return out


def score(truths: Iterable[Truth], verdicts: Sequence[Mapping[str, Any]]) -> Score:
    """Score every verdict row of a probe measurement of a scenario (one row per measurement);
    a scenario with no verdict at all counts once, as MISSING."""
    by_input: dict[str, list[Mapping[str, Any]]] = {}
    for v in verdicts:
        by_input.setdefault(str(v.get("input")), []).append(v)
    result = Score(rows=[])
    for t in truths:
        for v in by_input.get(t.input) or [{}]:
            status = str(v.get("status") or MISSING)
            row = Scored(t, status, v.get("layer"), v.get("method"))
            result.rows.append(row)
            result.confusion[(t.status, status)] += 1
    return result


def render(result: Score) -> str:
    """The per-scenario table, the confusion table and the figures, as plain text."""
    lines = []
    w = max((len(r.truth.name) for r in result.rows), default=8)
    lines.append(f"{'scenario':<{w}}  {'truth':<22} {'verdict':<22} method")
    for r in result.rows:
        truth = f"{r.truth.status}/{r.truth.layer or '-'}"
        got = f"{r.status}/{r.layer or '-'}"
        mark = "" if (r.status == r.truth.status and (r.truth.status != "blocked" or r.layer_right)) else "  <-- wrong"
        lines.append(f"{r.truth.name:<{w}}  {truth:<22} {got:<22} {r.method or '-'}{mark}")
    predicted = [s for s in STATUSES if any(k[1] == s for k in result.confusion)]
    predicted += sorted({k[1] for k in result.confusion} - set(predicted))
    actual = [s for s in STATUSES if any(k[0] == s for k in result.confusion)]
    lines.append("")
    lines.append("confusion (rows: truth, columns: verdict)")
    lines.append(f"{'':<10}" + "".join(f"{p:>14}" for p in predicted))
    for a in actual:
        lines.append(f"{a:<10}" + "".join(f"{result.confusion.get((a, p), 0):>14}" for p in predicted))
    lines.append("")
    lines.append(
        f"blocked: precision {result.precision:.3f}  recall {result.recall:.3f}  "
        f"(tp {result.tp}, fp {result.fp}, fn {result.fn}); status agreement "
        f"{result.status_agreement}/{len(result.rows)}"
    )
    layers = ", ".join(f"{layer} {right}/{total}" for layer, (right, total) in sorted(result.layer_agreement().items()))
    lines.append(f"layer agreement on blocked scenarios: {layers or '-'}")
    return "\n".join(lines)
