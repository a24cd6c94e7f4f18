"""The WHERE expression's text checked, parsed by DuckDB and rebuilt from an allow-list.

Rules this module keeps (`filters` uses it, `xretrieve.shutdown` closes its parser; nothing
else should):

- `check_text` and `prescan` run before DuckDB's parser: the text is a `str` (or UTF-8 bytes)
  that encodes as UTF-8, has no NUL, at most `WhereLimits.max_chars` characters, no `;`, no
  `)` that closes nothing, and bracket / prefix-operator nesting of at most `max_depth`,
  measured on DuckDB's tokenizer (which does not recurse).
- `parse_one` has DuckDB parse `SELECT <text>` (its parser connection's depth limit keeps
  the JSON tree shallow) and accepts exactly one statement with one select-list item and no
  FROM, WHERE, GROUP BY, HAVING, QUALIFY, SAMPLE, ORDER BY, LIMIT or WITH. The parser
  connection is one per process, opened on first use and used under a lock (a DuckDB
  connection is not safe for concurrent use); `close_parser` closes it, the next parse opens
  a new one.
- `Emitter` walks that tree with allow-lists (node kinds, operators, functions, cast types,
  literal kinds, the metadata's columns), refuses everything else, and writes the SQL DuckDB
  will run: every node in brackets, columns as quoted identifiers, strings with quotes
  doubled, numbers matched against a pattern, operators, functions and types spelt from the
  allow-lists. Nothing of the user's text reaches that SQL except through those spellings.
- Every refusal is an `InputError` with a one-line message (no CLI flag named).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from xretrieve.errors import InputError

__all__ = [
    "DEFAULT_LIMITS",
    "Emitter",
    "WhereLimits",
    "check_text",
    "close_parser",
    "connect",
    "parse_one",
    "prescan",
    "refuse",
]


@dataclass(frozen=True)
class WhereLimits:
    """Bounds on a WHERE expression: its size and nesting, and what one evaluation may use."""

    max_chars: int = 4096
    max_depth: int = 64
    seconds: float = 10.0
    memory: str = "512MB"


DEFAULT_LIMITS = WhereLimits()
# The parser connection's own recursion guard: it keeps the JSON tree shallow enough for
# `json.loads`; `max_depth` is the user-facing limit.
_PARSER_DEPTH = 128
_COMPARE = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "<>",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_LESSTHANOREQUALTO": "<=",
    "COMPARE_DISTINCT_FROM": "IS DISTINCT FROM",
    "COMPARE_NOT_DISTINCT_FROM": "IS NOT DISTINCT FROM",
}
_ARITHMETIC = frozenset({"+", "-", "*", "/", "//", "%", "||"})
_LIKE = {"~~": "LIKE", "!~~": "NOT LIKE", "~~*": "ILIKE", "!~~*": "NOT ILIKE", "~~~": "GLOB"}
_LIKE_ESCAPE = {
    "like_escape": "LIKE",
    "not_like_escape": "NOT LIKE",
    "ilike_escape": "ILIKE",
    "not_ilike_escape": "NOT ILIKE",
}
# Deterministic scalar functions of their arguments (plus the clock); none reads a file, a
# setting or the catalog, and none builds a value much larger than its arguments.
_FUNCTIONS = frozenset(
    """lower upper lcase ucase length strlen starts_with ends_with prefix suffix contains
    regexp_matches regexp_full_match regexp_extract substr substring trim ltrim rtrim
    concat left right strpos position instr octet_length year month day hour
    minute second dayofweek dayofyear week quarter epoch epoch_ms date_part date_trunc
    make_date strftime timezone now today to_days to_hours to_minutes to_seconds to_weeks
    to_months to_years abs round floor ceil ceiling trunc sign sqrt ln log log2 log10 greatest
    least nullif if isnan isinf isfinite""".split()  # noqa: SIM905 (a word list)
)
# Cast targets: plain scalar types, under their spellings, mapped to one name each.
_PLAIN_TYPES = """BOOLEAN TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER
    UBIGINT FLOAT DOUBLE DECIMAL VARCHAR DATE TIME TIMESTAMP TIMESTAMPTZ INTERVAL"""
_TYPES = {t: t for t in _PLAIN_TYPES.split()} | {
    "BOOL": "BOOLEAN",
    "INT": "INTEGER",
    "INT2": "SMALLINT",
    "INT4": "INTEGER",
    "INT8": "BIGINT",
    "REAL": "FLOAT",
    "FLOAT4": "FLOAT",
    "FLOAT8": "DOUBLE",
    "NUMERIC": "DECIMAL",
    "TEXT": "VARCHAR",
    "STRING": "VARCHAR",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}
_NUMBER = re.compile(r"-?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?")
_OPERANDS = (duckdb.token_type.identifier, duckdb.token_type.numeric_const)
_OPERAND_WORDS = frozenset({"NULL", "TRUE", "FALSE"})


def show(text: str) -> str:
    """The expression quoted for a one-line message, shortened when long."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def refuse(text: str, why: str) -> InputError:
    return InputError(f"the WHERE expression {show(text)} {why}")


