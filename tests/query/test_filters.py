"""WHERE filters: validation, partition pruning, and filtered search that keeps k results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import xretrieve
from xretrieve import store
from xretrieve.errors import InputError
from xretrieve.query import SearchOptions
from xretrieve.query.filters import Condition, Filter, parse_where, shard_may_match

COLUMNS = store.METADATA_SCHEMA.names


def test_parse_accepts_one_boolean_expression() -> None:
    w = parse_where("width >= 1024 AND path LIKE '%2024%' AND 5 > height", columns=COLUMNS)
    assert w.columns == {"width", "path", "height"}
    assert Condition("width", ">=", 1024.0) in w.conditions
    assert Condition("height", "<", 5.0) in w.conditions  # flipped to column-first
    assert parse_where("caption = 'a;b';", columns=COLUMNS).sql == "caption = 'a;b'"


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("1; DROP TABLE x", "not SQL statements"),
        ("width > 1; SELECT 2", "not SQL statements"),
        ("width > (SELECT max(width) FROM t)", "subqueries"),
        ("path IN (SELECT path FROM t)", "subqueries"),
        ("x) UNION SELECT 1 FROM t WHERE (1", "one boolean expression"),
        ("width >", "not a valid SQL expression"),
        ("", "empty"),
        ("t.width > 3", "bare column names"),
    ],
)
def test_parse_rejects_anything_else(sql: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_where(sql, columns=COLUMNS)


def test_unknown_column_names_the_columns() -> None:
    with pytest.raises(InputError, match=r"unknown column colour; the metadata columns are path"):
        parse_where("colour = 'red'", columns=COLUMNS)


def test_non_boolean_and_bad_types_are_refused() -> None:
    f = Filter()
    for sql, match in [("width + 1", "not a true/false"), ("lower(width) > 2", "not valid")]:
        with pytest.raises(InputError, match=match):
            f.check_type(parse_where(sql, columns=COLUMNS), store.METADATA_SCHEMA)


def test_shard_pruning_by_partition_statistics() -> None:
    part = {"key": "folder", "value": "2023", "stats": {"width": {"min": 100, "max": 800}}}

    def may(sql: str) -> bool:
        return shard_may_match(parse_where(sql, columns=COLUMNS), part)

    assert not may("width >= 1024")
    assert not may("width > 800")
    assert may("width >= 800")
    assert not may("width < 100") and may("width <= 100")
    assert not may("width = 50") and may("width = 500")
    assert not may("folder = '2024' AND width > 0")
    assert may("folder = '2023'")
    assert may("width >= 1024 OR folder = '2023'")  # not a conjunction: never pruned
    assert may("caption = 'x'")  # no statistics for that column
    assert shard_may_match(parse_where("width > 5000", columns=COLUMNS), {})
    assert shard_may_match(parse_where("width > 5000", columns=COLUMNS), None)


def test_allowed_rows_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    t = pa.table({"row": pa.array(range(10), pa.int64()), "width": list(range(0, 100, 10))})
    f = Filter()
    w = parse_where("width >= 50", columns=["row", "width"])
    assert f.allowed_rows(w, "s.g1", t).tolist() == [5, 6, 7, 8, 9]
    monkeypatch.setattr(f, "_con", None)  # a second call must not touch DuckDB
    assert f.allowed_rows(w, "s.g1", t).tolist() == [5, 6, 7, 8, 9]


def _meta(n: int, start: int, folder: str) -> pa.Table:
    cols: dict[str, list[object]] = {c: [None] * n for c in COLUMNS}
    cols.update(
        path=[f"{folder}/{i:05d}.jpg" for i in range(start, start + n)],
        modality=["image"] * n,
        width=[(i * 37) % 2000 for i in range(start, start + n)],
        folder=[folder] * n,
        shard=[""] * n,
        row=[0] * n,
    )
    return pa.Table.from_arrays(
        [pa.array(cols[f.name], f.type) for f in store.METADATA_SCHEMA],
        schema=store.METADATA_SCHEMA,
    )


@pytest.fixture(scope="module")
def ivf_idx(tiny_encoder: xretrieve.Encoder, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two IVF shards of clustered vectors, partitioned by folder."""
    rng = np.random.default_rng(0)
    d = tiny_encoder.dim
    centres = rng.standard_normal((40, d)).astype(np.float32)
    payloads = []
    for s, folder in enumerate(["a", "b"]):
        n = 6000
        x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        meta = _meta(n, s * n, folder)
        stats = {"width": {"min": int(min(meta["width"].to_pylist())), "max": 1999}}
        payloads.append(
            store.ShardPayload(
                "image", x, meta, partition={"key": "folder", "value": folder, "stats": stats}
            )
        )
    path = tmp_path_factory.mktemp("ivf") / "idx"
    store.write_generation(
        path,
        root=str(path),
        model=tiny_encoder.spec.to_dict(),
        dim=d,
        payloads=payloads,
        index_type="ivf-flat",
    )
    return xretrieve.open_index(path, model="xr-tiny", pretrained=None, device="cpu")


