"""Retrieval evaluation: recall@K with set-of-concepts relevance, next to its chance level.

The pure functions work on any similarity / relevance matrices; `evaluate_world` applies them
to a synthetic world (see `xretrieve.train.world`): text->image ranks every caption of a split
against every image of it, image->text the other way round, and an item is relevant to a
query when both carry the same set of object concepts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from xretrieve.errors import InputError, MediaError
from xretrieve.train.world import Label, concept_key, load_labels

if TYPE_CHECKING:
    from xretrieve.encoders import Encoder

__all__ = [
    "DEFAULT_KS",
    "EvalReport",
    "chance_from_counts",
    "chance_recall_at_k",
    "evaluate_world",
    "keyed_recall",
    "recall_at_k",
    "recall_table",
    "relevance_matrix",
]

DEFAULT_KS = (1, 5, 10)
Bools = npt.NDArray[np.bool_]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or min(out) <= 0:
        raise InputError(f"ks must be positive integers, got {list(ks)}")
    return out


def _answerable(relevant: Bools) -> Bools:
    """Queries with at least one relevant item; the others cannot be hit and are left out."""
    rows: Bools = np.asarray(relevant.any(axis=1), dtype=bool)
    if not rows.any():
        raise InputError("no query has a relevant item: recall is undefined")
    return rows


def recall_at_k(
    sim: npt.NDArray[np.floating], relevant: Bools, ks: Sequence[int] = DEFAULT_KS
) -> dict[int, float]:
    """Fraction of queries with a relevant item among their top K (rows: queries)."""
    sim = np.asarray(sim)
    relevant = np.asarray(relevant, dtype=bool)
    if sim.ndim != 2 or sim.shape != relevant.shape:
        raise InputError(
            f"sim and relevant must be (queries, gallery) matrices of one shape, "
            f"got {sim.shape} and {relevant.shape}"
        )
    ks = _check_ks(ks)
    rows = _answerable(relevant)
    sim, relevant = sim[rows], relevant[rows]
    g = sim.shape[1]
    # NaN scores would make the partition meaningless; rank them last.
    scores = np.where(np.isnan(sim), -np.inf, sim)
    out: dict[int, float] = {}
    for k in ks:
        if k >= g:
            top = np.broadcast_to(np.arange(g), scores.shape)
        else:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits = np.take_along_axis(relevant, top, axis=1).any(axis=1)
        out[k] = float(hits.mean())
    return out


def chance_recall_at_k(relevant: Bools, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Expected recall@K of a uniformly random ranking: mean of 1 - C(g-r, K) / C(g, K)."""
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.ndim != 2:
        raise InputError(f"relevant must be a (queries, gallery) matrix, got {relevant.shape}")
    ks = _check_ks(ks)
    rows = _answerable(relevant)
    return chance_from_counts(relevant[rows].sum(axis=1), relevant.shape[1], ks)


def chance_from_counts(
    relevant: npt.ArrayLike, gallery: int, ks: Sequence[int] = DEFAULT_KS
) -> dict[int, float]:
    """Expected recall@K of a random ranking for queries with `relevant` items each in `gallery`."""
    ks = _check_ks(ks)
    r = np.asarray(relevant, dtype=np.float64)
    g = int(gallery)
    out: dict[int, float] = {}
    for k in ks:
        # C(g-r, K) / C(g, K) = prod_{i<K} (g-r-i) / (g-i): no huge binomials needed.
        miss = np.ones_like(r)
        for i in range(min(k, g)):
            miss *= np.clip(g - r - i, 0.0, None) / (g - i)
        out[k] = float(np.mean(1.0 - miss))
    return out


def relevance_matrix(query_keys: Sequence[object], gallery_keys: Sequence[object]) -> Bools:
    """relevant[i, j] is True when query i and gallery item j have equal keys."""
    ids: dict[object, int] = {}
    q = np.array([ids.setdefault(k, len(ids)) for k in query_keys], dtype=np.int64)
    g = np.array([ids.setdefault(k, len(ids)) for k in gallery_keys], dtype=np.int64)
    result: Bools = q[:, None] == g[None, :]
    return result