def connect(limits: WhereLimits = DEFAULT_LIMITS, *, depth: int = 1000) -> Any:
    con = duckdb.connect(
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "threads": 1,
            "memory_limit": limits.memory,
            "max_expression_depth": depth,
        }
    )
    # The progress bar would draw on the terminal; under Jupyter DuckDB refuses to change the
    # setting without ipywidgets (and draws nothing there), so a refusal is harmless.
    with contextlib.suppress(duckdb.Error):
        con.execute("SET enable_progress_bar = false")
    con.execute("SET lock_configuration = true")
    return con


# One parser connection for the process (connecting costs ~20 ms). A DuckDB connection is not
# safe for concurrent use, so the lock is held for creating it, for every parse and for
# closing it; a parse takes well under a millisecond, so threads queue only briefly.
_parser: Any = None
_parser_lock = threading.Lock()


def _serialize(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of `sql` as JSON, from the shared parser connection."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = connect(depth=_PARSER_DEPTH)
        row = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    try:
        return dict(json.loads(row[0])) if row else {"error": True, "error_message": "no result"}
    except RecursionError:
        return {"error": True, "error_message": "Max expression depth exceeded"}


def close_parser() -> None:
    """Close the shared parser connection; the next parse opens a new one."""
    global _parser
    with _parser_lock:
        con, _parser = _parser, None
        if con is not None:
            con.close()


def check_text(sql: str | bytes, limits: WhereLimits) -> str:
    """The trimmed text, or InputError when it is not bounded UTF-8 text."""
    if isinstance(sql, bytes):
        try:
            sql = sql.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the WHERE expression is not valid UTF-8 text") from None
    if not isinstance(sql, str):
        raise InputError(f"the WHERE expression must be text, not {type(sql).__name__}")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the WHERE expression is not valid UTF-8 text") from None
    text = sql.strip()
    if not text:
        raise InputError("the WHERE expression is empty")
    if len(text) > limits.max_chars:
        raise InputError(
            f"the WHERE expression is {len(text):,} characters long; "
            f"the limit is {limits.max_chars:,}"
        )
    if "\x00" in text:
        raise refuse(text, "contains a NUL character")
    return text


def prescan(text: str, limits: WhereLimits) -> None:
    """Refuse a second statement, a stray ')' or deep nesting, before the parser recurses."""
    try:
        tokens = duckdb.tokenize(text)
    except duckdb.Error:
        return  # the parser reports it
    ends = [pos for pos, _ in tokens[1:]] + [len(text)]
    stack: list[tuple[int, int]] = []
    base = run = deepest = 0  # levels of enclosing brackets and prefix operators, this run
    after_operand = False
    for (pos, kind), end in zip(tokens, ends, strict=True):
        if kind == duckdb.token_type.comment:
            continue
        tok = text[pos:end].strip()
        word = tok.upper()
        if tok == ";":
            raise refuse(text, "must be one boolean expression, not SQL statements")
        if tok == "(":
            stack.append((base, run))
            base, run, after_operand = base + run + 1, 0, False
        elif tok == ")":
            if not stack:
                raise refuse(text, "must be one boolean expression: a ')' closes nothing")
            base, run = stack.pop()
            run, after_operand = 0, True
        elif kind in _OPERANDS or kind == duckdb.token_type.string_const or word in _OPERAND_WORDS:
            run, after_operand = 0, True
        elif not after_operand and (word == "NOT" or tok in ("-", "+", "~")):
            run, after_operand = run + 1, False
        else:
            after_operand = False
        deepest = max(deepest, base + run)
        if deepest > limits.max_depth:
            raise refuse(text, f"is nested more than {limits.max_depth} levels deep")


class Emitter:
    """Validates a parsed expression tree against the allow-lists and re-emits it as SQL."""

    def __init__(self, text: str, columns: Sequence[str], max_depth: int) -> None:
        self.text, self.max_depth = text, max_depth
        self.known = {c.lower(): c for c in columns}
        self.all_columns = ", ".join(columns)
        self.used: set[str] = set()

    def fail(self, why: str) -> InputError:
        return refuse(self.text, why)

    def emit(self, node: Any, depth: int = 0) -> str:
        if depth > self.max_depth:
            raise self.fail(f"is nested more than {self.max_depth} levels deep")
        if not isinstance(node, dict):
            raise self.fail("is not an expression this filter understands")
        if node.get("alias"):
            raise self.fail("must be one expression, without an alias (AS ...)")
        cls, typ = node.get("class"), node.get("type")

        def sub(child: Any) -> str:
            return self.emit(child, depth + 1)

        if cls == "COLUMN_REF":
            return self.column(node.get("column_names") or [])
        if cls == "CONSTANT":
            return self.constant(node.get("literal") or {})
        if cls == "COMPARISON" and typ in _COMPARE:
            return f"({sub(node['left'])} {_COMPARE[typ]} {sub(node['right'])})"
        if cls == "CONJUNCTION" and typ in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
            kids = [sub(c) for c in node.get("children", [])]
            if kids:
                return "(" + (" AND " if typ == "CONJUNCTION_AND" else " OR ").join(kids) + ")"
        if cls == "BETWEEN":
            i, lo, hi = (sub(node[k]) for k in ("input", "lower", "upper"))
            return f"({i} BETWEEN {lo} AND {hi})"
        if cls == "OPERATOR":
            return self.operator(str(typ), [sub(c) for c in node.get("children", [])])
        if cls == "CAST":
            how = "TRY_CAST" if node.get("try_cast") else "CAST"
            return f"{how}({sub(node['child'])} AS {self.cast_type(node)})"
        if cls == "CASE":
            parts = [
                f"WHEN {sub(c['when_expr'])} THEN {sub(c['then_expr'])}"
                for c in node.get("case_checks", [])
            ]
            return f"(CASE {' '.join(parts)} ELSE {sub(node['else_expr'])} END)"
        if cls == "FUNCTION":
            return self.function(node, sub)
        if cls == "SUBQUERY":
            raise self.fail("contains a subquery; subqueries are not allowed in filters")
        if cls == "WINDOW":
            raise self.fail("contains a window function; compare metadata columns with values")
        if cls == "STAR":
            raise self.fail("contains *; name the metadata columns")
        what = str(cls or "unknown").lower().replace("_", " ")
        raise self.fail(f"contains a {what} expression, which filters do not allow")

    def column(self, names: list[str]) -> str:
        if len(names) != 1:
            raise self.fail(f"must use bare column names, not {'.'.join(map(str, names))}")
        name = self.known.get(str(names[0]).lower())
        if name is None:
            raise self.fail(
                f"names an unknown column {names[0]}; the metadata columns are {self.all_columns}"
            )
        self.used.add(name)
        return '"' + name.replace('"', '""') + '"'

    def constant(self, lit: dict[str, Any]) -> str:
        kind, text = lit.get("kind"), lit.get("text")
        if kind == "NULL_LITERAL":
            return "NULL"
        if not isinstance(text, str):
            raise self.fail("contains a literal this filter does not understand")
        if kind == "BOOLEAN" and text.lower() in ("true", "false"):
            return text.upper()
        if kind == "STRING" and "\x00" not in text:
            return "'" + text.replace("'", "''") + "'"
        numeric = ("INTEGER", "NUMERIC", "DECIMAL", "BIGINT", "HUGEINT", "DOUBLE")
        if kind in numeric and _NUMBER.fullmatch(text):
            return f"({text})" if text.startswith("-") else text
        raise self.fail(f"contains a {str(kind).lower()} literal, which filters do not allow")

    def operator(self, typ: str, kids: list[str]) -> str:
        if typ == "OPERATOR_NOT" and len(kids) == 1:
            return f"(NOT {kids[0]})"
        if typ == "OPERATOR_IS_NULL" and len(kids) == 1:
            return f"({kids[0]} IS NULL)"
        if typ == "OPERATOR_IS_NOT_NULL" and len(kids) == 1:
            return f"({kids[0]} IS NOT NULL)"
        if typ in ("COMPARE_IN", "COMPARE_NOT_IN") and len(kids) >= 2:
            neg = "NOT " if typ == "COMPARE_NOT_IN" else ""
            return f"({kids[0]} {neg}IN ({', '.join(kids[1:])}))"
        if typ == "OPERATOR_COALESCE" and kids:
            return f"COALESCE({', '.join(kids)})"
        raise self.fail(f"uses the operator {typ.lower()}, which filters do not allow")

    def cast_type(self, node: dict[str, Any]) -> str:
        spec = node.get("type_expr")
        if isinstance(spec, dict):  # recent DuckDB (2.0 here): a TYPE expression
            name, args = spec.get("type_name"), spec.get("children") or []
            qualified = spec.get("schema") or spec.get("catalog")
        else:  # older DuckDB (untested here): a serialized LogicalType
            spec = node.get("cast_type") or {}
            name, args, qualified = spec.get("id"), [], spec.get("type_info")
        canon = _TYPES.get(str(name).upper()) if not qualified else None
        if canon is None:
            raise self.fail(f"casts to {name}; cast to a plain scalar type such as DOUBLE")
        sizes = [self.constant(a.get("literal") or {}) for a in args if isinstance(a, dict)]
        if canon == "DECIMAL" and args:
            if len(sizes) != len(args) or len(args) > 2 or not all(s.isdigit() for s in sizes):
                raise self.fail("casts to a DECIMAL with sizes that are not two integers")
            return f"DECIMAL({', '.join(sizes)})"
        if args and canon != "VARCHAR":  # VARCHAR(n): the length means nothing to DuckDB
            raise self.fail(f"casts to {name} with arguments")
        return canon

    def function(self, node: dict[str, Any], sub: Callable[[Any], str]) -> str:
        name = str(node.get("function_name", "")).lower()
        if node.get("schema") or node.get("catalog"):
            raise self.fail(f"calls a qualified function {node.get('schema')}.{name}")
        if (
            node.get("distinct")
            or node.get("filter")
            or node.get("export_state")
            or (node.get("order_bys") or {}).get("orders")
        ):
            raise self.fail(f"uses {name} as an aggregate; filters compare single rows")
        raw = node.get("arguments")
        if raw is None:  # older DuckDB (untested here): unnamed children
            raw = [{"name": "", "expression": c} for c in node.get("children", [])]
        if any(a.get("name") for a in raw):
            raise self.fail(f"passes named arguments to {name}")
        args = [sub(a.get("expression")) for a in raw]
        if node.get("is_operator"):
            if name in _ARITHMETIC and len(args) == 2:
                return f"({args[0]} {name} {args[1]})"
            if name in ("+", "-") and len(args) == 1:
                return f"({name} {args[0]})"
            if name in _LIKE and len(args) == 2:
                return f"({args[0]} {_LIKE[name]} {args[1]})"
        if name in _LIKE_ESCAPE and len(args) == 3:
            return f"({args[0]} {_LIKE_ESCAPE[name]} {args[1]} ESCAPE {args[2]})"
        if not node.get("is_operator") and name in _FUNCTIONS:
            return f"{name}({', '.join(args)})"
        raise self.fail(
            f"calls {name}, which filters do not allow; use comparisons, LIKE, IN, BETWEEN, "
            "arithmetic and simple functions such as lower() or year()"
        )


def parse_one(text: str) -> dict[str, Any]:
    """The single select-list expression of `SELECT <text>`, or InputError."""
    tree = _serialize(f"SELECT {text}")
    if tree.get("error"):
        first = str(tree.get("error_message") or "").strip().splitlines()[:1] or ["?"]
        if "expression depth" in first[0]:
            raise refuse(text, "is nested too deeply")
        raise refuse(text, f"is not a valid SQL expression: {first[0]}")
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise refuse(text, "must be one boolean expression, not SQL statements")
    node = statements[0].get("node") or {}
    from_table = node.get("from_table") or {}
    if (
        node.get("type") != "SELECT_NODE"
        or node.get("modifiers")
        or node.get("where_clause")
        or node.get("group_expressions")
        or node.get("group_sets")
        or node.get("having")
        or node.get("qualify")
        or node.get("sample")
        or (node.get("cte_map") or {}).get("map")
        or from_table.get("type") not in (None, "EMPTY")
        or from_table.get("sample")
        or node.get("aggregate_handling", "STANDARD_HANDLING") != "STANDARD_HANDLING"
        or len(node.get("select_list") or []) != 1
    ):
        raise refuse(text, "must be one boolean expression, not a query")
    return dict(node["select_list"][0])
