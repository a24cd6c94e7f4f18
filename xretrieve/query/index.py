"""Query: open an index with the model that built it, embed a query, search its shards.

idx = open_index("indexes/demo")
idx.search("a large red circle", k=10)                       # text -> image
idx.search(image="photo.jpg", k=10)                          # image -> image
idx.caption("photo.jpg", k=5)                                # image -> caption (text items)
idx.search(["a beach", Image.open(p)], weights=[1.0, 0.5],   # composed query
           negative=["people"])
idx.search("red circle", hybrid=True, where="width >= 32",  # hybrid, filtered, diversified
           rerank=True, mmr=0.7, dedup=0.98)

A search runs these stages, each timed in `hits.timings` (milliseconds):

    encode    embed the terms, compose them:  q = normalise(sum w_i p_i - sum v_j n_j)
    filter    DuckDB WHERE over each shard's metadata -> allowed row ids; shards ruled
              out by their partition statistics are skipped without reading them
    ann       per-shard FAISS search restricted to the allowed rows (an IDSelector, or
              exact search over the subset when it is small), merged with a heap
    lexical   BM25 over captions and path words (hybrid only)
    fusion    reciprocal rank fusion (default, k=60) or a convex combination of
              min-max-normalised dense and BM25 scores (fusion="convex", alpha)
    rerank    exact inner products with the stored vectors, then MMR and
              near-duplicate collapse when asked
    metadata  one vectorised take of the result rows per shard
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union, overload

import faiss
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from PIL import Image

from xretrieve import store
from xretrieve._types import MODALITIES, Ids, Modality, Vectors
from xretrieve.encoders import Encoder, load_encoder
from xretrieve.errors import (
    EmptyQueryError,
    InputError,
    ModelMismatchError,
    ModelUnavailableError,
)
from xretrieve.media.image import load_image, to_rgb
from xretrieve.query import scoring
from xretrieve.query.filters import Filter, Where, parse_where, shard_may_match
from xretrieve.query.lexical import LexicalIndex, open_lexical
from xretrieve.store import ann

__all__ = [
    "AudioTerm",
    "Hit",
    "Hits",
    "ImageQuery",
    "Index",
    "QueryTerm",
    "SearchOptions",
    "open_index",
]

#: What can stand for an image in a query: a path or an already opened PIL image.
ImageQuery = str | os.PathLike[str] | Image.Image
#: One term of a composed query: a str is text; a path object or PIL image is an image.
QueryTerm = Union[str, os.PathLike[str], Image.Image, "AudioTerm"]

Fusion = Literal["rrf", "convex"]
FUSIONS: tuple[Fusion, ...] = ("rrf", "convex")
#: A filtered shard whose allowed rows are at most this many is searched exactly over them:
#: gathering 2k rows costs less than a selector walk and never misses.
EXACT_SUBSET_MAX = 2048
# Rows scored per block in exact subset search: bounds the gathered (rows, d) temporary.
_EXACT_BLOCK = 32_768
_ROW_BITS = 40
# Parsed WHERE expressions and FAISS selectors kept per Index (oldest dropped first).
_CACHE_ENTRIES = 256


@dataclass(frozen=True)
class SearchOptions:
    """How to rank: filter, hybrid fusion, candidate pool, re-scoring and diversity."""

    k: int = 10
    modality: Modality = "image"
    where: str | None = None
    hybrid: bool = False
    fusion: Fusion = "rrf"
    rrf_k: int = scoring.DEFAULT_RRF_K
    alpha: float = 0.5
    rerank: bool = False
    oversample: int = 4
    mmr: float | None = None
    dedup: float | None = None

    def validate(self) -> SearchOptions:
        """Return self, or raise `InputError` naming the bad option."""
        _check_k(self.k)
        if self.modality not in MODALITIES:
            raise InputError(
                f"unknown modality {self.modality!r}: use one of {', '.join(MODALITIES)}"
            )
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}: use rrf or convex")
        if not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise InputError(f"rrf_k must be a whole number >= 0, got {self.rrf_k!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if not isinstance(self.oversample, int) or self.oversample < 1:
            raise InputError(f"oversample must be a whole number >= 1, got {self.oversample!r}")
        if self.mmr is not None and not 0.0 <= self.mmr <= 1.0:
            raise InputError(f"mmr (lambda) must be in [0, 1], got {self.mmr}")
        if self.dedup is not None and not -1.0 <= self.dedup <= 1.0:
            raise InputError(f"dedup is a cosine threshold in [-1, 1], got {self.dedup}")
        return self

    @property
    def pool(self) -> int:
        """Candidates gathered before the final cut: k, or k * oversample when re-ranking."""
        plain = not (self.hybrid or self.rerank or self.mmr is not None or self.dedup is not None)
        return self.k if plain else self.k * self.oversample


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
    #: Component scores when several are fused: {"dense": cosine, "lexical": BM25}.
    components: dict[str, float] = field(repr=False, default_factory=dict)

    @property
    def abs_path(self) -> Path:
        """The file on disk (the indexed folder joined with the stored relative path)."""
        return Path(self.root) / self.path


class Hits(Sequence[Hit]):
    """Search results, best first; convertible to a pyarrow Table or pandas DataFrame.

    `timings` holds the milliseconds spent per stage (encode, filter, ann, lexical, fusion,
    rerank, metadata, total); stages that did not run are absent.
    """

    def __init__(self, hits: list[Hit], timings: dict[str, float] | None = None) -> None:
        self._hits = hits
        self.timings: dict[str, float] = dict(timings or {})

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> Hits: ...
    def __getitem__(self, i: int | slice) -> Hit | Hits:
        return Hits(self._hits[i], self.timings) if isinstance(i, slice) else self._hits[i]

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
        """Plain dicts: rank, score, component scores (if fused), then every metadata column."""
        return [
            {
                "rank": h.rank,
                "score": h.score,
                **{f"{name}_score": v for name, v in h.components.items()},
                **h.metadata,
            }
            for h in self._hits
        ]

    def to_arrow(self) -> pa.Table:
        """The hits as a pyarrow Table (rank, score and the metadata columns)."""
        schema = pa.schema([("rank", pa.int32()), ("score", pa.float32()), *store.METADATA_SCHEMA])
        rows = [{"rank": h.rank, "score": h.score, **h.metadata} for h in self._hits]
        return pa.Table.from_pylist(rows, schema=schema)

    def to_pandas(self) -> Any:
        """The hits as a pandas DataFrame (needs pandas installed)."""
        return self.to_arrow().to_pandas()


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive whole number, got {k!r}")


def _selector_params(
    built: ann.BuiltIndex, sel: Any, p: ann.TunedParams, want: int, fraction: float
) -> Any:
    """FAISS search parameters restricted to the rows `sel` lets through.

    Only `fraction` of the rows can match, so the tuned nprobe / efSearch would reach about
    that fraction of the candidates they were tuned for: both are scaled up by 1 / fraction
    (capped), which keeps the expected number of matching candidates visited.
    """
    ivf = faiss.try_extract_index_ivf(built.index)
    boost = 1.0 / max(fraction, 1e-3)
    sp: Any
    if ivf is not None:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(min(ivf.nlist, max(1, math.ceil((p.nprobe or 1) * boost))))
    elif built.plan.hnsw_m:
        sp = getattr(faiss, "SearchParametersHNSW")()  # noqa: B009 - missing from faiss' stubs
        sp.efSearch = int(min(4096, max(want, math.ceil((p.ef_search or 16) * boost))))
    else:
        sp = faiss.SearchParameters()
    sp.sel = sel
    return sp


def _shard_key(s: store.LoadedShard) -> tuple[str, str]:
    """What identifies a shard's rows and deletions across generations: its file names."""
    return s.info.meta_file.name, s.info.deleted.name if s.info.deleted else ""


