"""Structured filters: the WHERE builder (quoting, columns, bounds) and filtered API searches."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from fastapi.testclient import TestClient

from xretrieve import store
from xretrieve.errors import InputError
from xretrieve.query.filters import parse_where
from xretrieve.serve.filters import combine, filters_where, sql_literal
from xretrieve.serve.models import Filter, SearchRequest

COLUMNS = frozenset(store.METADATA_SCHEMA.names)


def where(*filters: dict[str, Any]) -> str | None:
    return filters_where([Filter.model_validate(f) for f in filters], columns=COLUMNS)


# ---- the builder ----


def test_no_filters_is_no_where() -> None:
    assert filters_where(None, columns=COLUMNS) is None
    assert filters_where([], columns=COLUMNS) is None


def test_each_operator_and_the_conjunction() -> None:
    assert where({"column": "folder", "op": "=", "value": "beach"}) == "folder = 'beach'"
    assert where({"column": "year", "op": "!=", "value": 2024}) == "year <> 2024"
    assert where({"column": "width", "op": ">=", "value": 10.5}) == "width >= 10.5"
    assert where({"column": "path", "op": "like", "value": "%a%"}) == "path LIKE '%a%'"
    assert where({"column": "year", "op": "in", "value": [2023, 2024]}) == "year IN (2023, 2024)"
    assert (
        where(
            {"column": "folder", "op": "=", "value": "x"},
            {"column": "width", "op": "<", "value": 5},
        )
        == "folder = 'x' AND width < 5"
    )


def test_strings_are_quoted_with_quotes_doubled() -> None:
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("") == "''"
    assert sql_literal('"; DROP TABLE x; --') == "'\"; DROP TABLE x; --'"


@pytest.mark.parametrize(
    "attack",
    ["' OR 1=1 --", "x' OR 'a'='a", "'; SELECT * FROM read_csv('/etc/passwd'); --", "\\' OR 1=1"],
)
def test_injection_attempts_stay_one_literal(attack: str) -> None:
    sql = where({"column": "folder", "op": "=", "value": attack})
    assert sql is not None
    w = parse_where(sql, columns=sorted(COLUMNS))
    # One comparison of the column with one string literal, which is the attack verbatim.
    assert w.columns == {"folder"}
    assert [(c.column, c.op, c.value) for c in w.conditions] == [("folder", "=", attack)]


def test_numbers_stay_numbers_and_odd_values_are_refused() -> None:
    assert sql_literal(-3) == "-3" and sql_literal(2.5) == "2.5"
    for bad in (True, None, float("nan"), float("inf"), 2**63, [1]):
        with pytest.raises(InputError):
            sql_literal(bad)


def test_unknown_column_is_an_input_error_naming_it() -> None:
    with pytest.raises(InputError, match=r"unknown filter column 'nope'.*folder"):
        where({"column": "nope", "op": "=", "value": 1})
    with pytest.raises(InputError, match="unknown filter column"):
        where({"column": "folder) OR (1=1", "op": "=", "value": 1})


def test_value_shape_must_fit_the_operator() -> None:
    with pytest.raises(InputError, match="needs a non-empty list"):
        where({"column": "year", "op": "in", "value": 2024})
    with pytest.raises(InputError, match="takes one value"):
        where({"column": "year", "op": "=", "value": [2024]})
    with pytest.raises(InputError, match="string pattern"):
        where({"column": "path", "op": "like", "value": 3})


@pytest.mark.parametrize(
    "body",
    [
        {"filters": [{"column": "year", "op": "=", "value": 1}] * 33},
        {"filters": [{"column": "year", "op": "in", "value": list(range(65))}]},
        {"filters": [{"column": "year", "op": "in", "value": []}]},
        {"filters": [{"column": "path", "op": "=", "value": "x" * 257}]},
        {"filters": [{"column": "x" * 65, "op": "=", "value": 1}]},
        {"filters": [{"column": "year", "op": "~", "value": 1}]},
        {"filters": [{"column": "year", "op": "=", "value": True}]},
        {"filters": [{"column": "year", "op": "=", "value": None}]},
        {"filters": [{"column": "year", "op": "=", "value": {"sql": "1=1"}}]},
        {"filters": [{"column": "year", "op": "=", "value": 1, "sql": "1=1"}]},
    ],
)
def test_the_request_model_bounds_filters(body: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SearchRequest.model_validate(body)


def test_combine_brackets_the_free_where() -> None:
    assert combine(None, None) is None
    assert combine(None, "year > 1 OR width < 3") == "year > 1 OR width < 3"
    assert combine("folder = 'a'", None) == "folder = 'a'"
    assert combine("folder = 'a'", "  ") == "folder = 'a'"
    assert (
        combine("folder = 'a'", "year > 1 OR width < 3")
        == "folder = 'a' AND (year > 1 OR width < 3)"
    )


# ---- through the API ----


def _search(client: TestClient, **body: Any) -> Any:
    return client.post("/api/search", json={"text": "a red circle", "k": 50, **body})


def test_a_filtered_search_returns_only_matching_rows(client: TestClient) -> None:
    facets = client.get("/api/indexes").json()["indexes"][0]["facets"]
    width = facets["width"][0]
    r = _search(client, filters=[{"column": "width", "op": "=", "value": width}])
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["width"] == width for h in hits)
    # The same as the typed WHERE it stands for.
    typed = _search(client, where=f"width = {width}").json()["hits"]
    assert [h["id"] for h in hits] == [h["id"] for h in typed]


def test_filters_and_the_free_where_are_anded(client: TestClient) -> None:
    everything = _search(client).json()["hits"]
    some = everything[0]["path"]
    r = _search(
        client,
        filters=[{"column": "path", "op": "in", "value": [some, "no/such.png"]}],
        where="width >= 0",
    )
    assert r.status_code == 200, r.text
    assert [h["path"] for h in r.json()["hits"]] == [some]
    none = _search(
        client, filters=[{"column": "path", "op": "=", "value": some}], where="width < 0"
    )
    assert none.status_code == 200 and none.json()["hits"] == []


def test_an_injection_attempt_matches_nothing(client: TestClient) -> None:
    r = _search(client, filters=[{"column": "folder", "op": "=", "value": "' OR 1=1 --"}])
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == []


def test_bad_filters_are_4xx_with_one_line(client: TestClient) -> None:
    r = _search(client, filters=[{"column": "nope", "op": "=", "value": 1}])
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "unknown filter column 'nope'" in message and "\n" not in message
    r = _search(client, filters=[{"column": "year", "op": "=", "value": True}])
    assert r.status_code == 422
