"""Recall through a built index: exact search beside the index's own, checked by brute force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xretrieve.encoders import Encoder
from xretrieve.errors import InputError
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.query import Index
from xretrieve.train.datasets import load_eval_set
from xretrieve.train.index_eval import (
    brute_force_top,
    evaluate_index,
    find_world,
    overlap_at_k,
    recall_of_ranked,
)
from xretrieve.train.world import concept_key, load_labels, make_world

KS = (1, 5, 10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ieworld") / "w"
    make_world(root, n=320, seed=13, image_size=32)
    return root


def _index(world: Path, out: Path, encoder: Encoder, index_type: str) -> Path:
    opts = IndexOptions(progress=False, index_type=index_type)
    index_folder(world, out, encoder=encoder, options=opts)
    return out


@pytest.fixture(scope="module")
def ivf_index(world: Path, tiny_encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 320 vectors make 4 IVF lists; the nprobe tuned on image rows misses some neighbours
    # of caption queries, so the index's results differ from exact search.
    return _index(world, tmp_path_factory.mktemp("ivf") / "index", tiny_encoder, "ivf-flat")


@pytest.fixture(scope="module")
def flat_index(
    world: Path, tiny_encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _index(world, tmp_path_factory.mktemp("flat") / "index", tiny_encoder, "flat")


def _open(path: Path, encoder: Encoder) -> Index:
    from xretrieve import store

    return Index(path, store.read_manifest(path), encoder)


def _brute_force(idx: Index, world: Path, encoder: Encoder) -> dict[str, object]:
    """The protocol written out plainly: every caption, every image item, full sorts."""
    labels = load_labels(world)
    items = []
    for s in idx.shards("image"):
        items += [Path(idx.root) / p for p in s.metadata.column("path").to_pylist()]
    keys = [concept_key(labels[p.relative_to(world).as_posix()]) for p in items]
    captions, cap_keys = [], []
    for lab in labels.values():
        if lab.split == "test":
            captions += list(lab.captions)
            cap_keys += [concept_key(lab)] * len(lab.captions)
    pics = []
    for p in items:
        with Image.open(p) as im:
            pics.append(im.convert("RGB"))
    img = encoder.encode_images(pics)
    txt = encoder.encode_texts(captions)
    exact = np.argsort(-(txt @ img.T), axis=1, kind="stable")[:, :10]
    found = []
    for c in captions:
        paths = [h.abs_path for h in idx.search(c, k=10)]
        found.append([items.index(p) for p in paths])
    rel = [[keys[j] == ck for j in range(len(items))] for ck in cap_keys]

    def recall(ranked: list[list[int]] | np.ndarray) -> dict[int, float]:
        return {
            k: float(np.mean([any(rel[i][j] for j in r[:k]) for i, r in enumerate(ranked)]))
            for k in KS
        }

    overlap = np.mean(
        [len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=True)]
    )
    return {
        "n_items": len(items),
        "n_queries": len(captions),
        "exact": recall(exact),
        "index": recall(found),
        "overlap": float(overlap),
    }


def test_ivf_index_recall_matches_brute_force(
    ivf_index: Path, world: Path, tiny_encoder: Encoder
) -> None:
    with _open(ivf_index, tiny_encoder) as idx:
        report = evaluate_index(idx, progress=False)
        truth = _brute_force(idx, world, tiny_encoder)
    assert report.n_items == truth["n_items"] == 320
    assert report.n_queries == truth["n_queries"] == 64
    assert report.exact == pytest.approx(truth["exact"], abs=1e-9)
    assert report.through_index == pytest.approx(truth["index"], abs=1e-9)
    assert report.overlap == pytest.approx(truth["overlap"], abs=1e-9)
    # The IVF index really loses some exact neighbours, but not most of them.
    assert 0.5 < report.overlap < 1.0
    assert report.shards and report.shards[0]["index_type"] == "ivf-flat"
    assert report.shards[0]["recall"] is not None


def test_flat_index_is_exact(flat_index: Path, world: Path, tiny_encoder: Encoder) -> None:
    with _open(flat_index, tiny_encoder) as idx:
        report = evaluate_index(idx, world=world, progress=False)
    assert report.overlap == pytest.approx(1.0)
    assert report.through_index == pytest.approx(report.exact)
    # Chance of a random ranking: each caption has at least its own image relevant.
    assert all(0.0 < report.chance[k] <= 1.0 for k in KS)
    assert report.chance[1] < report.chance[5] < report.chance[10]


def test_image_caption_set_through_the_index(
    world: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    # A folder set (images + .txt captions) indexed as is: each caption's own image is relevant.
    data = tmp_path / "set"
    shutil.copytree(world / "test", data)
    index = _index(data, tmp_path / "index", tiny_encoder, "flat")
    ds = load_eval_set(data)
    with _open(index, tiny_encoder) as idx:
        report = evaluate_index(idx, data=ds, progress=False)
        found = [[h.abs_path.resolve() for h in idx.search(c, k=5)] for c in ds.captions]
    assert report.n_queries == len(ds.captions) == 64
    own = [ds.images[i].resolve() for i in ds.caption_image]
    r5 = np.mean([o in f for o, f in zip(own, found, strict=True)])
    assert report.through_index[5] == pytest.approx(r5)
    assert report.chance[1] == pytest.approx(1 / 64)


def test_find_world(world: Path, tmp_path: Path) -> None:
    assert find_world(world / "test") == world.resolve()
    assert find_world(world) == world.resolve()
    assert find_world(tmp_path) is None


def test_pure_functions() -> None:
    q = np.eye(3, dtype=np.float32)
    g = np.array([[0.1, 0.9, 0], [1, 0, 0], [0, 0, 1], [0.5, 0.5, 0]], np.float32)
    top = brute_force_top(q, g, 2, max_block_scores=4)  # one query per block
    assert top.tolist() == [[1, 3], [0, 3], [2, 0]]
    ranked = np.array([[1, 3], [0, -1], [2, 0]])
    assert recall_of_ranked(ranked, np.array([7, 9, 5]), np.array([5, 7, 9, 9]), (1, 2)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
    }
    assert overlap_at_k(np.array([[1, 2], [0, 3]]), np.array([[1, 3], [0, 3]]), 2) == 0.75
    with pytest.raises(InputError):
        recall_of_ranked(ranked, np.array([1, 2]), np.arange(4), (1,))


def test_cli_eval_index(cli, ivf_index: Path, tiny_encoder: Encoder) -> None:  # type: ignore[no-untyped-def]
    r = cli("eval", "xr-tiny", "--index", ivf_index, "--json", "-q")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    with _open(ivf_index, tiny_encoder) as idx:
        report = evaluate_index(idx, progress=False)
    want = report.to_dict()
    for key in ("exact", "index_recall", "index_vs_exact_recall@10", "n_items", "n_queries"):
        assert got[key] == want[key]
    text = report.format_table()
    assert "index vs exact search: recall@10" in text
    assert "ivf-flat nprobe=" in text
    # The index's own measured recall is still in `info`.
    info = cli("info", ivf_index)
    assert info.returncode == 0, info.stderr
    assert "recall@10" in info.stdout


def test_index_outside_a_world_needs_labels(
    tmp_path: Path, tiny_encoder: Encoder, world: Path
) -> None:
    media = tmp_path / "media"
    shutil.copytree(world / "test", media)
    index = _index(media, tmp_path / "index", tiny_encoder, "flat")
    with _open(index, tiny_encoder) as idx, pytest.raises(InputError, match="not built inside"):
        evaluate_index(idx, progress=False)
    with _open(index, tiny_encoder) as idx, pytest.raises(InputError, match="holds none"):
        evaluate_index(idx, world=world, split="nope", progress=False)