def _as_terms(x: QueryTerm | Sequence[QueryTerm] | None) -> list[QueryTerm]:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike, Image.Image, AudioTerm)):
        return [x]
    return list(x)


@dataclass(frozen=True)
class AudioTerm:
    """A sound as a query term: a file path, the file's bytes, or (samples, sample_rate)."""

    source: Any


def _as_audio_terms(x: Any) -> list[QueryTerm]:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike, bytes, tuple, AudioTerm)):
        x = [x]
    return [t if isinstance(t, AudioTerm) else AudioTerm(t) for t in x]


def _is_audio(term: QueryTerm) -> bool:
    """Audio terms: `AudioTerm`s, and path objects (not plain str) with an audio extension."""
    from xretrieve.media.audio import AUDIO_EXTS

    if isinstance(term, AudioTerm):
        return True
    return isinstance(term, os.PathLike) and Path(term).suffix.lower() in AUDIO_EXTS


@dataclass
class _Candidates:
    """Rows gathered so far: shard position, row, and their dense / lexical scores."""

    shard: Ids
    row: Ids
    dense: npt.NDArray[np.float32]
    lexical: npt.NDArray[np.float32] | None = None
    score: npt.NDArray[np.float32] | None = None
    vectors: Vectors | None = None

    def take(self, order: npt.NDArray[np.int64]) -> _Candidates:
        def sub(a: Any) -> Any:
            return None if a is None else a[order]

        return _Candidates(
            self.shard[order],
            self.row[order],
            self.dense[order],
            sub(self.lexical),
            sub(self.score),
            sub(self.vectors),
        )


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.start = self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000.0
        self._t = now


