"""Recall@K on an image-caption set, by the standard protocol (the CLIP paper, CLIP_benchmark).

Rules this module keeps:

- text->image R@K is the share of captions whose own image is among the K images scored
  highest; every image is in the gallery, captioned or not;
- image->text R@K is the share of images with at least one of their captions among the K
  captions scored highest; an image with no caption is no query (nothing can hit it);
- the captions x images score matrix is never held whole: a block of queries is scored
  against every gallery vector and cut to its top K (`np.argpartition`) at once, so memory is
  the vectors plus one block of `max_block_scores` scores;
- scores that tie at the K-th place are cut arbitrarily, as `torch.topk` does in CLIP_benchmark;
  NaN scores rank last;
- chance is the expected recall of a uniformly random ranking: K / images for text->image,
  and for image->text, per image, 1 - C(captions - r, K) / C(captions, K) for its r captions;
- images are decoded and preprocessed in threads while the model encodes the previous batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xretrieve._threads import bounded_map, default_workers
from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.media.image import load_image
from xretrieve.train.datasets import EvalSet
from xretrieve.train.evaluate import DEFAULT_KS, EvalReport, _check_ks, chance_from_counts
from xretrieve.train.progress import progress_bar

if TYPE_CHECKING:
    from xretrieve.encoders import EncoderLike

__all__ = [
    "MAX_BLOCK_SCORES",
    "chance_both_ways",
    "encode_eval_images",
    "encode_eval_texts",
    "evaluate_retrieval",
    "recall_both_ways",
    "recall_by_label",
]

#: Scores computed at once per block of queries (float32 scores + int64 partition indices).
MAX_BLOCK_SCORES = 1 << 21
_TEXT_BATCH = 256


def recall_by_label(
    queries: Vectors,
    gallery: Vectors,
    query_labels: Ids,
    gallery_labels: Ids,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    max_block_scores: int = MAX_BLOCK_SCORES,
) -> dict[int, float]:
    """Share of queries with a gallery item of their own label among their top K, by blocks."""
    ks = _check_ks(ks)
    n, g = len(queries), len(gallery)
    if n == 0 or g == 0:
        raise InputError("recall needs at least one query and one gallery item")
    if len(query_labels) != n or len(gallery_labels) != g:
        raise InputError("there must be one label per query and one per gallery item")
    top_k = min(max(ks), g)
    rows = max(1, max_block_scores // g)
    hits = np.zeros(len(ks), dtype=np.int64)
    for start in range(0, n, rows):
        # Negated scores, so the smallest come first; NaN becomes +inf and ranks last.
        neg = queries[start : start + rows] @ gallery.T
        np.negative(neg, out=neg)
        neg[np.isnan(neg)] = np.inf
        if top_k < g:
            top = np.argpartition(neg, top_k - 1, axis=1)[:, :top_k]
        else:
            top = np.broadcast_to(np.arange(g), neg.shape)
        order = np.argsort(np.take_along_axis(neg, top, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, axis=1)
        match = gallery_labels[ranked] == query_labels[start : start + rows, None]
        # Rank (0-based) of the first relevant item within the top K; top_k when none.
        first = np.where(match.any(axis=1), match.argmax(axis=1), top_k)
        hits += [(first < k).sum() for k in ks]
    return {k: float(h) / n for k, h in zip(ks, hits, strict=True)}


def recall_both_ways(
    images: Vectors,
    texts: Vectors,
    caption_image: Ids,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    max_block_scores: int = MAX_BLOCK_SCORES,
) -> tuple[dict[int, float], dict[int, float]]:
    """(text->image, image->text) R@K of unit vectors; caption i describes image caption_image[i]."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    image_ids = np.arange(len(images), dtype=np.int64)
    t2i = recall_by_label(
        texts, images, caption_image, image_ids, ks=ks, max_block_scores=max_block_scores
    )
    captioned = np.unique(caption_image)
    i2t = recall_by_label(
        images[captioned],
        texts,
        captioned,
        caption_image,
        ks=ks,
        max_block_scores=max_block_scores,
    )
    return t2i, i2t


def chance_both_ways(
    caption_image: Ids, n_images: int, *, ks: Sequence[int] = DEFAULT_KS
) -> tuple[dict[int, float], dict[int, float]]:
    """(text->image, image->text) R@K of a uniformly random ranking, exactly."""
    counts = np.bincount(caption_image, minlength=n_images)
    t2i = chance_from_counts(np.ones(len(caption_image)), n_images, ks)
    i2t = chance_from_counts(counts[counts > 0], len(caption_image), ks)
    return t2i, i2t


def _bar(total: int, desc: str, unit: str, progress: bool | None) -> Any:
    return progress_bar(total, desc, unit, progress)


def encode_eval_images(
    encoder: EncoderLike,
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> Vectors:
    """Unit vectors of image files: decoded and preprocessed in threads, encoded in batches."""
    import torch

    size = encoder.spec.image_size
    prepare: Callable[[Path], torch.Tensor] = lambda p: encoder.preprocess(  # noqa: E731
        load_image(p, target_size=size).image
    )
    batch = max(encoder.batch_size, 1)
    out = np.empty((len(paths), encoder.dim), dtype=np.float32)
    pending: list[torch.Tensor] = []
    done = 0
    workers = workers or default_workers()
    with _bar(len(paths), "images", "img", progress) as bar:
        for pixels in bounded_map(prepare, paths, workers=workers, window=2 * batch):
            pending.append(pixels)
            if len(pending) == batch or done + len(pending) == len(paths):
                out[done : done + len(pending)] = encoder.encode_pixels(torch.stack(pending))
                done += len(pending)
                bar.update(len(pending))
                pending = []
    return out


def encode_eval_texts(
    encoder: EncoderLike, captions: Sequence[str], *, progress: bool | None = None
) -> Vectors:
    """Unit vectors of captions, encoded in batches."""
    out = np.empty((len(captions), encoder.dim), dtype=np.float32)
    with _bar(len(captions), "captions", "cap", progress) as bar:
        for start in range(0, len(captions), _TEXT_BATCH):
            chunk = captions[start : start + _TEXT_BATCH]
            out[start : start + len(chunk)] = encoder.encode_texts(chunk)
            bar.update(len(chunk))
    return out


def evaluate_retrieval(
    encoder: EncoderLike,
    data: EvalSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    workers: int | None = None,
    progress: bool | None = None,
) -> EvalReport:
    """R@K of `encoder` on an image-caption set, text->image and image->text, chance beside."""
    t0 = time.perf_counter()
    images = encode_eval_images(encoder, data.images, workers=workers, progress=progress)
    texts = encode_eval_texts(encoder, data.captions, progress=progress)
    t2i, i2t = recall_both_ways(images, texts, data.caption_image, ks=ks)
    chance_t2i, chance_i2t = chance_both_ways(data.caption_image, data.n_images, ks=ks)
    uncaptioned = int((data.captions_per_image() == 0).sum())
    return EvalReport(
        split=data.split or "all",
        n_images=data.n_images,
        n_captions=data.n_captions,
        text_to_image=t2i,
        image_to_text=i2t,
        chance_text_to_image=chance_t2i,
        chance_image_to_text=chance_i2t,
        model=encoder.spec.name,
        extra={
            "data": str(data.source),
            "layout": data.layout,
            "images_without_captions": uncaptioned,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
