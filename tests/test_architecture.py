"""The house's corridors (docs/architecture.md), read from the imports themselves (ast, every
import in a module, also those inside functions): the probe never imports the analyzer or the
command; the analyzer reads from the probe only its ground floor (schema, scrub, dataset); the
schema imports nothing of the project; experiments never write files (no dataset module); the
collector reads the same ground floor as the analyzer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = ("probe", "analysis", "vantage", "collector")
# What the analyzer may import from the probe: the data model, the scrubber, the dataset on
# disk and the exception root. Everything else of the probe (network layer, experiments,
# runner) is the probe's.
ANALYSIS_MAY_IMPORT = ("probe", "probe.schema", "probe.scrub", "probe.dataset", "probe.errors")


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def project(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in PACKAGES}


def is_module(name: str) -> bool:
    parts = name.split(".")
    base = REPO.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_package_has_modules() -> None:
    # The rules below would pass vacuously over a renamed or empty package.
    for package in PACKAGES:
        assert len(modules(package)) >= 3, package


def test_probe_never_imports_the_analyzer_or_the_command() -> None:
    bad = [(p.relative_to(REPO), n) for p in modules("probe") for n in project(imports(p))
           if n.split(".")[0] in ("analysis", "vantage")]
    assert bad == []


def test_analysis_reads_only_the_probes_ground_floor() -> None:
    bad = []
    for p in modules("analysis"):
        for n in project(imports(p)):
            if n.split(".")[0] == "vantage":
                bad.append((p.relative_to(REPO), n))
            # `from probe.schema import X` also yields probe.schema.X: judge the module part.
            elif n.split(".")[0] == "probe" and is_module(n) and n not in ANALYSIS_MAY_IMPORT:
                bad.append((p.relative_to(REPO), n))
    assert bad == []


def test_the_collector_reads_only_the_probes_ground_floor() -> None:
    # The collector validates rows with the probe's own contract and writes with the one
    # dataset module; it never measures, judges or runs commands.
    bad = [(p.relative_to(REPO), n) for p in modules("collector") for n in project(imports(p))
           if n.split(".")[0] in ("analysis", "vantage")
           or (n.split(".")[0] == "probe" and is_module(n) and n not in ANALYSIS_MAY_IMPORT)]
    assert bad == []
    assert any(n.startswith("probe.dataset") for p in modules("collector") for n in imports(p))


def test_the_schema_imports_nothing_of_the_project() -> None:
    assert project(imports(REPO / "probe" / "schema.py")) == set()


def test_the_exception_root_imports_nothing_and_every_error_descends_from_it() -> None:
    # The root sits on the ground floor: every package may import it.
    assert imports(REPO / "probe" / "errors.py") == {"__future__", "__future__.annotations"}
    classes: dict[str, tuple[str, set[str]]] = {}  # class name -> (where, base names)
    for package in PACKAGES:
        for p in modules(package):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                    classes[node.name] = (str(p.relative_to(REPO)), bases)
    # Descendants of the root, through the project's own classes (VerdictError -> SparkEngineError).
    tree = {"VantageError"}
    while True:
        grown = tree | {name for name, (_, bases) in classes.items() if bases & tree}
        if grown == tree:
            break
        tree = grown
    outside = [f"{where}:{name}({', '.join(sorted(bases))})" for name, (where, bases) in classes.items()
               if name.endswith("Error") and name not in tree and not bases & _OUTSIDE_OK]
    assert outside == []


# Errors deliberately outside the tree (probe/errors.py says why): network errors that
# classify() turns into failure strings, click's own exceptions, and broken invariants (a bug
# to report, not a user's mistake to put in one line).
_OUTSIDE_OK = {"OSError", "ConnectError", "ClickException", "AssertionError"}


def test_experiments_never_write_files() -> None:
    # Experiments return records; the runner writes them (one writer, one run lock).
    writers = ("probe.dataset", "probe.store")
    bad = [(p.relative_to(REPO), n) for p in modules("probe/experiments") for n in imports(p)
           if n.startswith(writers)]
    assert bad == []


@pytest.mark.parametrize("rule", ["probe", "analysis"])
def test_the_checker_sees_a_forbidden_import(rule: str, tmp_path: Path) -> None:
    """Trap for the checker itself: a forbidden import written in a module is found (inside a
    function too), an allowed one is not."""
    bad = tmp_path / "m.py"
    forbidden = "analysis.pipeline" if rule == "probe" else "probe.runner"
    bad.write_text(f"def f():\n    from {forbidden} import x\n    from probe.schema import Measurement\n")
    found = project(imports(bad))
    assert forbidden in found
    if rule == "analysis":
        assert [n for n in found if is_module(n) and n not in ANALYSIS_MAY_IMPORT] == ["probe.runner"]
