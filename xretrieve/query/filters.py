"""Filters: SQL WHERE expressions over the shards' Parquet metadata, run with DuckDB.

`parse_where("width >= 1024 AND path LIKE '%2024%'", columns=...)` validates the text;
`shard_may_match` skips shards whose partition statistics rule the expression out;
`Filter.allowed_rows` gives the matching row ids of one shard. Rules this module keeps:

- The text is one expression and nothing else. Size and nesting are bounded before DuckDB's
  parser sees it; the parser reads `SELECT <text>`, which must be one statement with one
  select-list item and no clause; the tree is walked with allow-lists of node kinds,
  operators, functions, cast types and column names (`_where_ast` has the lists). Subqueries,
  windows, `*`, table functions, settings and catalog functions are refused.
- DuckDB never runs the user's text, so nothing in it can append a clause: it runs
  `Where.expr`, re-emitted from the validated tree with every node in brackets, columns
  quoted, strings escaped and every keyword, operator, function and type name spelt by the
  allow-lists, and `Where.expr` must parse back and re-emit to itself.
- Every connection has external access off, extension loading off, one thread, a memory limit
  and its configuration locked. Each query runs in a worker thread the caller waits on: past
  `WhereLimits.seconds` the connection is interrupted and the caller gets an `InputError`;
  Ctrl-C interrupts it too and `KeyboardInterrupt` propagates at once.
- Errors are `InputError`s with one-line messages naming the expression (never a CLI flag).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from xretrieve._types import Ids
from xretrieve.errors import InputError
from xretrieve.query._where_ast import (
    DEFAULT_LIMITS,
    Emitter,
    WhereLimits,
    check_text,
    connect,
    parse_one,
    prescan,
    refuse,
)

__all__ = ["Condition", "Filter", "Where", "WhereLimits", "parse_where", "shard_may_match"]

T = TypeVar("T")
# Allowed-row sets kept per Filter: a repeated filter costs one dict lookup.
_CACHE_ENTRIES = 256
# How long an interrupted query may take to let go of its connection before it is abandoned.
_GRACE_S = 2.0
# The comparisons shard pruning understands, as `Condition.op`.
_OPS = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "!=",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_LESSTHANOREQUALTO": "<=",
}
_FLIP = {"=": "=", "!=": "!=", ">": "<", ">=": "<=", "<": ">", "<=": ">="}


@dataclass(frozen=True)
class Condition:
    """One `column OP literal` conjunct of a WHERE expression, usable for shard pruning."""

    column: str
    op: str
    value: float | str


@dataclass(frozen=True)
class Where:
    """A validated WHERE expression, the columns it reads and its prunable conjuncts.

    `sql` is the caller's text (trimmed); `expr` is what DuckDB runs, rebuilt from the tree.
    """

    sql: str
    columns: frozenset[str]
    conditions: tuple[Condition, ...]
    expr: str = ""


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


def parse_where(
    sql: str | bytes, *, columns: Sequence[str], limits: WhereLimits = DEFAULT_LIMITS
) -> Where:
    """Validate a WHERE expression: one boolean expression over `columns`, nothing else."""
    text = check_text(sql, limits).rstrip(";").rstrip()
    if not text:
        raise InputError("the WHERE expression is empty")
    prescan(text, limits)
    node = parse_one(text)
    emitter = Emitter(text, columns, limits.max_depth)
    expr = emitter.emit(node)
    # The emitter's own check: what DuckDB will run parses back to the same expression.
    again = Emitter(text, columns, limits.max_depth + 1).emit(parse_one(expr))
    if again != expr:
        raise refuse(text, "cannot be rebuilt faithfully; simplify it")
    return Where(
        sql=text,
        columns=frozenset(emitter.used),
        conditions=tuple(_conditions(node)),
        expr=expr,
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


class _Abandoned(Exception):
    """An interrupted query did not let go of its connection in time."""


def _bounded(con: Any, run: Callable[[], T], *, seconds: float) -> T:
    """`run()` on a worker thread; past `seconds`, or on Ctrl-C, interrupt `con`.

    Raises `duckdb.InterruptException` on a timeout, `_Abandoned` if the interrupted query
    still holds the connection after a grace period, and re-raises `KeyboardInterrupt`.
    """
    done = threading.Event()
    box: list[tuple[bool, Any]] = []

    def work() -> None:
        try:
            box.append((True, run()))
        except BaseException as e:  # handed to the waiting caller
            box.append((False, e))
        finally:
            done.set()

    # An Event, not Thread.join: Ctrl-C during join() can leave the thread marked finished.
    threading.Thread(target=work, name="xretrieve-where", daemon=True).start()
    try:
        finished = done.wait(seconds)
    except KeyboardInterrupt:
        con.interrupt()
        done.wait(_GRACE_S)
        raise
    if not finished:
        con.interrupt()
        if not done.wait(_GRACE_S):
            raise _Abandoned
        if box and box[0][0]:  # it finished just as the interrupt came
            return box[0][1]
        raise duckdb.InterruptException("time limit")
    ok, value = box[0]
    if not ok:
        raise value
    return value


class Filter:
    """Runs WHERE expressions over shard metadata tables; caches the allowed rows per shard."""

    def __init__(self, *, limits: WhereLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._con = connect(limits)
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

    def _expr(self, where: Where, columns: Sequence[str]) -> str:
        """The validated expression; a `Where` built by hand is validated here."""
        return where.expr or parse_where(where.sql, columns=columns, limits=self.limits).expr

    def _run(self, where: Where, what: str, run: Callable[[], T]) -> T:
        """`run()` within the limits; DuckDB's errors become one-line `InputError`s."""
        try:
            return _bounded(self._con, run, seconds=self.limits.seconds)
        except _Abandoned:
            self._con, self._views = connect(self.limits), {}  # the old one is still busy
            raise self._timeout(where) from None
        except duckdb.InterruptException:
            raise self._timeout(where) from None
        except duckdb.OutOfMemoryException:
            raise refuse(
                where.sql, f"needs more than {self.limits.memory} of memory to evaluate"
            ) from None
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise refuse(where.sql, f"{what}: {first}") from e

    def _timeout(self, where: Where) -> InputError:
        return refuse(where.sql, f"took longer than {self.limits.seconds:g} s to evaluate")

    def allowed_rows(self, where: Where, shard: str, table: pa.Table) -> Ids:
        """Sorted row ids of `shard` (its metadata `table`) where the expression is true."""
        key = (where.sql, shard)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            expr = self._expr(where, table.column_names)
            con, view = self._con, self._view(shard, table)
            got = self._run(
                where,
                "cannot be evaluated",
                lambda: con.execute(f'SELECT "row" FROM {view} WHERE {expr}').fetchnumpy()["row"],
            )
            rows = np.sort(np.asarray(got, dtype=np.int64))  # already in order: a cheap check
            self._cache[key] = rows
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return rows

    def check_type(self, where: Where, schema: pa.Schema) -> None:
        """Raise `InputError` unless the expression binds to a BOOLEAN over `schema`."""
        with self._lock:
            expr = self._expr(where, schema.names)
            name = f"__schema_{abs(hash(schema.to_string())) % 10**8}"
            if name not in self._views.values():
                self._con.register(name, schema.empty_table())
                self._views[name] = name
            con = self._con
            kind = self._run(
                where,
                "is not valid here",
                lambda: con.execute(f"DESCRIBE SELECT {expr} AS f FROM {name}").fetchall(),
            )
        if kind[0][1] != "BOOLEAN":
            raise refuse(
                where.sql, f"has type {kind[0][1]}, not a true/false condition (e.g. width >= 1024)"
            )
