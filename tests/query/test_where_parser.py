"""The WHERE parser's shared DuckDB connection: one per process, safe across threads, closable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from xretrieve import store
from xretrieve.errors import InputError
from xretrieve.query import _where_ast
from xretrieve.query.filters import Condition, parse_where

COLUMNS = store.METADATA_SCHEMA.names
THREADS = 16


def _counting_connect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every parser connection `_where_ast` opens (still real connections)."""
    made: list[Any] = []
    real = _where_ast.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        con = real(*args, **kwargs)
        made.append(con)
        return con

    monkeypatch.setattr(_where_ast, "connect", connect)
    return made


def _all_at_once(fn: Callable[[int], Any], n: int = THREADS) -> list[Any]:
    """`fn(i)` for i < n on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_threads_parsing_at_once_share_one_connection_and_get_their_own_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _where_ast.close_parser()
    made = _counting_connect(monkeypatch)

    def parse(i: int) -> list[Any]:
        out = []
        for j in range(20):
            w = parse_where(f"width >= {i * 100 + j} AND caption = 'c{i}-{j}'", columns=COLUMNS)
            out.append((w.columns, w.conditions))
        return out

    results = _all_at_once(parse)
    assert len(made) == 1
    for i, got in enumerate(results):
        for j, (columns, conditions) in enumerate(got):
            assert columns == {"width", "caption"}
            assert conditions == (
                Condition("width", ">=", float(i * 100 + j)),
                Condition("caption", "=", f"c{i}-{j}"),
            )


def test_refusals_stay_right_under_concurrent_parsing() -> None:
    def parse(i: int) -> str:
        text = f"width > {i}" if i % 2 else f"width > {i}; SELECT 1"
        try:
            parse_where(text, columns=COLUMNS)
        except InputError as e:
            return str(e)
        return "ok"

    for i, got in enumerate(_all_at_once(parse)):
        assert got == "ok" if i % 2 else "not SQL statements" in got


def test_after_close_the_next_parse_opens_a_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parse_where("width > 1", columns=COLUMNS)
    made = _counting_connect(monkeypatch)
    _where_ast.close_parser()
    _where_ast.close_parser()  # twice is harmless
    assert parse_where("height < 2", columns=COLUMNS).columns == {"height"}
    assert len(made) == 1
    assert _where_ast._parser is made[0]
    _where_ast.close_parser()
    parse_where("height < 3", columns=COLUMNS)
    assert len(made) == 2 and made[1] is not made[0]


def test_closing_while_other_threads_parse_breaks_no_parse() -> None:
    stop = threading.Event()

    def closer() -> None:
        while not stop.is_set():
            _where_ast.close_parser()

    t = threading.Thread(target=closer)
    t.start()
    try:
        results = _all_at_once(
            lambda i: [parse_where(f"width = {i}", columns=COLUMNS).conditions for _ in range(10)],
            n=8,
        )
    finally:
        stop.set()
        t.join()
    for i, got in enumerate(results):
        assert got == [(Condition("width", "=", float(i)),)] * 10