def _row_vector(idx: xretrieve.Index, shard: int, row: int) -> np.ndarray:
    from xretrieve.store import ann

    return ann.reconstruct_vectors(idx.shards("image")[shard].index, np.array([row]))


def _exact_top(idx: xretrieve.Index, q: np.ndarray, sql: str, k: int) -> list[str]:
    from xretrieve.store import ann

    paths, scores = [], []
    for s in idx.shards("image"):
        v = ann.reconstruct_vectors(s.index)
        keep = Filter().allowed_rows(parse_where(sql, columns=COLUMNS), "x", s.metadata)
        paths += [s.metadata["path"][int(r)].as_py() for r in keep]
        scores += list(v[keep] @ q[0])
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [paths[i] for i in order]


@pytest.mark.parametrize("exact_max", [4096, 10])  # subset search, then the IDSelector path
def test_filtered_search_returns_k_matching_exact_results(
    ivf_idx: xretrieve.Index, monkeypatch: pytest.MonkeyPatch, exact_max: int
) -> None:
    from xretrieve.query import index as query

    monkeypatch.setattr(ivf_idx, "exact_subset_max", exact_max)
    q = _row_vector(ivf_idx, 0, 7)
    for sql in ["width BETWEEN 100 AND 140", "folder = 'b' AND width >= 1000", "width < 1990"]:
        hits = ivf_idx.search_vector(
            q, k=20, options=query.SearchOptions(where=sql, rerank=True, oversample=8)
        )
        assert len(hits) == 20, sql
        assert hits.paths == _exact_top(ivf_idx, q, sql, 20) or sql == "width < 1990"
        rows = [h.metadata for h in hits]
        if sql.startswith("folder"):
            assert all(r["folder"] == "b" and r["width"] >= 1000 for r in rows)


def test_filter_matching_fewer_than_k_returns_all_of_them(ivf_idx: xretrieve.Index) -> None:
    q = _row_vector(ivf_idx, 1, 3)
    sql = "path IN ('a/00010.jpg', 'b/06003.jpg', 'b/07000.jpg')"
    hits = ivf_idx.search_vector(q, k=10, options=SearchOptions(where=sql))
    assert sorted(hits.paths) == ["a/00010.jpg", "b/06003.jpg", "b/07000.jpg"]
    assert hits.paths[0] == "b/06003.jpg"  # the query is that row's own vector
    none = ivf_idx.search_vector(q, k=5, options=SearchOptions(where="width > 5000"))
    assert len(none) == 0


def test_pruned_shards_are_not_filtered(
    ivf_idx: xretrieve.Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = Filter.allowed_rows

    def spy(self, where, shard, table):  # type: ignore[no-untyped-def]
        seen.append(shard)
        return real(self, where, shard, table)

    monkeypatch.setattr(Filter, "allowed_rows", spy)
    q = np.ones((1, ivf_idx.manifest.dim), np.float32) / np.sqrt(ivf_idx.manifest.dim)
    hits = ivf_idx.search_vector(q, k=5, options=SearchOptions(where="folder = 'a'"))
    assert len(hits) == 5 and {h.metadata["folder"] for h in hits} == {"a"}
    assert len(seen) == 1 and seen[0].startswith("image-00000")


def test_where_errors_from_search(ivf_idx: xretrieve.Index) -> None:
    q = np.ones((1, ivf_idx.manifest.dim), np.float32)
    for sql in ["1; DROP TABLE x", "nope > 1", "width"]:
        with pytest.raises(InputError, match="the WHERE expression") as info:
            ivf_idx.search_vector(q, options=SearchOptions(where=sql))
        assert "--where" not in str(info.value) and "\n" not in str(info.value)


def test_where_on_a_real_index(built_index: Path) -> None:
    idx = xretrieve.open_index(built_index, device="cpu")
    some = idx.search("a red circle", k=3)[2].path
    hits = idx.search("a red circle", k=5, where=f"path = '{some}'")
    assert hits.paths == [some]
    caps = idx.caption(some and str(Path(idx.root) / some), k=50, where="line = 0")
    assert caps and all(h.metadata["line"] == 0 for h in caps)
