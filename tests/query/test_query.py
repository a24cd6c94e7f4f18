"""Searching an index from Python: ranks, conversions, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import xretrieve
from xretrieve import IndexOptions, index_folder
from xretrieve.errors import EmptyQueryError, InputError, MediaError, ModelMismatchError
from xretrieve.query import ImageTerm, SearchOptions


@pytest.fixture(scope="module")
def idx(built_index: Path) -> xretrieve.Index:
    return xretrieve.open_index(built_index, device="cpu")


def test_image_query_finds_itself_first(idx: xretrieve.Index, world_dir: Path) -> None:
    probe = sorted((world_dir / "test").glob("*.png"))[3]
    hits = idx.search(image=probe, k=5)
    assert hits[0].path == probe.name
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    same = idx.search(Image.open(probe), k=1)  # a PIL image as the positional query
    assert same[0].path == probe.name


def test_text_to_text_finds_the_same_caption(idx: xretrieve.Index, world_dir: Path) -> None:
    sidecar = sorted((world_dir / "test").glob("*.txt"))[5]
    caption = sidecar.read_text().splitlines()[0]
    hits = idx.search(caption, k=3, modality="text")
    assert hits[0].caption == caption and hits[0].modality == "text"
    assert hits[0].metadata["image_path"] == sidecar.with_suffix(".png").name


def test_caption_returns_text_items(idx: xretrieve.Index, world_dir: Path) -> None:
    probe = sorted((world_dir / "test").glob("*.png"))[0]
    hits = idx.caption(str(probe), k=4)
    assert len(hits) == 4 and {h.modality for h in hits} == {"text"}
    assert all(h.caption for h in hits)


def _ids_and_scores(hits: xretrieve.Hits) -> tuple[list[tuple[str, int]], np.ndarray]:
    return [(h.metadata["shard"], h.metadata["row"]) for h in hits], np.array(
        [h.score for h in hits]
    )


def test_caption_embeds_an_image_whatever_form_it_comes_in(
    idx: xretrieve.Index, world_dir: Path
) -> None:
    """A str path is an image under caption(): the same hits as Path and PIL, not text's."""
    probe = sorted((world_dir / "test").glob("*.png"))[2]
    ids, scores = _ids_and_scores(idx.caption(str(probe), k=6))
    for same in (probe, Image.open(probe)):
        other_ids, other_scores = _ids_and_scores(idx.caption(same, k=6))
        assert other_ids == ids
        np.testing.assert_allclose(other_scores, scores, atol=1e-6)
    as_text = _ids_and_scores(idx.search(str(probe), k=6, modality="text"))
    assert as_text[0] != ids or not np.allclose(as_text[1], scores, atol=1e-3)


def test_image_keyword_embeds_a_str_as_an_image(idx: xretrieve.Index, world_dir: Path) -> None:
    probe = sorted((world_dir / "test").glob("*.png"))[5]
    by_str = idx.search(image=str(probe), k=5)
    by_path = idx.search(image=probe, k=5)
    assert by_str[0].path == probe.name and by_str[0].score == pytest.approx(1.0, abs=1e-4)
    assert _ids_and_scores(by_str)[0] == _ids_and_scores(by_path)[0]
    np.testing.assert_allclose(_ids_and_scores(by_str)[1], _ids_and_scores(by_path)[1], atol=1e-6)
    image_q = idx.query_vector(image=str(probe))
    text_q = idx.query_vector(str(probe))  # positional: a str is text
    np.testing.assert_allclose(image_q, idx.embed_image(probe), atol=1e-6)
    assert float((image_q @ text_q.T)[0, 0]) < 0.99
    # ImageTerm marks a str as an image inside a positional list.
    mixed = idx.query_vector(["x", ImageTerm(str(probe))], weights=[1e-6, 1.0])
    np.testing.assert_allclose(mixed, image_q, atol=1e-4)


def test_options_come_as_keywords_an_object_or_both(idx: xretrieve.Index) -> None:
    q = "a large red circle"
    by_keywords = idx.search(q, k=3, rerank=True, dedup=0.9999)
    by_object = idx.search(q, options=SearchOptions(k=3, rerank=True, dedup=0.9999))
    assert by_keywords.paths == by_object.paths and len(by_keywords) == 3
    assert len(idx.search(q, options=SearchOptions(k=3), k=2)) == 2  # keywords win
    vec = idx.query_vector(q)
    assert idx.search_vector(vec, k=3, rerank=True, dedup=0.9999).paths == by_keywords.paths
    assert len(idx.search_vector(vec, options=SearchOptions(k=4))) == 4
    assert len(idx.caption(Image.new("RGB", (32, 32), "red"))) == 5  # caption's own default
    assert len(idx.caption(Image.new("RGB", (32, 32), "red"), k=2)) == 2
    captions = idx.caption(Image.new("RGB", (32, 32), "red"), options=SearchOptions(k=3))
    assert len(captions) == 3 and {h.modality for h in captions} == {"text"}


