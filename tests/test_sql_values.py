"""Values are bound, never pasted into SQL text (docs/architecture.md, "Stages talk through
values"): read with ``ast``, every f-string, ``.format``, ``.replace`` or ``%`` that builds SQL
in ``analysis/`` and ``vantage/`` interpolates only a quoted identifier (``quote_ident(...)``)
or a site listed below with the reason it is no value (the module's own SQL fragments and
column names) or cannot be bound (DuckDB takes no parameter in a view's definition or in
``COMMENT ON``). A new value pasted into SQL fails here: bind it (``con.execute(sql, params)``,
``$name``), or use the relational API (``con.read_parquet``, ``rel.filter`` with constant
expressions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

SCANNED = ("analysis", "vantage")
# Owned by another engineer while issue 18's verdict-stage step is under way; their SQL is
# scanned once that step is merged (remove them from here then, and list what remains).
NOT_YET: set[str] = set()

# Upper-case SQL words as this project writes SQL (prose and messages are lower case).
SQL_WORDS = re.compile(r"\b(SELECT|FROM|WHERE|JOIN|CREATE|DROP|COMMENT ON|DESCRIBE|INSERT|UPDATE|DELETE|"
                       r"GROUP BY|ORDER BY|FILTER|CAST|CASE WHEN|EXCLUDE|QUALIFY)\b")

# (module, enclosing function or "<module>", the interpolated expression as ast.unparse writes
# it) -> why it is no value, or why it cannot be bound.
ALLOWED: dict[tuple[str, str, str], str] = {}


def allow(module: str, function: str, expressions: list[str], why: str) -> None:
    for e in expressions:
        ALLOWED[(f"analysis/{module}", function, e)] = why


# Where DuckDB binds nothing: the one helper, analysis.db.quote_literal, quotes the value.
VIEW = "a view's definition takes no parameter (DuckDB: the statement can't be prepared); quoted by quote_literal"
allow("db.py", "_file_list", ["quote_literal(str(f))"], VIEW + " (the dataset files of the views analysts open)")
allow("db.py", "_follow_ups", ["quote_literal(e)"], VIEW + " (probe.schema.FOLLOW_UP_EXPERIMENTS)")
allow("db.py", "open_datasets", ["_file_list(found.hive)", "_file_list(found.plain)", "_follow_ups()"], VIEW)
allow("db.py", "<module>", ["_follow_ups()"], VIEW + " (the path_traces view)")
allow("aggregates.py", "_fill", ["quote_literal(text)"], "COMMENT ON takes no parameter; quoted by quote_literal")
allow("aggregates.py", "_fill", ["kind"], "the keyword TABLE or VIEW, chosen from Vantage's own object names")

# The rules' thresholds: numbers written in the code (never input), rendered once at import into
# the rule SQL that the DuckDB stage and docs/analysis.md share; binding them would thread
# parameters through every statement of the decision tree for no change in what runs.
RULE_CONSTANT = "a threshold constant of the code (never input), written into the rule SQL at import"
allow("rules.py", "<module>", ["BODY_PROPORTION", "THROTTLE_FACTOR"], RULE_CONSTANT)
allow("rules.py", "<module>", ["_COMMON", "h"], "the list of common header names, rules.COMMON_HEADERS (code constants)")
allow("rules.py", "measurements_view_sql", ["extra"], "db.missing_columns_sql's NULL-typed column list (identifiers)")
allow("verdicts.py", "_load", ["view"], "quote_ident of the stage's own table name")

# SQL text of the module's own: fragments and column lists, no value in them.
FRAGMENT = "SQL text made of the module's own constants (column names, expressions), no value"
allow("db.py", "<module>", ["_KEYS"], FRAGMENT)
allow("db.py", "_flat", ["_KEYS", "outer_idx", "alias", "column", "idx"], FRAGMENT + " (VIEWS' flattened columns)")
allow("db.py", "open_datasets", ["view", "fill", "PATH_TRACES_VIEW"], FRAGMENT + " (the views' own text)")
allow("db.py", "missing_columns_sql", ["types[n]"], "a column's type name from DuckDB (a type cannot be a parameter)")
allow("db.py", "create_views", ["sql"], FRAGMENT + " (VIEWS)")
allow("aggregates.py", "create_aggregates_view", ["AGGREGATES_SQL"], FRAGMENT)
allow("connectivity.py", "<module>", ["facts_sql()", "SIDE_SQL.format(facts='m')", "network_failed_sql()",
                                      "decision_sql('(' + COUNTS_SQL.format(rows='_vt_conn_rows') + ')')",
                                      ".format: 'm'", ".format: '_vt_conn_rows'"],
      FRAGMENT + "; the relation names are this module's (values are bound: FAILED_PARAMS, DECISION_PARAMS)")
allow("connectivity.py", "facts_sql", ["key", "_TAG_OK", "source"],
      FRAGMENT + " (the source relation and key expression of the DuckDB or Spark caller)")
allow("connectivity.py", "decision_sql", ["counts"], "the name of the counts relation (thresholds bound: DECISION_PARAMS)")
allow("detector.py", "baselined_signals", ["den", "value", "name"], FRAGMENT + " (RATE_SIGNALS)")
allow("messaging.py", "messaging_table", ["obs"], FRAGMENT + " (_OBS, with or without the asn field)")
allow("signals.py", "measurement_facts_sql", ["reached", "method", "has['dns']", "fail['dns']", "has['tcp']",
                                              "fail['tcp']", "has['tls']", "fail['tls']", "has['http']", "http_obs",
                                              "source"], FRAGMENT + " (per-layer expressions)")
allow("signals.py", "hourly_sql", ["cols", "source"], FRAGMENT + " (COUNT_COLUMNS over the caller's relation)")
allow("signals.py", "measurement_facts", ["name", "measurement_facts_sql()"],
      "a generated private table name, quoted by quote_ident; " + FRAGMENT)
allow("spark_engine.py", "connectivity_spark",
      ["conn.facts_sql('batch', key='input')", "conn.network_failed_sql('m.c_reached', 'm.c_resolved')",
       "conn.COUNTS_SQL.format(rows=f'({failed})')", ".format: f'({failed})'", "facts_sql"],
      FRAGMENT + " (connectivity's SQL per batch; FAILED_PARAMS bound)")
allow("spark_engine.py", "signal_counts_spark", ["sums", "sig.measurement_facts_sql('batch')"], FRAGMENT + " (_SIGNAL_SUMS)")
allow("spark_engine.py", "<module>", ["layer", "'has' if what == 'n' else 'fail'"], FRAGMENT + " (_SIGNAL_SUMS' columns)")
allow("throughput.py", "<module>", ["_HOST"], FRAGMENT + " (the host of a URL)")


def _sql_text(node: ast.AST, consts: dict[str, str]) -> str | None:
    """The literal text of a string expression (its constant parts), None when it is none."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(node, ast.Name):
        return consts.get(node.id)
    if isinstance(node, ast.Attribute):  # conn.COUNTS_SQL: a constant of another module
        return consts.get(node.attr) or (node.attr if node.attr.endswith("_SQL") else None)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _sql_text(node.left, consts), _sql_text(node.right, consts)
        return None if left is None and right is None else (left or "") + (right or "")
    return None


