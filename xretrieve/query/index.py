"""Query: open an index with the model that built it, embed a query, search its shards.

idx = open_index("indexes/demo")
idx.search("a large red circle", k=10)                       # text -> image
idx.search(image="photo.jpg", k=10)                          # image -> image
idx.caption("photo.jpg", k=5)                                # image -> caption (text items)
idx.search(["a beach", Image.open(p)], weights=[1.0, 0.5],   # composed query
           negative=["people"])
idx.search("red circle", hybrid=True, where="width >= 32",  # hybrid, filtered, diversified
           rerank=True, mmr=0.7, dedup=0.98)

Every search entry point takes the `SearchOptions` fields as keywords (or an `options=`
object they override); a term's kind follows its keyword (query/terms.py). A search runs
these stages (query/stages.py), each timed in `hits.timings` (milliseconds):

    encode    embed the terms, compose them:  q = normalise(sum w_i p_i - sum v_j n_j)
    filter    DuckDB WHERE over each shard's metadata -> allowed row ids; shards ruled
              out by their partition statistics are skipped without reading them
    ann       per-shard FAISS search restricted to the allowed rows (a row selector, or
              exact search over the subset when it is small), merged with a heap
    lexical   BM25 over captions and path words (hybrid only)
    fusion    a convex combination of min-max-normalised dense and BM25 scores (default,
              alpha=0.5) or reciprocal rank fusion (fusion="rrf", k=60)
    rerank    exact inner products with the stored vectors, then MMR and
              near-duplicate collapse when asked
    metadata  one vectorised take of the result rows per shard

The object caches what repeated queries share (parsed WHERE expressions, allowed rows,
row selectors, the BM25 index), each bounded, all dropped by `refresh()`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from xretrieve import store
from xretrieve._types import Ids, Modality, Vectors
from xretrieve.encoders import EncoderLike
from xretrieve.errors import InputError, ModelUnavailableError
from xretrieve.query import stages
from xretrieve.query.filters import Filter, Where, parse_where, shard_may_match
from xretrieve.query.hits import Hit, Hits
from xretrieve.query.lexical import LexicalIndex, open_lexical
from xretrieve.query.options import SearchOptions, SearchOverrides, resolve_options
from xretrieve.query.terms import (
    AudioTerm,
    ImageQuery,
    ImageTerm,
    QueryTerm,
    compose_query,
    embed_images,
    embed_sounds,
    embed_texts,
    lexical_text,
    terms_of,
)
from xretrieve.store import selectors

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "EXACT_SUBSET_MAX",
    "AudioTerm",
    "Hit",
    "Hits",
    "ImageQuery",
    "ImageTerm",
    "Index",
    "QueryTerm",
    "SearchOptions",
    "open_index",
]

#: The default `Index.exact_subset_max`: a filtered shard whose allowed rows are at most this
#: many is searched exactly over them (gathering 2k rows costs less than a selector walk and
#: never misses).
EXACT_SUBSET_MAX = 2048
# Parsed WHERE expressions, allowed rows and row selectors kept per Index (oldest dropped first).
_CACHE_ENTRIES = 256
#: `caption` searches text items, 5 of them unless told otherwise.
CAPTION_DEFAULTS = SearchOptions(k=5, modality="text")

_K = TypeVar("_K")
_V = TypeVar("_V")


#: One lock for every cache's evictions: an `Index` is shared by a server's worker threads,
#: and two threads evicting at once would iterate a dict that the other one changes.
_CACHE_LOCK = threading.Lock()


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Store `value` under `key`, dropping the oldest entry when the cache is full."""
    with _CACHE_LOCK:
        while len(cache) >= _CACHE_ENTRIES:
            cache.pop(next(iter(cache)), None)
        cache[key] = value
    return value


def _shard_key(s: store.LoadedShard) -> tuple[str, str]:
    """What identifies a shard's rows and deletions across generations: its file names."""
    return s.info.meta_file.name, s.info.deleted.name if s.info.deleted else ""