def test_unknown_options_are_named_with_the_valid_ones(idx: xretrieve.Index) -> None:
    red = Image.new("RGB", (32, 32), "red")
    vec = idx.query_vector("x")
    calls = [
        lambda: idx.search("x", wehre="width > 0"),  # type: ignore[call-arg]
        lambda: idx.search_vector(vec, wehre="width > 0"),  # type: ignore[call-arg]
        lambda: idx.caption(red, wehre="width > 0"),  # type: ignore[call-arg]
    ]
    for call in calls:
        with pytest.raises(InputError, match=r"unknown search option wehre: the options are k, "):
            call()
    with pytest.raises(InputError, match="caption"):
        idx.caption(red, modality="image")


def test_search_overrides_mirror_search_options() -> None:
    import dataclasses
    import typing

    from xretrieve.query import options

    fields = {f.name for f in dataclasses.fields(SearchOptions)}
    assert set(options.SearchOverrides.__annotations__) == fields == set(options.OPTION_NAMES)
    assert typing.get_type_hints(options.SearchOverrides) == typing.get_type_hints(SearchOptions)


def test_text_search_returns_images_with_metadata(idx: xretrieve.Index) -> None:
    hits = idx.search("a large red circle", k=7)
    assert len(hits) == 7 and {h.modality for h in hits} == {"image"}
    assert hits[0].abs_path.is_file()
    table = hits.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == 7
    assert {"rank", "score", "path", "width", "content_hash", "shard", "row"} <= set(
        table.column_names
    )
    assert table.column("rank").to_pylist() == list(range(1, 8))


def test_k_larger_than_index_returns_everything(idx: xretrieve.Index) -> None:
    n = idx.manifest.rows_by_modality()["image"]
    hits = idx.search("anything", k=n + 50)
    assert len(hits) == n and len(set(hits.paths)) == n


@pytest.mark.parametrize("k", [0, -3])
def test_bad_k(idx: xretrieve.Index, k: int) -> None:
    with pytest.raises(InputError, match="k must be"):
        idx.search("x", k=k)


@pytest.mark.parametrize("q", ["", "   \n"])
def test_empty_query(idx: xretrieve.Index, q: str) -> None:
    with pytest.raises(EmptyQueryError):
        idx.search(q)


def test_corrupt_image_query(idx: xretrieve.Index, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MediaError, match=r"bad\.jpg"):
        idx.search(image=bad)


def test_query_vector_dimension_is_checked(idx: xretrieve.Index) -> None:
    with pytest.raises(InputError, match="dims"):
        idx.search_vector(np.zeros((1, 5), np.float32))


