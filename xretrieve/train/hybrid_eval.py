"""Does hybrid search earn its place? Dense, RRF and convex fusion R@K on held-out cases.

Each case is an index of one world split's images, searched text->image with the split's
captions (or serials) as queries; the queries are never in the index, so BM25 cannot find
them verbatim:

    serial            a world made with serials: file names carry each scene's serial and
                      the queries read "the scene SN-48213"; the one relevant item is that
                      scene's image. No model can read a serial from pixels: lexical signal
                      is all there is.
    plain             the plain world, no captions in the index: BM25 finds nothing, so
                      fusion must leave the dense ranking as it is.
    plain-captioned   the plain world, each image with a sidecar holding another paraphrase
                      of its scene (drawn afresh): lexical signal is real but says nothing
                      the model does not see; fusion must not hurt.

Rules this module keeps: every method of a case searches the same index with the same model
and queries through `Index.search`; only `SearchOptions` differ (hybrid off; hybrid with
`fusion="rrf"`; hybrid with `fusion="convex"`). Relevance is the world's (same set of
concepts) for caption queries and the scene itself for serial queries.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from xretrieve.errors import FolderError, InputError
from xretrieve.train.evaluate import DEFAULT_KS, _check_ks
from xretrieve.train.index_eval import (
    IndexQueries,
    index_items,
    recall_of_ranked,
    search_ranked,
    world_queries,
)
from xretrieve.train.world import SceneObject, load_labels, make_caption

if TYPE_CHECKING:
    from xretrieve.query import Index, SearchOptions

__all__ = [
    "CASES",
    "METHODS",
    "FusionCase",
    "compare_fusions",
    "fusion_cases",
    "fusion_table",
    "held_out_folder",
    "serial_queries",
    "serial_query",
]

Case = Literal["serial", "plain", "plain-captioned"]
CASES: tuple[Case, ...] = ("serial", "plain", "plain-captioned")
METHODS = ("dense", "rrf", "convex")


def serial_query(serial: str) -> str:
    """The query that asks for a scene by its serial number."""
    return f"the scene {serial}"


def _objects(concepts: Sequence[str]) -> list[SceneObject]:
    """The scene objects of a label's concepts ("small red circle top-left")."""
    out = []
    for c in concepts:
        size, colour, shape, position = c.split(" ")
        out.append(SceneObject(shape=shape, colour=colour, size=size, position=position))
    return out


def held_out_folder(
    world_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    captions: bool = False,
    seed: int = 0,
) -> Path:
    """Copy a world split's images (not its captions) into `out_dir`, for indexing.

    With `captions`, each image gets a sidecar holding a paraphrase of its scene drawn
    afresh (plus its serial, in a world with serials), never the caption that queries it.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FolderError(f"{out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    labels = [lab for lab in load_labels(world_dir).values() if lab.split == split]
    if not labels:
        raise InputError(f"world {world_dir} has no items in split {split!r}")
    for i, lab in enumerate(labels):
        src = Path(world_dir) / lab.path
        dst = out / Path(lab.path).name
        shutil.copyfile(src, dst)
        if captions:
            rng = np.random.default_rng([seed, 0xCA9, i])
            text = make_caption(_objects(lab.concepts), rng)
            if lab.serial:
                text = f"{text} {lab.serial}"
            dst.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return out


def serial_queries(items: Sequence[Path], world_dir: str | os.PathLike[str]) -> IndexQueries:
    """One query per indexed scene of a world with serials; each is relevant to itself only."""
    by_name = {Path(lab.path).name: lab for lab in load_labels(world_dir).values()}
    gallery = np.full(len(items), -1, np.int64)
    queries: list[str] = []
    for i, item in enumerate(items):
        lab = by_name.get(item.name)
        if lab is None or not lab.serial:
            continue
        gallery[i] = len(queries)
        queries.append(serial_query(lab.serial))
    if not queries:
        raise InputError(f"no indexed image is a scene of {world_dir} with a serial")
    labels = np.arange(len(queries), dtype=np.int64)
    return IndexQueries(queries, labels, gallery, str(world_dir))


def _by_name(items: Sequence[Path], world_dir: str | os.PathLike[str], split: str) -> IndexQueries:
    """`world_queries` for items copied out of the world (matched by file name)."""
    labels = load_labels(world_dir)
    names = {Path(p).name: p for p in labels}
    inside = [Path(world_dir) / names.get(p.name, p.name) for p in items]
    return world_queries(inside, world_dir, split=split)


def compare_fusions(
    idx: Index,
    queries: IndexQueries,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    base: SearchOptions | None = None,
) -> dict[str, dict[int, float]]:
    """R@K of each method (dense, rrf, convex) for the same queries through the same index."""
    from dataclasses import replace

    from xretrieve.query import SearchOptions

    ks = _check_ks(ks)
    opts = base or SearchOptions()
    methods = {
        "dense": replace(opts, hybrid=False),
        "rrf": replace(opts, hybrid=True, fusion="rrf"),
        "convex": replace(opts, hybrid=True, fusion="convex"),
    }
    position = {p: i for i, p in enumerate(index_items(idx))}
    out = {}
    for name, o in methods.items():
        ranked = search_ranked(
            idx, queries.captions, position, k=max(ks), options=o, progress=False
        )
        out[name] = recall_of_ranked(ranked, queries.labels, queries.gallery_labels, ks)
    return out


@dataclass(frozen=True)
class FusionCase:
    """One case's R@K per method, with its size."""

    case: str
    n_items: int
    n_queries: int
    recall: dict[str, dict[int, float]]
    seconds: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)

    def gain(self, method: str, k: int) -> float:
        """R@k of `method` less R@k of dense search."""
        return self.recall[method][k] - self.recall["dense"][k]


def fusion_cases(
    model: str | os.PathLike[str],
    plain_world: str | os.PathLike[str],
    serial_world: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    cases: Sequence[Case] = CASES,
    device: str = "cpu",
) -> list[FusionCase]:
    """Index each case's held-out folder with `model` and compare dense, RRF and convex R@K."""
    from xretrieve.encoders import load_encoder
    from xretrieve.indexer import IndexOptions, index_folder
    from xretrieve.query import open_index

    work = Path(work_dir)
    encoder = load_encoder(str(model), device=device)
    results = []
    for case in cases:
        t0 = time.perf_counter()
        world = serial_world if case == "serial" else plain_world
        folder = held_out_folder(
            world, work / case / "media", split=split, captions=case == "plain-captioned"
        )
        index_dir = work / case / "index"
        index_folder(folder, index_dir, encoder=encoder, options=IndexOptions(progress=False))
        with open_index(index_dir, model=str(model), device=device) as idx:
            items = index_items(idx)
            q = serial_queries(items, world) if case == "serial" else _by_name(items, world, split)
            recall = compare_fusions(idx, q, ks=ks)
        results.append(
            FusionCase(case, len(items), len(q.captions), recall, time.perf_counter() - t0)
        )
    return results


def fusion_table(cases: Sequence[FusionCase]) -> str:
    """A Markdown table: one row per case and method, R@K columns."""
    ks = list(next(iter(cases[0].recall.values())))
    head = "| case | items | queries | method | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (4 + len(ks))]
    for c in cases:
        for m in METHODS:
            cells = " | ".join(f"{c.recall[m][k]:.3f}" for k in ks)
            lines.append(f"| {c.case} | {c.n_items} | {c.n_queries} | {m} | {cells} |")
    return "\n".join(lines)
