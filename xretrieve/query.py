"""Query: open an index with the model that built it, embed a query, search its shards.

idx = open_index("indexes/demo")
idx.search("a large red circle", k=10)       # text -> image
idx.search(image="photo.jpg", k=10)          # image -> image
idx.caption("photo.jpg", k=5)                # image -> caption (text items)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
from PIL import Image

from xretrieve import ann, store
from xretrieve.encoders import Encoder, load_encoder
from xretrieve.errors import (
    EmptyQueryError,
    InputError,
    ModelMismatchError,
    ModelUnavailableError,
)
from xretrieve.media import load_image, to_rgb
from xretrieve.types import MODALITIES, Modality, Vectors

__all__ = ["Hit", "Hits", "ImageQuery", "Index", "open_index"]

#: What can stand for an image in a query: a path or an already opened PIL image.
ImageQuery = str | os.PathLike[str] | Image.Image


@dataclass(frozen=True)
class Hit:
    """One search result: where it is, how close it is, and its metadata row."""

    rank: int
    score: float
    path: str
    modality: str
    caption: str | None
    metadata: dict[str, Any] = field(repr=False)
    root: str = field(repr=False, default="")

    @property
    def abs_path(self) -> Path:
        """The file on disk (the indexed folder joined with the stored relative path)."""
        return Path(self.root) / self.path


class Hits(Sequence[Hit]):
    """Search results, best first; convertible to a pyarrow Table or pandas DataFrame."""

    def __init__(self, hits: list[Hit]) -> None:
        self._hits = hits

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> Hits: ...
    def __getitem__(self, i: int | slice) -> Hit | Hits:
        return Hits(self._hits[i]) if isinstance(i, slice) else self._hits[i]

    def __len__(self) -> int:
        return len(self._hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._hits)

    def __repr__(self) -> str:
        return f"Hits({self._hits!r})"

    @property
    def paths(self) -> list[str]:
        return [h.path for h in self._hits]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Plain dicts: rank, score, then every metadata column."""
        return [{"rank": h.rank, "score": h.score, **h.metadata} for h in self._hits]

    def to_arrow(self) -> pa.Table:
        """The hits as a pyarrow Table (rank, score and the metadata columns)."""
        schema = pa.schema([("rank", pa.int32()), ("score", pa.float32()), *store.METADATA_SCHEMA])
        return pa.Table.from_pylist(self.to_dicts(), schema=schema)

    def to_pandas(self) -> Any:
        """The hits as a pandas DataFrame (needs pandas installed)."""
        return self.to_arrow().to_pandas()


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive whole number, got {k!r}")