def test_other_model_is_refused(built_index: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "xr-other.json"
    cfg.write_text(
        '{"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,'
        ' "patch_size": 16}, "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32,'
        ' "heads": 2, "layers": 1}}'
    )
    xretrieve.register_model_config(cfg)
    with pytest.raises(ModelMismatchError, match="not comparable"):
        xretrieve.open_index(built_index, model="xr-other", pretrained=None, device="cpu")


# ---------------------------------------------------------------------------------------------
# Composed, hybrid, filtered and diversified search on a synthetic index whose vectors are
# placed around the tiny model's own query embeddings, so every rank below is designed.


def _meta(rows: list[dict[str, object]]) -> pa.Table:
    from xretrieve import store

    cols = {f.name: [r.get(f.name) for r in rows] for f in store.METADATA_SCHEMA}
    cols["shard"] = [""] * len(rows)
    cols["row"] = [0] * len(rows)
    return pa.Table.from_arrays(
        [pa.array(cols[f.name], f.type) for f in store.METADATA_SCHEMA],
        schema=store.METADATA_SCHEMA,
    )


def synthetic_index(
    path: Path,
    encoder: xretrieve.Encoder,
    vectors: np.ndarray,
    rows: list[dict[str, object]],
    *,
    modality: str = "image",
    index_type: str | None = None,
    max_rows: int = 1_000_000,
) -> xretrieve.Index:
    """An index of the given unit vectors and metadata rows, openable with `encoder`."""
    from xretrieve import store

    rows = [{"modality": modality, "width": 64, "height": 64, **r} for r in rows]
    store.write_generation(
        path,
        root=str(path),
        model=encoder.spec.to_dict(),
        dim=encoder.dim,
        payloads=[store.ShardPayload(modality, vectors.astype(np.float32), _meta(rows))],  # type: ignore[arg-type]
        max_rows_per_shard=max_rows,
        index_type=index_type,
    )
    return xretrieve.open_index(path, model="xr-tiny", pretrained=None, device="cpu")


def at_cosine(q: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with unit `q` is exactly `c`."""
    u = rng.standard_normal(q.shape[-1]).astype(np.float64)
    q64 = q.reshape(-1).astype(np.float64)
    u -= (u @ q64) * q64
    u /= np.linalg.norm(u)
    return (c * q64 + np.sqrt(max(0.0, 1 - c * c)) * u).astype(np.float32)


QUERY = "zebra striped umbrella"


@pytest.fixture(scope="module")
def hybrid_idx(tiny_encoder: xretrieve.Encoder, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A: dense best, no query word. B: lexical best, far. T: second in both. Fillers."""
    q = tiny_encoder.encode_texts([QUERY])[0]
    rng = np.random.default_rng(0)
    vecs = [at_cosine(q, 0.95, rng), at_cosine(q, 0.0, rng), at_cosine(q, 0.90, rng)]
    rows: list[dict[str, object]] = [
        {"path": "a/dense.png", "caption": "a quiet grey harbour"},
        {"path": "b/lexical.png", "caption": "zebra striped umbrella, zebra striped umbrella"},
        {"path": "c/target.png", "caption": "a zebra"},
    ]
    for i in range(20):
        vecs.append(at_cosine(q, 0.2 + 0.02 * i, rng))
        rows.append({"path": f"f/filler{i:02d}.png", "caption": f"green field number {i}"})
    path = tmp_path_factory.mktemp("hyb") / "idx"
    return synthetic_index(path, tiny_encoder, np.stack(vecs), rows)


def test_hybrid_rrf_finds_what_dense_and_lexical_each_miss(hybrid_idx: xretrieve.Index) -> None:
    dense = hybrid_idx.search(QUERY, k=1)
    assert dense.paths == ["a/dense.png"]
    lexical_only = hybrid_idx.search(QUERY, k=1, hybrid=True, fusion="convex", alpha=0.0)
    assert lexical_only.paths == ["b/lexical.png"]
    fused = hybrid_idx.search(QUERY, k=3, hybrid=True, fusion="rrf")
    assert fused.paths[0] == "c/target.png"
    assert fused[0].score == pytest.approx(2 / 62, rel=1e-5)  # second in both lists, k = 60
    assert fused[0].components["lexical"] > 0 and fused[0].components["dense"] == pytest.approx(
        0.9, abs=1e-4
    )
    assert set(fused.paths[1:]) == {"a/dense.png", "b/lexical.png"}


def test_hybrid_convex_alpha(hybrid_idx: xretrieve.Index) -> None:
    mixed = hybrid_idx.search(QUERY, k=1, hybrid=True, fusion="convex", alpha=0.5)
    assert mixed.paths == ["c/target.png"]
    dense_only = hybrid_idx.search(QUERY, k=2, hybrid=True, fusion="convex", alpha=1.0)
    assert dense_only.paths == ["a/dense.png", "c/target.png"]
    assert dense_only[0].score == pytest.approx(1.0)
    # The RRF constant changes the scores, not this order.
    assert hybrid_idx.search(QUERY, k=1, hybrid=True, fusion="rrf", rrf_k=1)[
        0
    ].score == pytest.approx(2 / 3)


def test_hybrid_reads_path_words_and_keeps_filters(hybrid_idx: xretrieve.Index) -> None:
    hits = hybrid_idx.search("filler07", k=1, hybrid=True, fusion="convex", alpha=0.0)
    assert hits.paths == ["f/filler07.png"]
    hits = hybrid_idx.search(QUERY, k=3, hybrid=True, where="path NOT LIKE 'c/%'")
    assert "c/target.png" not in hits.paths and len(hits) == 3


def test_timings_name_each_stage(hybrid_idx: xretrieve.Index) -> None:
    hits = hybrid_idx.search(QUERY, k=2, hybrid=True, where="width > 0", mmr=0.5)
    stages = set(hits.timings)
    assert {"encode", "filter", "ann", "lexical", "fusion", "rerank", "metadata", "total"} <= stages
    assert hits.timings["total"] >= hits.timings["ann"] >= 0
    assert hits[:1].timings == hits.timings


def test_composed_query_weights_and_negatives(
    tiny_encoder: xretrieve.Encoder, tmp_path: Path
) -> None:
    e = tiny_encoder.encode_texts(["red", "blue", "green"])
    red, blue, green = e
    rng = np.random.default_rng(1)
    mix = (red + blue) / np.linalg.norm(red + blue)
    mostly_red = (2 * red + blue) / np.linalg.norm(2 * red + blue)
    away = (red - 0.5 * green) / np.linalg.norm(red - 0.5 * green)
    vecs = np.stack([mix, mostly_red, away, *[at_cosine(red, 0.1, rng) for _ in range(5)]])
    rows = [{"path": p} for p in ["mix.png", "mostly_red.png", "away.png"]] + [
        {"path": f"x{i}.png"} for i in range(5)
    ]
    idx = synthetic_index(tmp_path / "idx", tiny_encoder, vecs, rows)
    assert idx.search(["red", "blue"], k=1).paths == ["mix.png"]
    assert idx.search(["red", "blue"], weights=[2, 1], k=1).paths == ["mostly_red.png"]
    hit = idx.search("red", negative="green", k=1)[0]
    assert hit.path == "away.png" and hit.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(
        idx.query_vector(["red", "blue"], weights=[2, 1])[0], mostly_red, atol=1e-5
    )


def test_composed_query_mixes_text_and_images(idx: xretrieve.Index, world_dir: Path) -> None:
    pngs = sorted((world_dir / "test").glob("*.png"))
    # An image term with a dominant weight wins over a text term: the image finds itself.
    hits = idx.search(["a red circle", Image.open(pngs[2])], weights=[0.01, 1.0], k=1)
    assert hits.paths == [pngs[2].name]
    hits = idx.search("a red circle", image=pngs[4], weights=[0.01, 1.0], k=1)
    assert hits.paths == [pngs[4].name]
    expected = idx.query_vector(pngs[1])
    got = idx.query_vector(["x", pngs[1]], weights=[1e-6, 1.0])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_composed_query_bad_input(idx: xretrieve.Index) -> None:
    with pytest.raises(EmptyQueryError, match="only negative"):
        idx.search(negative=["people"])
    with pytest.raises(EmptyQueryError, match="empty"):
        idx.search(["a beach", "  "])
    with pytest.raises(InputError, match="weights"):
        idx.search(["a", "b"], weights=[1.0])
    with pytest.raises(InputError, match="cancel"):
        idx.search("red", negative="red", negative_weights=[1.0])


@pytest.fixture(scope="module")
def dup_idx(tiny_encoder: xretrieve.Encoder, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Three near-copies of the best match, one different good match, weak fillers."""
    q = tiny_encoder.encode_texts([QUERY])[0]
    rng = np.random.default_rng(2)
    best = at_cosine(q, 0.97, rng)
    copies = []
    for _ in range(3):
        c = best + 0.01 * at_cosine(best, 0.0, rng)
        copies.append(c / np.linalg.norm(c))
    # Good too (cosine 0.8) but on the other side of q from the copies: cosine ~0.63 to them.
    side = best - (best @ q) * q
    other = 0.8 * q - 0.6 * side / np.linalg.norm(side)
    fill = [at_cosine(q, 0.3, rng) for _ in range(10)]
    vecs = np.stack([*copies, other, *fill])
    rows = [{"path": f"copy{i}.png"} for i in range(3)] + [{"path": "other.png"}]
    rows += [{"path": f"fill{i}.png"} for i in range(10)]
    return synthetic_index(tmp_path_factory.mktemp("dup") / "idx", tiny_encoder, vecs, rows)


def test_mmr_and_dedup_surface_the_different_match(dup_idx: xretrieve.Index) -> None:
    plain = dup_idx.search(QUERY, k=2)
    assert set(plain.paths) <= {"copy0.png", "copy1.png", "copy2.png"}
    diverse = dup_idx.search(QUERY, k=2, mmr=0.5)
    assert diverse.paths[1] == "other.png" and diverse.paths[0].startswith("copy")
    assert dup_idx.search(QUERY, k=2, mmr=1.0).paths == plain.paths
    collapsed = dup_idx.search(QUERY, k=3, dedup=0.99)
    assert collapsed.paths[:2] == [plain.paths[0], "other.png"]
    assert collapsed.paths[2].startswith("fill")
    # A pool of k * oversample = 2 holds only copies: nothing different to promote.
    assert dup_idx.search(QUERY, k=2, dedup=0.99, oversample=1).paths == plain.paths[:1]


def test_rerank_scores_exactly_from_a_larger_pool(
    dup_idx: xretrieve.Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xretrieve.store import ann

    asked: list[int] = []
    real = ann.search_shards

    def spy(builts, q, ks):  # type: ignore[no-untyped-def]
        asked.extend(ks)
        return real(builts, q, ks)

    monkeypatch.setattr(ann, "search_shards", spy)
    hits = dup_idx.search(QUERY, k=3, rerank=True, oversample=4)
    assert asked == [12]
    q = dup_idx.query_vector(QUERY)[0]
    shard = dup_idx.shards("image")[0]
    stored = ann.reconstruct_vectors(shard.index, np.array([h.metadata["row"] for h in hits]))
    np.testing.assert_allclose([h.score for h in hits], stored @ q, atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bad_options(idx: xretrieve.Index) -> None:
    for kw, match in [
        ({"fusion": "max"}, "fusion"),
        ({"alpha": 2.0}, "alpha"),
        ({"oversample": 0}, "oversample"),
        ({"mmr": -0.1}, "mmr"),
        ({"dedup": 1.5}, "dedup"),
        ({"rrf_k": -1}, "rrf_k"),
        ({"modality": "video"}, "modality"),
    ]:
        with pytest.raises(InputError, match=match):
            idx.search("x", **kw)  # type: ignore[arg-type]


def test_refresh_sees_a_new_generation(
    tiny_encoder: xretrieve.Encoder, built_index: Path, tmp_path: Path
) -> None:
    import shutil

    from xretrieve.indexer.corpus import add_captions

    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    idx = xretrieve.open_index(copy, device="cpu")
    before = idx.manifest.rows_by_modality()["text"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("one caption\nanother caption\n")
    add_captions(copy, corpus, encoder=tiny_encoder)
    assert idx.refresh() and idx.manifest.rows_by_modality()["text"] == before + 2
    assert not idx.refresh()
    assert len(idx.search("one caption", modality="text", k=before + 2)) == before + 2


def test_an_open_index_keeps_its_generation_across_writes(
    tiny_encoder: xretrieve.Encoder, media_dir: Path, tmp_path: Path
) -> None:
    """Opened, nothing loaded yet, then three re-index runs land: the old view, whole."""
    idx_dir = tmp_path / "idx"
    opts = IndexOptions(progress=False)
    index_folder(media_dir, idx_dir, encoder=tiny_encoder, options=opts)
    idx = xretrieve.open_index(idx_dir, device="cpu")
    n_images = idx.manifest.rows_by_modality()["image"]
    first = idx.manifest.shards[0].index_file.name
    victims = sorted(media_dir.glob("*.png"))[:3]
    for v in victims:  # each run rewrites the shards of the deleted file
        v.unlink()
        index_folder(media_dir, idx_dir, encoder=tiny_encoder, options=opts)
    assert (idx_dir / "shards" / first).exists()  # kept for the open index
    hits = idx.search("a red circle", k=n_images + 10)
    assert len(hits) == n_images  # the view of the generation it opened, deleted files too
    assert {v.name for v in victims} <= {Path(h.path).name for h in hits}
    assert idx.refresh()
    hits = idx.search("a red circle", k=n_images + 10)
    assert len(hits) == n_images - 3
    assert not {v.name for v in victims} & {Path(h.path).name for h in hits}
    idx.close()


def test_one_index_serves_many_threads_at_once(built_index: Path) -> None:
    # A server shares one Index across worker threads; filtered searches fill and evict its
    # caches concurrently. Every thread must get the answer a lone search gets.
    from concurrent.futures import ThreadPoolExecutor

    from xretrieve.query import index as query_index

    idx = xretrieve.open_index(built_index, device="cpu")
    wheres = [f"width >= {w}" for w in range(0, 40)]
    alone = {w: [h.path for h in idx.search("a red circle", k=3, where=w)] for w in wheres}
    small = query_index._CACHE_ENTRIES
    query_index._CACHE_ENTRIES = 4  # evict all the time
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(
                pool.map(
                    lambda w: (w, [h.path for h in idx.search("a red circle", k=3, where=w)]),
                    wheres * 5,
                )
            )
    finally:
        query_index._CACHE_ENTRIES = small
    assert all(paths == alone[w] for w, paths in got)
    assert len(got) == 200
