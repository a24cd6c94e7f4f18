"""Structured filters to WHERE text: `filters_where(filters, columns=...)` and `combine`.

Rules kept here:

- A filter is `column op value` and nothing else: the column must be one of the index's
  metadata columns (an `InputError`, answered 400, names the unknown one), the operator one of
  a fixed list, the value a literal: strings in single quotes with `'` doubled, numbers as
  numbers (finite, within int64 for integers), booleans and nulls refused.
- The text built here is never trusted: the service ANDs it with the request's free `where`
  and the result goes through the library's WHERE sandbox (`query.filters.parse_where`) like
  any typed WHERE, with the same size and nesting bounds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from xretrieve.errors import InputError
from xretrieve.serve.models import Filter

__all__ = ["combine", "filters_where", "sql_literal"]

_INT64 = 2**63
# The SQL spelling of each operator the HTTP model allows.
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}


def sql_literal(value: object) -> str:
    """A string or number as a SQL literal (strings quoted, `'` doubled); anything else refused."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"a filter value must be a number or a string, not {value!r}")
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise InputError(f"the filter value {value} is out of range (64-bit integers)")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"the filter value {value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise InputError(f"a filter value must be a number or a string, not {type(value).__name__}")


def _one(f: Filter, columns: Collection[str]) -> str:
    if f.column not in columns:
        shown = f.column if len(f.column) <= 40 else f.column[:40] + "…"
        raise InputError(
            f"unknown filter column {shown!r}; the columns are {', '.join(sorted(columns))}"
        )
    if f.op == "in":
        if not isinstance(f.value, list) or not f.value:
            raise InputError(f"the 'in' filter on {f.column} needs a non-empty list of values")
        return f"{f.column} IN ({', '.join(sql_literal(v) for v in f.value)})"
    if isinstance(f.value, list):
        raise InputError(f"the {f.op!r} filter on {f.column} takes one value, not a list")
    if f.op == "like" and not isinstance(f.value, str):
        raise InputError(f"the 'like' filter on {f.column} needs a string pattern")
    return f"{f.column} {_OPS[f.op]} {sql_literal(f.value)}"


def filters_where(filters: Sequence[Filter] | None, *, columns: Collection[str]) -> str | None:
    """The WHERE text of structured filters ANDed together (None when there are none)."""
    parts = [_one(f, columns) for f in filters or ()]
    return " AND ".join(parts) if parts else None


def combine(built: str | None, where: str | None) -> str | None:
    """The built filters AND the free WHERE (bracketed); the free WHERE as given without filters."""
    free = where.strip() if where is not None and where.strip() else None
    if built is None:
        return where
    return built if free is None else f"{built} AND ({free})"