class Index:
    """An opened index: its manifest, the encoder that built it, and its shards (loaded lazily).

    Shards, their stored-vector views, filter results and the BM25 index are cached on the
    object, so repeated queries pay only for the query itself; `refresh()` picks up a newer
    generation written since the index was opened.
    """

    def __init__(
        self,
        path: Path,
        manifest: store.Manifest,
        encoder: EncoderLike,
        *,
        exact_subset_max: int = EXACT_SUBSET_MAX,
    ) -> None:
        self.path = path
        self.encoder = encoder
        #: A filtered shard with at most this many allowed rows is searched exactly over them;
        #: above it, the ANN index walks with a row selector. Read at each search.
        self.exact_subset_max = exact_subset_max
        # The reader pins this generation's files: the view holds until `refresh()`.
        self._reader = store.Reader(path, manifest)
        self._filter = Filter()
        self._wheres: dict[str, Where] = {}
        self._lexical: dict[str, LexicalIndex] = {}
        self._selectors: dict[tuple[str, str, str], selectors.RowSelector] = {}
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
        return embed_texts(self.encoder, [text])

    def embed_image(self, image: ImageQuery) -> Vectors:
        """The unit vector of an image query (path or PIL image), shape (1, d)."""
        return embed_images(self.encoder, [image])

    def embed_audio(self, sounds: Sequence[Any]) -> Vectors:
        """Unit vectors of sounds (paths, file bytes, (samples, rate) or `AudioTerm`s)."""
        return embed_sounds(self.encoder, sounds)

    def query_vector(
        self,
        query: QueryTerm | Sequence[QueryTerm] | None = None,
        *,
        image: ImageQuery | ImageTerm | Sequence[ImageQuery | ImageTerm] | None = None,
        audio: Any = None,
        weights: Sequence[float] | None = None,
        negative: QueryTerm | Sequence[QueryTerm] | None = None,
        negative_weights: Sequence[float] | None = None,
    ) -> Vectors:
        """The composed unit query vector (1, d).

        q = normalise(sum_i w_i * p_i - sum_j v_j * n_j): p_i are the unit embeddings of the
        positive terms (`query` terms, then `image` terms, then `audio` terms), n_j those
        of the `negative` terms; w_i default to 1.0 and v_j to 0.5 (`scoring.DEFAULT_NEGATIVE_WEIGHT`).
        A term's kind follows its keyword: every `image=` term is an image (a str is its
        path), every `audio=` term a sound; in `query` and `negative` a str is text.
        """
        positive = terms_of(query, "text") + terms_of(image, "image") + terms_of(audio, "audio")
        return compose_query(
            self.encoder,
            positive,
            terms_of(negative, "text"),
            weights=weights,
            negative_weights=negative_weights,
        )

    # -- search -----------------------------------------------------------------------------

    def search(
        self,
        query: QueryTerm | Sequence[QueryTerm] | None = None,
        *,
        image: ImageQuery | ImageTerm | Sequence[ImageQuery | ImageTerm] | None = None,
        audio: Any = None,
        weights: Sequence[float] | None = None,
        negative: QueryTerm | Sequence[QueryTerm] | None = None,
        negative_weights: Sequence[float] | None = None,
        options: SearchOptions | None = None,
        **overrides: Unpack[SearchOverrides],
    ) -> Hits:
        """Search items of `modality` with text, images, sounds or a weighted mix of them.

        `query` is a str (text), a path object or PIL image (image; a path with an audio
        extension is a sound), or a list of such terms; `image=` adds image terms (str paths
        too) and `audio=` sound terms (paths, file bytes or (samples, sample_rate)).
        `weights` (one per positive term) and `negative` terms compose the query vector
        (see `query_vector`). The `SearchOptions` fields come as keywords (`k=5`,
        `hybrid=True`, ...) or as `options=`, which the keywords override:

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
        opts = resolve_options(options, overrides)
        timer = stages.Timer()
        q = self.query_vector(
            query,
            image=image,
            audio=audio,
            weights=weights,
            negative=negative,
            negative_weights=negative_weights,
        )
        timer.lap("encode")
        return self._search(q, lexical_text(terms_of(query, "text")), opts, timer)

    def search_vector(
        self,
        vector: Vectors,
        *,
        text: str | None = None,
        options: SearchOptions | None = None,
        **overrides: Unpack[SearchOverrides],
    ) -> Hits:
        """Nearest items of `modality` to a query vector, best first, across all its shards.

        Options as in `search`; `text` is what BM25 reads when `hybrid` is on.
        """
        opts = resolve_options(options, overrides)
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.manifest.dim:
            raise InputError(
                f"query vector has {q.shape[1]} dims, the index has {self.manifest.dim}"
            )
        return self._search(q, text, opts, stages.Timer())

    def caption(
        self,
        image: ImageQuery | ImageTerm,
        *,
        options: SearchOptions | None = None,
        **overrides: Unpack[SearchOverrides],
    ) -> Hits:
        """The indexed captions nearest to an image (image -> text), 5 unless `k` says otherwise.

        `image` is a path (str or path object) or a PIL image; options as in `search`, but
        the items searched are always text (an `options` object's modality is replaced).
        """
        if overrides.get("modality", "text") != "text":
            raise InputError("caption() searches text items: use search() for another modality")
        base = CAPTION_DEFAULTS if options is None else replace(options, modality="text")
        return self.search(image=image, options=resolve_options(base, overrides))

    def _search(
        self, q: Vectors, text: str | None, opts: SearchOptions, timer: stages.Timer
    ) -> Hits:
        """The stages after the query vector, in order: filter, ANN, lexical, exact, fuse, cut."""
        shards = self.shards(opts.modality)
        timer.lap("load")  # reading shards from disk: only the first query pays
        restricted = opts.where or any(sh.info.deleted_rows for sh in shards)
        allowed = self._allowed(shards, opts.where) if restricted else None
        if restricted:
            timer.lap("filter")
        if not shards:
            return Hits([], timer.total())
        cand = stages.dense(shards, q, opts.pool, allowed, self._subset_search(shards, q, opts))
        timer.lap("ann")
        lexical = None
        if opts.hybrid and text:
            lex = self._lexical_index(shards, opts.modality)
            lexical = stages.lexical(lex, text, opts.pool, allowed)
            timer.lap("lexical")
        if lexical is not None or opts.rerank:
            cand = stages.exact(shards, q, cand, lexical)
            timer.lap("rerank")
        if lexical is not None:
            cand = stages.fuse(cand, lexical, opts)
            timer.lap("fusion")
        cand = stages.finish(shards, cand, opts)
        timer.lap("rerank")
        hits = stages.to_hits(shards, cand, root=self.root, with_components=lexical is not None)
        timer.lap("metadata")
        return Hits(hits, timer.total())

    # -- what the stages read, cached ---------------------------------------------------------

    def _where(self, sql: str) -> Where:
        w = self._wheres.get(sql)
        if w is None:
            w = parse_where(sql, columns=store.METADATA_SCHEMA.names)
            self._filter.check_type(w, store.METADATA_SCHEMA)
            _remember(self._wheres, sql, w)
        return w

    def _allowed(self, shards: list[store.LoadedShard], sql: str | None) -> list[Ids | None]:
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
                _remember(self._live, key, rows)
            out.append(rows)
        return out

    def _selector(self, shard: store.LoadedShard, sql: str, rows: Ids) -> selectors.RowSelector:
        key = (sql, *_shard_key(shard))
        sel = self._selectors.get(key)
        if sel is None:
            sel = _remember(self._selectors, key, selectors.row_selector(shard.info.rows, rows))
        return sel

    def _subset_search(
        self, shards: list[store.LoadedShard], q: Vectors, opts: SearchOptions
    ) -> Callable[[int, Ids], tuple[np.ndarray, np.ndarray]]:
        """How the ANN stage searches shard i among some of its rows (the subset search)."""
        exact_max = self.exact_subset_max
        sql = opts.where or ""

        def subset(i: int, rows: Ids) -> tuple[np.ndarray, np.ndarray]:
            s = shards[i]
            return stages.search_subset(
                s.index,
                q,
                min(opts.pool, len(rows)),
                rows,
                exact_max=exact_max,
                selector=lambda: self._selector(s, sql, rows),
            )

        return subset

    def _lexical_index(self, shards: list[store.LoadedShard], modality: str) -> LexicalIndex:
        lex = self._lexical.get(modality)
        files = tuple(s.info.meta_file.sha256 for s in shards)
        if lex is None or lex.shard_files != files:
            lex = open_lexical(
                self.path, modality, [(s.info.meta_file.sha256, s.metadata) for s in shards]
            )
            self._lexical[modality] = lex
        return lex

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
    precision: str | None = None,
) -> Index:
    """Open an index for search, with the model recorded in it unless `model` is given.

    A `model` whose weights differ from those that built the index is refused with
    `ModelMismatchError`: its vectors would not be comparable. Queries run in `precision`,
    by default the one the index's vectors were made in; any precision of the same weights
    is allowed (same space).
    """
    from xretrieve.encoders.factory import load_encoder

    p = Path(path).expanduser()
    manifest = store.read_manifest(p)
    built_with = manifest.model
    precision = precision or str(built_with.get("precision") or "fp32")
    if model is None:
        try:
            encoder = load_encoder(
                built_with["name"],
                pretrained=built_with.get("pretrained"),
                device=device,
                precision=precision,
            )
        except ModelUnavailableError as e:
            raise ModelUnavailableError(
                f"{p} was built with model {built_with['name']}, which cannot be loaded here ({e}); "
                "open it with a `model` that is a copy of that model"
            ) from e
    else:
        encoder = load_encoder(model, pretrained=pretrained, device=device, precision=precision)
    store.check_model(manifest, encoder.spec.to_dict(), where=p)
    return Index(p, manifest, encoder)