class Index:
    """An opened index: its manifest, the encoder that built it, and its shards (loaded lazily).

    Shards, their stored-vector views, filter results and the BM25 index are cached on the
    object, so repeated queries pay only for the query itself; `refresh()` picks up a newer
    generation written since the index was opened.
    """

    def __init__(self, path: Path, manifest: store.Manifest, encoder: Encoder) -> None:
        self.path = path
        self.encoder = encoder
        # The reader pins this generation's files: the view holds until `refresh()`.
        self._reader = store.Reader(path, manifest)
        self._filter = Filter()
        self._wheres: dict[str, Where] = {}
        self._lexical: dict[str, LexicalIndex] = {}
        self._selectors: dict[tuple[str, str, str], tuple[Any, np.ndarray]] = {}
        # Allowed rows per (WHERE, shard files): filter result less deleted rows.
        self._live: dict[tuple[str, str, str], Ids] = {}

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, rows={self.manifest.rows}, model={self.manifest.model['name']!r})"

    @property
    def root(self) -> str:
        """The media folder the index was built from."""
        return self.manifest.root

    @property
    def manifest(self) -> store.Manifest:
        """The manifest of the generation this index object serves."""
        return self._reader.manifest

    def refresh(self) -> bool:
        """Move to the newest generation, if one has landed since; True if it changed."""
        if not self._reader.refresh():
            return False
        self._filter = Filter()
        self._lexical.clear()
        self._selectors.clear()
        self._live.clear()
        return True

    def close(self) -> None:
        """Let writers remove this generation's files (also done when the object is freed)."""
        self._reader.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shards(self, modality: Modality | None = None) -> list[store.LoadedShard]:
        """The shards holding `modality` (all when None), read from disk on first use."""
        return self._reader.shards(modality)

    # -- query vectors ----------------------------------------------------------------------

    def embed_text(self, text: str) -> Vectors:
        """The unit vector of a text query, shape (1, d)."""
        return self._embed_texts([text])

    def _embed_texts(self, texts: Sequence[str]) -> Vectors:
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise EmptyQueryError(
                    "the query is empty: give some words, an --image, or both"
                    if len(texts) == 1
                    else f"query term {t!r} is empty: every text term needs some words"
                )
        return self.encoder.encode_texts([t.strip() for t in texts])

    def embed_image(self, image: ImageQuery) -> Vectors:
        """The unit vector of an image query (path or PIL image), shape (1, d)."""
        return self._embed_images([image])

    def _embed_images(self, images: Sequence[ImageQuery]) -> Vectors:
        pils = [
            to_rgb(im)
            if isinstance(im, Image.Image)
            else load_image(im, target_size=self.encoder.spec.image_size).image
            for im in images
        ]
        return self.encoder.encode_images(pils)

    def _embed_terms(self, terms: Sequence[QueryTerm]) -> Vectors:
        """Unit vectors of mixed terms, in order: one batch per modality (text, image, audio)."""
        out = np.empty((len(terms), self.manifest.dim), np.float32)
        texts = [i for i, t in enumerate(terms) if isinstance(t, str)]
        sounds = [i for i, t in enumerate(terms) if _is_audio(t)]
        images = [i for i, t in enumerate(terms) if i not in texts and i not in sounds]
        if texts:
            out[texts] = self._embed_texts([str(terms[i]) for i in texts])
        if images:
            out[images] = self._embed_images([terms[i] for i in images])  # type: ignore[misc]
        if sounds:
            out[sounds] = self.embed_audio([terms[i] for i in sounds])
        return out

    def embed_audio(self, sounds: Sequence[Any]) -> Vectors:
        """Unit vectors of sounds (paths, file bytes, (samples, rate) or `AudioTerm`s)."""
        items = [t.source if isinstance(t, AudioTerm) else t for t in sounds]
        return self.encoder.encode_audio(items)

    def query_vector(
        self,
        query: QueryTerm | Sequence[QueryTerm] | None = None,
        *,
        image: ImageQuery | Sequence[ImageQuery] | None = None,
        audio: Any = None,
        weights: Sequence[float] | None = None,
        negative: QueryTerm | Sequence[QueryTerm] | None = None,
        negative_weights: Sequence[float] | None = None,
    ) -> Vectors:
        """The composed unit query vector (1, d).

        q = normalise(sum_i w_i * p_i - sum_j v_j * n_j): p_i are the unit embeddings of the
        positive terms (`query` terms, then `image` terms, then `audio` terms), n_j those
        of the `negative` terms; w_i default to 1.0 and v_j to 0.5 (`scoring.DEFAULT_NEGATIVE_WEIGHT`).
        """
        positive = _as_terms(query) + _as_terms(image) + _as_audio_terms(audio)
        negatives = _as_terms(negative)
        if not positive:
            raise EmptyQueryError(
                "only negative terms: give something to search for as well as what to avoid"
                if negatives
                else "the query is empty: give some words, an --image, or both"
            )
        if len(positive) == 1 and not negatives and weights is None:
            return self._embed_terms(positive)
        vecs = self._embed_terms(positive + negatives)
        return scoring.compose(
            vecs[: len(positive)],
            vecs[len(positive) :],
            weights=weights,
            negative_weights=negative_weights,
        )

    # -- search -----------------------------------------------------------------------------

    def search(
        self,
        query: QueryTerm | Sequence[QueryTerm] | None = None,
        *,
        image: ImageQuery | Sequence[ImageQuery] | None = None,
        audio: Any = None,
        weights: Sequence[float] | None = None,
        negative: QueryTerm | Sequence[QueryTerm] | None = None,
        negative_weights: Sequence[float] | None = None,
        k: int = 10,
        modality: Modality = "image",
        where: str | None = None,
        hybrid: bool = False,
        fusion: Fusion = "rrf",
        rrf_k: int = scoring.DEFAULT_RRF_K,
        alpha: float = 0.5,
        rerank: bool = False,
        oversample: int = 4,
        mmr: float | None = None,
        dedup: float | None = None,
    ) -> Hits:
        """Search items of `modality` with text, images or a weighted mix of both.

        `query` is a str (text), a path object or PIL image (image), or a list of such terms;
        `image=` adds image terms and `audio=` sound terms (paths, file bytes or
        (samples, sample_rate); a path object with an audio extension in `query` is a sound
        too). `weights` (one per positive term) and `negative` terms
        compose the query vector (see `query_vector`). Options:

        - `where`: SQL boolean expression over the metadata columns (DuckDB), applied before
          ranking; at least k results come back when k items match.
        - `hybrid`: fuse dense results with BM25 over captions and path words (uses the
          text terms; an image-only query stays dense). `fusion="rrf"` (score
          sum 1/(rrf_k + rank)) or `"convex"` (alpha * dense + (1 - alpha) * BM25, both
          min-max normalised over the candidates).
        - `rerank`: re-score k * `oversample` ANN candidates exactly with the stored vectors.
        - `mmr`: lambda in [0, 1] of maximal marginal relevance over the candidate pool.
        - `dedup`: drop results whose cosine to a better one is >= this threshold.
        """
        opts = SearchOptions(
            k=k,
            modality=modality,
            where=where,
            hybrid=hybrid,
            fusion=fusion,
            rrf_k=rrf_k,
            alpha=alpha,
            rerank=rerank,
            oversample=oversample,
            mmr=mmr,
            dedup=dedup,
        ).validate()
        timer = _Timer()
        q = self.query_vector(
            query,
            image=image,
            audio=audio,
            weights=weights,
            negative=negative,
            negative_weights=negative_weights,
        )
        timer.lap("encode")
        texts = [t for t in _as_terms(query) if isinstance(t, str)]
        return self._search(q, " ".join(texts) if texts else None, opts, timer)

    def search_vector(
        self,
        vector: Vectors,
        *,
        k: int = 10,
        modality: Modality = "image",
        text: str | None = None,
        options: SearchOptions | None = None,
    ) -> Hits:
        """Nearest items of `modality` to a query vector, best first, across all its shards.

        `options` carries filter / hybrid / rerank settings (its k and modality are
        replaced by these arguments); `text` is what BM25 reads when `options.hybrid`.
        """
        opts = replace(options or SearchOptions(), k=k, modality=modality).validate()
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest.dim:
            raise InputError(
                f"query vector has {q.shape[1]} dims, the index has {self.manifest.dim}"
            )
        return self._search(q, text, opts, _Timer())

    def caption(
        self,
        image: ImageQuery,
        *,
        k: int = 5,
        where: str | None = None,
        dedup: float | None = None,
    ) -> Hits:
        """The indexed captions nearest to an image (image -> text)."""
        return self.search(image=image, k=k, modality="text", where=where, dedup=dedup)

    def _search(self, q: Vectors, text: str | None, opts: SearchOptions, timer: _Timer) -> Hits:
        shards = self.shards(opts.modality)
        timer.lap("load")  # reading shards from disk: only the first query pays
        restricted = opts.where or any(sh.info.deleted_rows for sh in shards)
        allowed = self._allowed(shards, opts.where, timer) if restricted else None
        if not shards:
            return Hits([], timer.ms)
        cand = self._dense(shards, q, opts, allowed)
        timer.lap("ann")
        lexical = (
            self._lexical_list(shards, text, opts, allowed, timer) if opts.hybrid and text else None
        )
        if lexical is not None or opts.rerank:
            cand = self._exact(shards, q, cand, lexical)
            timer.lap("rerank")
        if lexical is not None:
            cand = self._fuse(cand, lexical, opts)
            timer.lap("fusion")
        else:
            cand.score = cand.dense
        cand = self._finish(shards, cand, opts)
        timer.lap("rerank")
        hits = self._hits(shards, cand, with_components=lexical is not None)
        timer.lap("metadata")
        timer.ms["total"] = (time.perf_counter() - timer.start) * 1000.0
        return Hits(hits, timer.ms)

    # -- stages -----------------------------------------------------------------------------

    def _where(self, sql: str) -> Where:
        w = self._wheres.get(sql)
        if w is None:
            w = parse_where(sql, columns=store.METADATA_SCHEMA.names)
            self._filter.check_type(w, store.METADATA_SCHEMA)
            if len(self._wheres) >= _CACHE_ENTRIES:
                self._wheres.pop(next(iter(self._wheres)))
            self._wheres[sql] = w
        return w

    def _allowed(
        self, shards: list[store.LoadedShard], sql: str | None, timer: _Timer
    ) -> list[Ids | None]:
        """Allowed rows per shard: those the WHERE expression keeps, less deleted rows.

        None means the whole shard is skipped (ruled out by its partition statistics).
        """
        w = self._where(sql) if sql else None
        out: list[Ids | None] = []
        for s in shards:
            if w is not None and not shard_may_match(w, s.info.partition):
                out.append(None)
                continue
            key = (sql or "", *_shard_key(s))
            rows = self._live.get(key)
            if rows is None:
                if w is not None:
                    rows = self._filter.allowed_rows(w, s.info.meta_file.name, s.metadata)
                else:
                    rows = np.arange(s.info.rows, dtype=np.int64)
                if len(s.deleted):
                    rows = np.setdiff1d(rows, s.deleted, assume_unique=True)
                if len(self._live) >= _CACHE_ENTRIES:
                    self._live.pop(next(iter(self._live)))  # the oldest
                self._live[key] = rows
            out.append(rows)
        timer.lap("filter")
        return out

    def _selector(self, shard: store.LoadedShard, sql: str, rows: Ids) -> Any:
        key = (sql, *_shard_key(shard))
        got = self._selectors.get(key)
        if got is None:
            mask = np.zeros(shard.info.rows, bool)
            mask[rows] = True
            bits = np.packbits(mask, bitorder="little")
            # The selector points into `bits`: both are cached together to keep it alive.
            got = (faiss.IDSelectorBitmap(shard.info.rows, faiss.swig_ptr(bits)), bits)
            if len(self._selectors) >= _CACHE_ENTRIES:
                self._selectors.pop(next(iter(self._selectors)))  # the oldest
            self._selectors[key] = got
        return got[0]

    def _dense(
        self,
        shards: list[store.LoadedShard],
        q: Vectors,
        opts: SearchOptions,
        allowed: list[Ids | None] | None,
    ) -> _Candidates:
        """Top `pool` rows by ANN score over the shards (allowed rows only), merged by a heap."""
        pool = opts.pool
        searched, scores, ids = [], [], []
        for i, s in enumerate(shards):
            rows = None if allowed is None else allowed[i]
            if allowed is not None and (rows is None or len(rows) == 0):
                continue  # ruled out by partition statistics, or nothing matches
            if rows is None or len(rows) == s.info.rows:
                d, r = ann.search(s.index, q, min(pool, max(1, s.info.rows)))
            else:
                d, r = self._search_subset(s, q, pool, rows, opts.where or "")
            searched.append(i)
            scores.append(d)
            ids.append(r)
        if not searched:
            empty = np.empty(0, np.int64)
            return _Candidates(empty, empty, np.empty(0, np.float32))
        top, refs = ann.merge_topk(scores, ids, pool)
        keep = refs[0, :, 0] >= 0
        return _Candidates(
            np.asarray(searched, np.int64)[refs[0, keep, 0]],
            refs[0, keep, 1].astype(np.int64),
            top[0, keep].astype(np.float32),
        )

    def _search_subset(
        self, s: store.LoadedShard, q: Vectors, pool: int, rows: Ids, sql: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top `pool` of one shard among `rows` only; never fewer than min(pool, len(rows))."""
        want = min(pool, len(rows))
        built = s.index
        if len(rows) > EXACT_SUBSET_MAX and not built.on_gpu:
            p = built.params or ann.default_params(built.plan)
            sel = self._selector(s, sql, rows)
            sp = _selector_params(built, sel, p, want, len(rows) / max(1, s.info.rows))
            fetch = want * max(1, built.plan.oversample)
            d, r = built.index.search(q, fetch, params=sp)
            if built.plan.needs_rescore:
                ok = r[0] >= 0
                vec = ann.reconstruct_vectors(built, r[0][ok])
                d = np.full_like(d, -np.inf)
                d[0, ok] = vec @ q[0]
                order = np.argsort(-d[0], kind="stable")[:want]
                d, r = d[:, order], r[:, order]
            if int((r >= 0).sum()) >= want:
                return d, r
            # A selective filter over IVF lists can leave probed lists empty: go exact.
        best_d = np.full((1, 0), -np.inf, np.float32)
        best_r = np.full((1, 0), -1, np.int64)
        for start in range(0, len(rows), _EXACT_BLOCK):
            block = rows[start : start + _EXACT_BLOCK]
            d = (ann.reconstruct_vectors(built, block) @ q[0])[None, :]
            best_d = np.concatenate([best_d, d.astype(np.float32)], axis=1)
            best_r = np.concatenate([best_r, block[None, :]], axis=1)
            order = scoring.top_k(best_d[0], want)
            best_d, best_r = best_d[:, order], best_r[:, order]
        return best_d, best_r

    def _gather(self, shards: list[store.LoadedShard], cand: _Candidates) -> Vectors:
        """Stored vectors of the candidates, one batched reconstruct per shard."""
        out = np.empty((len(cand.row), self.manifest.dim), np.float32)
        for s in np.unique(cand.shard):
            at = np.flatnonzero(cand.shard == s)
            out[at] = ann.reconstruct_vectors(shards[int(s)].index, cand.row[at])
        return out

    def _lexical_index(self, shards: list[store.LoadedShard], modality: str) -> LexicalIndex:
        lex = self._lexical.get(modality)
        files = tuple(s.info.meta_file.sha256 for s in shards)
        if lex is None or lex.shard_files != files:
            lex = open_lexical(
                self.path, modality, [(s.info.meta_file.sha256, s.metadata) for s in shards]
            )
            self._lexical[modality] = lex
        return lex

    def _lexical_list(
        self,
        shards: list[store.LoadedShard],
        text: str,
        opts: SearchOptions,
        allowed: list[Ids | None] | None,
        timer: _Timer,
    ) -> tuple[LexicalIndex, np.ndarray, _Candidates]:
        """BM25 scores of every document and the top `pool` documents with a score > 0."""
        lex = self._lexical_index(shards, opts.modality)
        mask = None
        if allowed is not None:
            mask = np.zeros(lex.n_docs, bool)
            for i, rows in enumerate(allowed):
                if rows is not None:
                    mask[lex.offsets[i] + rows] = True
        all_scores = lex.scores(text, mask=mask)
        top = scoring.top_k(all_scores, opts.pool)
        top = top[all_scores[top] > 0]
        shard, row = lex.split(top)
        timer.lap("lexical")
        return (
            lex,
            all_scores,
            _Candidates(
                shard.astype(np.int64),
                row.astype(np.int64),
                np.zeros(len(top), np.float32),
                lexical=all_scores[top],
            ),
        )

    def _exact(
        self,
        shards: list[store.LoadedShard],
        q: Vectors,
        cand: _Candidates,
        lexical: tuple[LexicalIndex, np.ndarray, _Candidates] | None,
    ) -> _Candidates:
        """Union with the lexical candidates, then exact dense scores from stored vectors."""
        if lexical is not None:
            lex_c = lexical[2]
            keys = np.concatenate(
                [(cand.shard << _ROW_BITS) | cand.row, (lex_c.shard << _ROW_BITS) | lex_c.row]
            )
            _, first = np.unique(keys, return_index=True)
            first.sort()  # dense candidates first, in their order, then lexical-only ones
            keys = keys[first]
            cand = _Candidates(
                keys >> _ROW_BITS, keys & ((1 << _ROW_BITS) - 1), np.zeros(len(keys), np.float32)
            )
        cand.vectors = self._gather(shards, cand)
        cand.dense = (cand.vectors @ q[0]).astype(np.float32)
        order = np.argsort(-cand.dense, kind="stable")
        return cand.take(order)

    def _fuse(
        self,
        cand: _Candidates,
        lexical: tuple[LexicalIndex, np.ndarray, _Candidates],
        opts: SearchOptions,
    ) -> _Candidates:
        lex, all_scores, lex_c = lexical
        cand.lexical = all_scores[lex.offsets[cand.shard] + cand.row]
        if opts.fusion == "convex":
            cand.score = scoring.convex_fusion(cand.dense, cand.lexical, alpha=opts.alpha)
        else:
            # Each list ranks its own top `pool`; a candidate outside a list gets nothing from it.
            dense_rank = scoring.top_k(cand.dense, opts.pool)
            key = (cand.shard << _ROW_BITS) | cand.row
            lex_keys = (lex_c.shard << _ROW_BITS) | lex_c.row
            pos = {int(x): i for i, x in enumerate(key.tolist())}
            lex_rank = np.asarray([pos[int(x)] for x in lex_keys.tolist()], np.int64)
            cand.score = scoring.rrf([dense_rank, lex_rank], len(key), k=opts.rrf_k)
        order = scoring.top_k(cand.score, len(cand.score))
        return cand.take(order)

    def _finish(
        self, shards: list[store.LoadedShard], cand: _Candidates, opts: SearchOptions
    ) -> _Candidates:
        """Cut to k: duplicate collapse, then MMR, then the first k by score."""
        if opts.dedup is not None or opts.mmr is not None:
            vectors = cand.vectors if cand.vectors is not None else self._gather(shards, cand)
            cand.vectors = vectors
            if opts.dedup is not None:
                cand = cand.take(scoring.collapse_duplicates(vectors, threshold=opts.dedup))
            if opts.mmr is not None and cand.vectors is not None:
                relevance = cand.score if cand.score is not None else cand.dense
                cand = cand.take(scoring.mmr(relevance, cand.vectors, opts.k, lam=opts.mmr))
        return cand.take(np.arange(min(opts.k, len(cand.row))))

    def _hits(
        self, shards: list[store.LoadedShard], cand: _Candidates, *, with_components: bool
    ) -> list[Hit]:
        if len(cand.row) == 0:
            return []
        parts, where = [], np.empty(len(cand.row), np.int64)
        offset = 0
        for s in np.unique(cand.shard):
            at = np.flatnonzero(cand.shard == s)
            parts.append(shards[int(s)].metadata.take(pa.array(cand.row[at])))
            where[at] = np.arange(offset, offset + len(at))
            offset += len(at)
        rows = pa.concat_tables(parts).take(pa.array(where)).to_pylist()
        scores = (cand.score if cand.score is not None else cand.dense).tolist()
        dense = cand.dense.tolist()
        lexical = cand.lexical.tolist() if cand.lexical is not None else None
        return [
            Hit(
                rank=i + 1,
                score=float(scores[i]),
                path=meta["path"],
                modality=meta["modality"],
                caption=meta["caption"],
                metadata=meta,
                root=self.root,
                components=(
                    {"dense": float(dense[i]), "lexical": float(lexical[i])}
                    if with_components and lexical is not None
                    else {}
                ),
            )
            for i, meta in enumerate(rows)
        ]

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
                    "rows": s.live_rows,
                    "deleted_rows": s.deleted_rows,
                    "index_type": s.index_type,
                    **({"ann": s.ann} if s.ann else {}),
                    "bytes": sum(f.bytes for f in s.files()),
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
    has_audio = any(s.modality == "audio" for s in manifest.shards)
    if has_audio and encoder.spec.audio_fingerprint != built_with.get("audio_fingerprint"):
        raise ModelMismatchError(
            f"{p} holds audio embedded by another audio tower "
            f"({built_with.get('audio_fingerprint')}) than {encoder.spec.name}'s "
            f"({encoder.spec.audio_fingerprint}): search with the model that built the index"
        )
    return Index(p, manifest, encoder)
