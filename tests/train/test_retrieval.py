"""Recall on image-caption sets, checked against a brute-force full score matrix."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from caption_sets import Pairs, distractor, world_pairs, write_coco, write_folder, write_table

from xretrieve.encoders import Encoder
from xretrieve.errors import InputError, MediaError
from xretrieve.media import load_image
from xretrieve.train.datasets import EvalSet, load_eval_set
from xretrieve.train.evaluate import EvalReport, keyed_recall
from xretrieve.train.retrieval import (
    chance_both_ways,
    encode_eval_images,
    encode_eval_texts,
    evaluate_retrieval,
    recall_both_ways,
    recall_by_label,
)

KS = (1, 2, 5, 10)
CLI_KS = (1, 5, 10)


def brute_force(
    images: np.ndarray, texts: np.ndarray, caption_image: np.ndarray, ks: tuple[int, ...]
) -> tuple[dict[int, float], dict[int, float]]:
    """The protocol written out: the full score matrix, a full sort of every row and column."""
    sim = texts @ images.T  # (captions, images)
    t2i_rank = [
        int(np.where(np.argsort(-sim[i]) == caption_image[i])[0][0]) for i in range(len(texts))
    ]
    i2t_rank = []
    for j in range(len(images)):
        own = np.flatnonzero(caption_image == j)
        if len(own):  # an image with no caption is no query
            order = np.argsort(-sim[:, j])
            i2t_rank.append(min(int(np.where(order == c)[0][0]) for c in own))
    t2i = {k: float(np.mean([r < k for r in t2i_rank])) for k in ks}
    i2t = {k: float(np.mean([r < k for r in i2t_rank])) for k in ks}
    return t2i, i2t


def brute_chance(caption_image: np.ndarray, n_images: int, ks: tuple[int, ...]):  # type: ignore[no-untyped-def]
    n_cap = len(caption_image)
    counts = [int((caption_image == j).sum()) for j in range(n_images)]
    t2i = {k: min(k, n_images) / n_images for k in ks}
    i2t = {
        k: float(np.mean([1 - math.comb(n_cap - r, k) / math.comb(n_cap, k) for r in counts if r]))
        for k in ks
    }
    return t2i, i2t


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_set(seed: int, n_images: int = 40, dim: int = 8):  # type: ignore[no-untyped-def]
    """Unit vectors with 0..4 captions per image; captions lie near their image, noisily."""
    rng = np.random.default_rng(seed)
    images = _unit(rng, n_images, dim)
    counts = rng.integers(0, 5, size=n_images)
    counts[0] = 0  # at least one distractor image
    caption_image = np.repeat(np.arange(n_images), counts)
    texts = images[caption_image] + 0.9 * rng.standard_normal((len(caption_image), dim))
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)
    return images, texts, caption_image.astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [1, 7, 64, 1 << 21])
def test_recall_matches_brute_force(seed: int, block: int) -> None:
    images, texts, cap = _random_set(seed)
    want = brute_force(images, texts, cap, KS)
    got = recall_both_ways(images, texts, cap, ks=KS, max_block_scores=block)
    assert got == want
    assert 0 < got[0][1] < 1 and 0 < got[1][1] < 1  # neither trivial nor hopeless


def test_k_above_the_gallery_and_nan_scores() -> None:
    images, texts, cap = _random_set(3, n_images=6)
    t2i, i2t = recall_both_ways(images, texts, cap, ks=(6, 50))
    assert t2i == {6: 1.0, 50: 1.0} and i2t == {6: i2t[6], 50: 1.0}
    # NaN scores rank last: a query made of NaN finds its item only when K covers the gallery.
    q = np.array([[np.nan, np.nan]], dtype=np.float32)
    gallery = np.eye(2, dtype=np.float32)
    assert recall_by_label(q, gallery, np.array([1]), np.array([0, 1]), ks=(1, 2)) == {
        1: 0.0,
        2: 1.0,
    }
    with pytest.raises(InputError):
        recall_by_label(q, gallery, np.array([1]), np.array([0, 1]), ks=(0,))
    with pytest.raises(InputError):
        recall_by_label(q, gallery, np.array([1, 2]), np.array([0, 1]))


def test_chance_is_exact() -> None:
    _, _, cap = _random_set(4)
    got, want = chance_both_ways(cap, 40, ks=KS), brute_chance(cap, 40, KS)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-12)
    t2i, _ = chance_both_ways(np.arange(5), 5, ks=(1, 5, 9))
    assert t2i == pytest.approx({1: 0.2, 5: 1.0, 9: 1.0})


def test_the_score_matrix_is_never_held_whole() -> None:
    rng = np.random.default_rng(5)
    images, texts = _unit(rng, 2_000, 16), _unit(rng, 10_000, 16)
    cap = rng.integers(0, 2_000, size=10_000)
    full = 10_000 * 2_000 * 4  # the float32 matrix: 80 MB
    vectors = images.nbytes + texts.nbytes
    tracemalloc.start()
    try:
        recall_both_ways(images, texts, cap, ks=KS, max_block_scores=1 << 18)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The image->text queries copy the image vectors once; a block is 2^18 scores.
    assert peak < vectors + 8 * 2**20, peak
    assert peak < full / 8


# --- with a real (tiny, random) encoder on sets built from the world ----------------------


@pytest.fixture(scope="module")
def pairs(world_dir: Path) -> Pairs:
    return world_pairs(world_dir, n=16)


def _brute_report(
    encoder: Encoder, ds: EvalSet, ks: tuple[int, ...] = KS
) -> tuple[dict[int, float], dict[int, float]]:
    images = encoder.encode_images([load_image(p).image for p in ds.images])
    texts = encoder.encode_texts(ds.captions)
    return brute_force(images, texts, ds.caption_image, ks)


def test_encoding_matches_the_encoder(tiny_encoder: Encoder, pairs: Pairs, tmp_path: Path) -> None:
    ds = load_eval_set(write_folder(tmp_path / "f", pairs))
    got = encode_eval_images(tiny_encoder, ds.images, workers=3, progress=False)
    want = tiny_encoder.encode_images([load_image(p).image for p in ds.images])
    np.testing.assert_allclose(got, want, atol=1e-5)
    txt = encode_eval_texts(tiny_encoder, ds.captions, progress=False)
    np.testing.assert_allclose(txt, tiny_encoder.encode_texts(ds.captions), atol=1e-5)


@pytest.mark.parametrize("layout", ["folder", "csv", "coco"])
def test_evaluate_matches_brute_force(
    layout: str, tiny_encoder: Encoder, pairs: Pairs, world_dir: Path, tmp_path: Path
) -> None:
    extra = distractor(world_dir)
    if layout == "folder":
        ds = load_eval_set(write_folder(tmp_path / "f", pairs, extra=extra))
    elif layout == "csv":
        ds = load_eval_set(write_table(tmp_path / "c" / "caps.csv", pairs, extra=extra))
    else:
        ann = write_coco(tmp_path / "o" / "captions.json", pairs, extra=extra)
        ds = load_eval_set(ann, images=ann.parent / "val2014")
    report = evaluate_retrieval(tiny_encoder, ds, ks=KS, progress=False)
    assert isinstance(report, EvalReport)
    assert (report.text_to_image, report.image_to_text) == _brute_report(tiny_encoder, ds)
    chance_t2i, chance_i2t = brute_chance(ds.caption_image, ds.n_images, KS)
    assert report.chance_text_to_image == pytest.approx(chance_t2i, abs=1e-12)
    assert report.chance_image_to_text == pytest.approx(chance_i2t, abs=1e-12)
    assert report.n_images == len(pairs) + 1 and report.n_captions == sum(len(c) for _, c in pairs)
    d = report.to_dict()
    assert d["images_without_captions"] == 1 and d["layout"] == layout and d["split"] == "all"
    assert set(d["text_to_image"]) == {"R@1", "R@2", "R@5", "R@10"}
    table = report.format_table()
    assert "text->image" in table and "image->text" in table and "chance" in table


def test_an_undecodable_image_stops_the_evaluation(
    tiny_encoder: Encoder, pairs: Pairs, tmp_path: Path
) -> None:
    ds = load_eval_set(write_folder(tmp_path / "f", pairs[:3]))
    ds.images[1].write_bytes(b"not a png")
    with pytest.raises(MediaError) as e:
        evaluate_retrieval(tiny_encoder, ds, progress=False)
    assert ds.images[1].name in str(e.value)


def test_cli_eval_data_json(
    cli, tiny_encoder: Encoder, pairs: Pairs, world_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ann = write_table(
        tmp_path / "cb" / "flickr30k_test_karpathy.txt",
        pairs,
        quote=False,
        extra=distractor(world_dir),
    )
    tiny = ["xr-tiny", "--pretrained", "none", "--device", "cpu"]
    r = cli("eval", *tiny, "--data", ann.parent, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want_t2i, want_i2t = _brute_report(tiny_encoder, load_eval_set(ann), CLI_KS)
    assert got["text_to_image"] == keyed_recall(want_t2i)
    assert got["image_to_text"] == keyed_recall(want_i2t)
    assert (got["n_images"], got["n_captions"]) == (len(pairs) + 1, sum(len(c) for _, c in pairs))
    assert got["split"] == "test" and got["layout"] == "csv" and got["data"] == str(ann)
    r = cli("eval", *tiny, "--data", ann.parent)
    assert r.returncode == 3 and r.stderr.startswith("error:") and "choose a split" in r.stderr
    assert "(hint: --split NAME chooses one)" in r.stderr
    r = cli("eval", *tiny, "--data", ann, "--split", "val", "-q")
    assert r.returncode == 2 and "names no splits" in r.stderr