class Index:
    """An opened index: its manifest, the encoder that built it, and its shards (loaded lazily)."""

    def __init__(self, path: Path, manifest: store.Manifest, encoder: Encoder) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self._shards: dict[str, store.LoadedShard] = {}

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, rows={self.manifest.rows}, model={self.manifest.model['name']!r})"

    @property
    def root(self) -> str:
        """The media folder the index was built from."""
        return self.manifest.root

    def shards(self, modality: Modality | None = None) -> list[store.LoadedShard]:
        """The shards holding `modality` (all when None), read from disk on first use."""
        out = []
        for info in self.manifest.shards:
            if modality is None or info.modality == modality:
                if info.name not in self._shards:
                    self._shards[info.name] = store.load_shard(self.path, info)
                out.append(self._shards[info.name])
        return out

    def embed_text(self, text: str) -> Vectors:
        """The unit vector of a text query, shape (1, d)."""
        if not isinstance(text, str) or not text.strip():
            raise EmptyQueryError("the query is empty: give some words, an --image, or both")
        return self.encoder.encode_texts([text.strip()])

    def embed_image(self, image: ImageQuery) -> Vectors:
        """The unit vector of an image query (path or PIL image), shape (1, d)."""
        if isinstance(image, Image.Image):
            pil = to_rgb(image)
        else:
            pil = load_image(image, target_size=self.encoder.spec.image_size).image
        return self.encoder.encode_images([pil])

    def search_vector(self, vector: Vectors, *, k: int = 10, modality: Modality = "image") -> Hits:
        """Nearest items of `modality` to a query vector, best first, across all its shards."""
        _check_k(k)
        if modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest.dim:
            raise InputError(
                f"query vector has {q.shape[1]} dims, the index has {self.manifest.dim}"
            )
        shards = self.shards(modality)
        if not shards:
            return Hits([])
        per_shard = [ann.search(s.index, q, k) for s in shards]
        scores, refs = ann.merge_topk([d for d, _ in per_shard], [i for _, i in per_shard], k)
        keep = refs[0, :, 0] >= 0  # fewer than k items in the whole index
        return self._hits(shards, scores[0][keep], refs[0][keep])

    def _hits(self, shards: list[store.LoadedShard], scores: np.ndarray, where: np.ndarray) -> Hits:
        hits: list[Hit] = []
        for rank, (score, (s, row)) in enumerate(
            zip(scores.tolist(), where.tolist(), strict=True), 1
        ):
            meta = shards[s].metadata.slice(row, 1).to_pylist()[0]
            hits.append(
                Hit(
                    rank=rank,
                    score=float(score),
                    path=meta["path"],
                    modality=meta["modality"],
                    caption=meta["caption"],
                    metadata=meta,
                    root=self.root,
                )
            )
        return Hits(hits)

    def search(
        self,
        query: str | ImageQuery | None = None,
        *,
        image: ImageQuery | None = None,
        k: int = 10,
        modality: Modality = "image",
    ) -> Hits:
        """Search items of `modality` with a text (str) or an image (path object / PIL / `image=`)."""
        _check_k(k)
        if query is not None and image is not None:
            raise InputError("give either a query or image=, not both")
        if image is None and query is not None and not isinstance(query, str):
            image, query = query, None
        if image is not None:
            return self.search_vector(self.embed_image(image), k=k, modality=modality)
        if not isinstance(query, str):
            raise EmptyQueryError("the query is empty: give some words or an image")
        return self.search_vector(self.embed_text(query), k=k, modality=modality)

    def caption(self, image: ImageQuery, *, k: int = 5) -> Hits:
        """The indexed captions nearest to an image (image -> text)."""
        return self.search(image=image, k=k, modality="text")

    def info(self) -> dict[str, Any]:
        """What the index holds: model, generation, rows per modality, shards."""
        m = self.manifest
        return {
            "path": str(self.path),
            "root": m.root,
            "format_version": m.format_version,
            "generation": m.generation,
            "model": m.model,
            "dim": m.dim,
            "metric": m.metric,
            "rows": m.rows_by_modality(),
            "shards": [
                {
                    "name": s.name,
                    "modality": s.modality,
                    "rows": s.rows,
                    "index_type": s.index_type,
                    **({"ann": s.ann} if s.ann else {}),
                    "bytes": s.index_file.bytes + s.meta_file.bytes,
                }
                for s in m.shards
            ],
        }


def open_index(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
) -> Index:
    """Open an index for search, with the model recorded in it unless `model` is given.

    A `model` whose weights differ from those that built the index is refused with
    `ModelMismatchError`: its vectors would not be comparable.
    """
    p = Path(path).expanduser()
    manifest = store.read_manifest(p)
    built_with = manifest.model
    if model is None:
        try:
            encoder = load_encoder(
                built_with["name"], pretrained=built_with.get("pretrained"), device=device
            )
        except ModelUnavailableError as e:
            raise ModelUnavailableError(
                f"{p} was built with model {built_with['name']}, which cannot be loaded here ({e}); "
                "pass --model with a copy of that model"
            ) from e
    else:
        encoder = load_encoder(model, pretrained=pretrained, device=device)
    if encoder.spec.fingerprint != built_with.get("fingerprint"):
        raise ModelMismatchError(
            f"{p} was built with model {built_with.get('name')} (fingerprint "
            f"{built_with.get('fingerprint')}), but {encoder.spec.name} has fingerprint "
            f"{encoder.spec.fingerprint}: vectors from different models are not comparable. "
            "Search with the model that built the index, or re-index with --full."
        )
    return Index(p, manifest, encoder)