@dataclass(frozen=True)
class EvalReport:
    """Recall@K both ways on one split of a world, with chance levels."""

    split: str
    n_images: int
    n_captions: int
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    chance_text_to_image: dict[int, float]
    chance_image_to_text: dict[int, float]
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "model": self.model,
            "n_images": self.n_images,
            "n_captions": self.n_captions,
            "text_to_image": keyed_recall(self.text_to_image),
            "image_to_text": keyed_recall(self.image_to_text),
            "chance_text_to_image": keyed_recall(self.chance_text_to_image),
            "chance_image_to_text": keyed_recall(self.chance_image_to_text),
            **self.extra,
        }

    def format_table(self) -> str:
        return recall_table(
            f"split={self.split} images={self.n_images} captions={self.n_captions}",
            {
                "text->image": (self.text_to_image, self.chance_text_to_image),
                "image->text": (self.image_to_text, self.chance_image_to_text),
            },
        )


def keyed_recall(recall: dict[int, float]) -> dict[str, float]:
    """{k: value} as {"R@k": value rounded to 4 places}, for JSON."""
    return {f"R@{k}": round(v, 4) for k, v in recall.items()}


def recall_table(title: str, rows: dict[str, tuple[dict[int, float], dict[int, float]]]) -> str:
    """A plain-text table: one line per direction, R@k beside chance for each k."""
    ks = list(next(iter(rows.values()))[0])
    head = f"{'direction':<14}" + "".join(f"{'R@' + str(k):>8}{'chance':>9}" for k in ks)
    lines = [title, head]
    for name, (got, chance) in rows.items():
        cells = "".join(f"{got[k]:>8.3f}{chance[k]:>9.4f}" for k in ks)
        lines.append(f"{name:<14}{cells}")
    return "\n".join(lines)


def _load_images(paths: Sequence[Path]) -> list[Any]:
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise MediaError(p, f"cannot decode image ({e})") from e
    return images


@dataclass(frozen=True)
class WorldSplit:
    """One split of a world: its labels, their concept keys, and every caption with its key."""

    root: Path
    labels: list[Label]
    keys: list[frozenset[str]]
    captions: list[str]
    caption_keys: list[frozenset[str]]

    def load_images(self) -> list[Any]:
        """The split's images as RGB PIL images, in label order."""
        return _load_images([self.root / lab.path for lab in self.labels])


def world_split(world_dir: str | os.PathLike[str], split: str) -> WorldSplit:
    """Read one split of a world made by `make-world`."""
    root = Path(world_dir)
    labels = [lab for lab in load_labels(root).values() if lab.split == split]
    if not labels:
        raise InputError(f"world {root} has no items in split {split!r}")
    return WorldSplit(
        root=root,
        labels=labels,
        keys=[concept_key(lab) for lab in labels],
        captions=[c for lab in labels for c in lab.captions],
        caption_keys=[concept_key(lab) for lab in labels for _ in lab.captions],
    )


def evaluate_world(
    encoder: Encoder,
    world_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
) -> EvalReport:
    """Recall@K of `encoder` on one split of a world, text->image and image->text."""
    ws = world_split(world_dir, split)
    img = encoder.encode_images(ws.load_images())
    txt = encoder.encode_texts(ws.captions)
    sim_ti = txt @ img.T
    rel_ti = relevance_matrix(ws.caption_keys, ws.keys)
    return EvalReport(
        split=split,
        n_images=len(ws.labels),
        n_captions=len(ws.captions),
        text_to_image=recall_at_k(sim_ti, rel_ti, ks),
        image_to_text=recall_at_k(sim_ti.T, rel_ti.T, ks),
        chance_text_to_image=chance_recall_at_k(rel_ti, ks),
        chance_image_to_text=chance_recall_at_k(rel_ti.T, ks),
        model=encoder.spec.name,
    )
