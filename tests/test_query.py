"""Searching an index from Python: ranks, conversions, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import xretrieve
from xretrieve.errors import EmptyQueryError, InputError, MediaError, ModelMismatchError


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