def _is_sql(text: str | None) -> bool:
    return bool(text) and (SQL_WORDS.search(text or "") is not None or "_SQL" in (text or ""))


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound to string constants or f-strings (their literal text)."""
    out: dict[str, str] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        for t in targets:
            if isinstance(t, ast.Name) and value is not None:
                text = _sql_text(value, out)
                if text is not None:
                    out[t.id] = text
    return out


def _owner(tree: ast.Module) -> dict[int, str]:
    """id(node) -> the qualified name of the function (or "<module>") it belongs to."""
    owner: dict[int, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = child.name if name == "<module>" else f"{name}.{child.name}"
            owner[id(child)] = inner
            visit(child, inner)

    visit(tree, "<module>")
    return owner


def _called(expr: ast.expr) -> str | None:
    return getattr(expr.func, "id", getattr(expr.func, "attr", None)) if isinstance(expr, ast.Call) else None


def _quoted(expr: ast.expr) -> bool:
    """``quote_ident(...)`` or ``ident_list(...)``: identifiers, quoted."""
    return _called(expr) in ("quote_ident", "ident_list")


def pasted(path: Path, root: Path = REPO) -> list[tuple[str, str, str]]:
    """(module, function, expression) of every expression interpolated into SQL text in ``path``
    that is not a quoted identifier."""
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    consts = _module_strings(tree)
    owner = _owner(tree)
    out: list[tuple[str, str, str]] = []
    for node in ast.walk(tree):
        where = owner.get(id(node), "<module>")
        if isinstance(node, ast.JoinedStr) and (_is_sql(_sql_text(node, consts))
                                                or (_sql_text(node, consts) or "").strip() == "''"):
            # SQL text, or an SQL string literal made by hand (f"'{v}'")
            for v in node.values:
                if isinstance(v, ast.FormattedValue) and not _quoted(v.value):
                    out.append((rel, where, ast.unparse(v.value)))
        elif _called(node) == "quote_literal" and isinstance(node, ast.Call):
            # the one helper for a literal where DuckDB binds nothing: every use is listed
            out.append((rel, where, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("format", "replace") and _is_sql(_sql_text(node.func.value, consts))):
            for a in [*node.args, *(k.value for k in node.keywords)]:
                if not _quoted(a) and not (node.func.attr == "replace" and isinstance(a, ast.Constant)
                                           and a is node.args[0]):
                    out.append((rel, where, f".{node.func.attr}: {ast.unparse(a)}"))
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)
              and _is_sql(_sql_text(node.left, consts))):
            out.append((rel, where, f"%: {ast.unparse(node.right)}"))
    return out


def scanned_files() -> list[Path]:
    return [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))
            if p.relative_to(REPO).as_posix() not in NOT_YET]


def test_no_value_is_pasted_into_sql() -> None:
    found = [site for p in scanned_files() for site in pasted(p)]
    new = [site for site in found if site not in ALLOWED]
    assert new == [], "SQL built with pasted text (bind the value, or quote_ident an identifier):\n" + "\n".join(
        f"  {m} {f}: {{{e}}}" for m, f, e in new)
    stale = sorted(set(ALLOWED) - set(found))
    assert stale == [], f"allow-list entries no longer found (remove them): {stale}"


@pytest.mark.parametrize("source, bad", [
    ('def f(con, t):\n    con.execute(f"SELECT * FROM m WHERE hour >= {t}")\n', True),
    ('X_SQL = "SELECT * FROM m WHERE n >= {n}"\ndef f(con, n):\n    con.sql(X_SQL.format(n=n))\n', True),
    ('Y_SQL = "SELECT * FROM m WHERE w <= $w"\ndef f(con, w):\n    con.sql(Y_SQL.replace("$w", str(w)))\n', True),
    ('def f(con, c):\n    con.sql(f"SELECT {quote_ident(c)} FROM m")\n', False),
    ('def f(con, t):\n    con.execute("SELECT * FROM m WHERE hour >= $t", {"t": t})\n', False),
    ('def f(n):\n    return f"{n} files skipped from the list"\n', False),  # prose, no SQL
    ('def f(vs):\n    return "(" + ", ".join(f"\'{v}\'" for v in vs) + ")"\n', True),  # a literal by hand
    ('def f(v):\n    return quote_literal(v)\n', True),  # the helper for unbindable places: listed
])
def test_the_checker_sees_a_pasted_value(source: str, bad: bool, tmp_path: Path) -> None:
    # traps beside the pasted values: a bound value, a quoted identifier and prose are not flagged
    f = tmp_path / "m.py"
    f.write_text(source, encoding="utf-8")
    assert bool(pasted(f, tmp_path)) is bad
