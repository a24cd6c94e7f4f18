"""Filters: SQL WHERE expressions over the shards' Parquet metadata, run with DuckDB.

`parse_where("width >= 1024 AND path LIKE '%2024%'", columns=...)` checks that the text is
one boolean expression over known columns and nothing else (no second statement, no
subquery, no set operation); `shard_may_match` skips shards whose partition statistics
rule the expression out; `Filter.allowed_rows` gives the matching row ids of one shard.

DuckDB runs with file-system access disabled and its configuration locked: an expression
can read the metadata it is given and nothing more.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from xretrieve._types import Ids
from xretrieve.errors import InputError

__all__ = ["Condition", "Filter", "Where", "parse_where", "shard_may_match"]

_OPS = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "!=",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_LESSTHANOREQUALTO": "<=",
}
_FLIP = {"=": "=", "!=": "!=", ">": "<", ">=": "<=", "<": ">", "<=": ">="}
# Allowed-row sets kept per Filter: a repeated --where costs one dict lookup.
_CACHE_ENTRIES = 256


@dataclass(frozen=True)
class Condition:
    """One `column OP literal` conjunct of a WHERE expression, usable for shard pruning."""

    column: str
    op: str
    value: float | str


@dataclass(frozen=True)
class Where:
    """A validated WHERE expression, the columns it reads and its prunable conjuncts."""

    sql: str
    columns: frozenset[str]
    conditions: tuple[Condition, ...]


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"enable_external_access": False, "threads": 1})
    con.execute("SET lock_configuration = true")
    return con


_parser: duckdb.DuckDBPyConnection | None = None
_parser_lock = threading.Lock()


def _serialize(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of `sql` as JSON (one shared connection: connecting costs ~20 ms)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = _connect()
        row = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    return dict(json.loads(row[0])) if row else {"error": True, "error_message": "no result"}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _literal(node: dict[str, Any]) -> float | str | None:
    if node.get("class") != "CONSTANT":
        return None
    lit = node.get("literal") or {}
    kind, text = lit.get("kind"), lit.get("text")
    if text is None:
        return None
    if kind in ("INTEGER", "BIGINT", "HUGEINT", "NUMERIC", "DECIMAL", "DOUBLE", "FLOAT"):
        try:
            return float(text)
        except ValueError:
            return None
    if kind in ("STRING", "VARCHAR"):
        return str(text)
    return None


def _conditions(node: dict[str, Any]) -> Iterator[Condition]:
    cls, typ = node.get("class"), node.get("type")
    if cls == "CONJUNCTION" and typ == "CONJUNCTION_AND":
        for child in node.get("children", []):
            yield from _conditions(child)
    elif cls == "COMPARISON" and typ in _OPS:
        left, right, op = node["left"], node["right"], _OPS[typ]
        if right.get("class") == "COLUMN_REF":
            left, right, op = right, left, _FLIP[op]
        value = _literal(right)
        if left.get("class") == "COLUMN_REF" and value is not None:
            yield Condition(left["column_names"][-1], op, value)


def parse_where(sql: str, *, columns: Sequence[str]) -> Where:
    """Validate a WHERE expression: one boolean expression over `columns`, nothing else."""
    text = (sql or "").strip()
    if not text:
        raise InputError("the --where expression is empty")
    if len(text) > 10_000:
        raise InputError("the --where expression is longer than 10,000 characters")
    body = text.rstrip(";").rstrip()
    try:
        tokens = duckdb.tokenize(body)
    except duckdb.Error:
        tokens = []
    if any(body[pos] == ";" for pos, kind in tokens if kind == duckdb.token_type.operator):
        raise InputError(
            f"--where takes one boolean expression, not SQL statements: {text!r} "
            "(no ';'; e.g. --where \"width >= 1024 AND path LIKE '%2024%'\")"
        )
    text = text.rstrip(";").strip()
    wrapped = f"SELECT 1 FROM __meta WHERE ({text})"
    tree = _serialize(wrapped)
    if tree.get("error"):
        raise InputError(
            f"--where {text!r} is not a valid SQL expression: {tree.get('error_message')}"
        )
    statements = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    if (
        node.get("type") != "SELECT_NODE"
        or node.get("modifiers")
        or node.get("group_expressions")
        or node.get("having")
        or (node.get("cte_map") or {}).get("map")
        or (node.get("from_table") or {}).get("table_name") != "__meta"
        or len(node.get("select_list", [])) != 1
    ):
        raise InputError(f"--where {text!r} must be one boolean expression, not a query")
    where = node["where_clause"]
    used: set[str] = set()
    for sub in _walk(where):
        cls = sub.get("class")
        if cls in ("SUBQUERY", "WINDOW", "STAR") or sub.get("type") == "SUBQUERY":
            raise InputError(
                f"--where {text!r}: subqueries, window functions and * are not allowed; "
                "compare metadata columns with values"
            )
        if cls == "COLUMN_REF":
            names = sub.get("column_names", [])
            if len(names) != 1:
                raise InputError(f"--where {text!r}: use bare column names, not {'.'.join(names)}")
            used.add(names[0])
    known = {c.lower(): c for c in columns}
    unknown = sorted(c for c in used if c.lower() not in known)
    if unknown:
        raise InputError(
            f"--where {text!r}: unknown column {', '.join(unknown)}; "
            f"the metadata columns are {', '.join(columns)}"
        )
    return Where(
        sql=text,
        columns=frozenset(known[c.lower()] for c in used),
        conditions=tuple(_conditions(where)),
    )


def _comparable(a: Any, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num):
        return not isinstance(a, bool) and not isinstance(b, bool)
    return isinstance(a, str) and isinstance(b, str)


def _rules_out(cond: Condition, lo: Any, hi: Any) -> bool:
    v = cond.value
    if lo is None or hi is None or not (_comparable(v, lo) and _comparable(v, hi)):
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    op = cond.op
    if op == "=":
        return bool(v < lo or v > hi)
    if op == "!=":
        return bool(lo == hi == v)
    if op == ">":
        return bool(hi <= v)
    if op == ">=":
        return bool(hi < v)
    if op == "<":
        return bool(lo >= v)
    if op == "<=":
        return bool(lo > v)
    return False


def shard_may_match(where: Where, partition: dict[str, Any] | None) -> bool:
    """False only when the shard's partition statistics prove that no row can match.

    `partition = {"key": col, "value": v, "stats": {col: {"min": .., "max": ..}}}`; an absent
    or partial partition never rules a shard out.
    """
    if not partition:
        return True
    ranges: dict[str, tuple[Any, Any]] = {}
    for col, st in (partition.get("stats") or {}).items():
        if isinstance(st, dict):
            ranges[col.lower()] = (st.get("min"), st.get("max"))
    key = partition.get("key")
    if isinstance(key, str) and "value" in partition:
        ranges[key.lower()] = (partition["value"], partition["value"])
    for cond in where.conditions:
        bounds = ranges.get(cond.column.lower())
        if bounds is not None and _rules_out(cond, *bounds):
            return False
    return True


class Filter:
    """Runs WHERE expressions over shard metadata tables; caches the allowed rows per shard."""

    def __init__(self) -> None:
        self._con = _connect()
        self._lock = threading.Lock()
        self._views: dict[str, str] = {}
        self._cache: OrderedDict[tuple[str, str], Ids] = OrderedDict()

    def _view(self, shard: str, table: pa.Table) -> str:
        name = self._views.get(shard)
        if name is None:
            name = f"shard_{len(self._views)}"
            self._con.register(name, table)
            self._views[shard] = name
        return name

    def allowed_rows(self, where: Where, shard: str, table: pa.Table) -> Ids:
        """Sorted row ids of `shard` (its metadata `table`) where the expression is true."""
        key = (where.sql, shard)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            view = self._view(shard, table)
            try:
                got = self._con.execute(
                    f'SELECT "row" FROM {view} WHERE ({where.sql})'
                ).fetchnumpy()["row"]
            except duckdb.Error as e:
                first = str(e).strip().splitlines()[0]
                raise InputError(f"--where {where.sql!r} cannot be evaluated: {first}") from e
            rows = np.sort(np.asarray(got, dtype=np.int64))  # already in order: a cheap check
            self._cache[key] = rows
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return rows

    def check_type(self, where: Where, schema: pa.Schema) -> None:
        """Raise `InputError` unless the expression binds to a BOOLEAN over `schema`."""
        with self._lock:
            name = f"__schema_{abs(hash(schema.to_string())) % 10**8}"
            if name not in self._views.values():
                self._con.register(name, schema.empty_table())
                self._views[name] = name
            try:
                kind = self._con.execute(
                    f"DESCRIBE SELECT ({where.sql}) AS f FROM {name}"
                ).fetchall()
            except duckdb.Error as e:
                first = str(e).strip().splitlines()[0]
                raise InputError(f"--where {where.sql!r} is not valid here: {first}") from e
        if kind[0][1] != "BOOLEAN":
            raise InputError(
                f"--where {where.sql!r} has type {kind[0][1]}, not a true/false condition "
                "(e.g. width >= 1024)"
            )
