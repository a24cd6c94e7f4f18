"""Lexical search: BM25 (bm25s) over captions and the words of file and folder names.

One BM25 index per modality covers all its shards; documents are numbered shard after shard
(`offsets[s] + row`). It is built on first use and cached on disk beside the shards::

    INDEX/lexical/<modality>-<key>/   bm25s files + docs.json (shard files, offsets)

`key` hashes the checksums of the modality's shard files, so the cache stays valid across
generations that leave those shards alone and is rebuilt when they change; stale folders
are removed when a new one is written. The folder is written under a temporary name and
renamed, so a reader never loads half of it. A `lexical/` folder (or cache folder) that is a
symlink is damage: it is never read from, written into nor cleaned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from xretrieve.errors import IndexCorruptError
from xretrieve.store.filecheck import check_npy_file
from xretrieve.store.safety import folder

__all__ = ["LexicalIndex", "document_texts", "open_lexical", "tokenize"]

FORMAT_VERSION = 1
LEXICAL_DIR = "lexical"
_DOCS = "docs.json"
_CACHE_NAME = re.compile(r"[a-z]+-[0-9a-f]{16}")

# Words that carry no meaning in captions or file names (a short list: BM25's idf already
# discounts frequent words; this only keeps them out of the vocabulary).
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "with",
        "img",
        "image",
        "dsc",
        "jpg",
        "jpeg",
        "png",
        "gif",
        "webp",
        "tif",
        "tiff",
        "heic",
        "bmp",
        "txt",
    ]
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def tokenize(text: str | None) -> list[str]:
    """Lower-cased words of `text`: split at non-letters, camelCase and letter/digit edges."""
    if not text:
        return []
    words = _WORD.findall(_CAMEL.sub(" ", text))
    return [w for w in (w.lower() for w in words) if w not in _STOPWORDS]


def document_texts(table: pa.Table) -> list[str]:
    """What BM25 reads for each metadata row: its caption and its path (or described image)."""
    captions = table.column("caption").to_pylist()
    paths = table.column("path").to_pylist()
    images = table.column("image_path").to_pylist()
    modality = table.column("modality").to_pylist()
    out = []
    for cap, path, img, mod in zip(captions, paths, images, modality, strict=True):
        # A caption row names its image; a corpus caption's own path is the corpus file,
        # the same for every row, so it would only add noise.
        where = (img or "") if mod == "text" else (path or "")
        out.append(f"{cap or ''} {where}")
    return out


def _cache_key(shard_files: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(shard_files).encode()).hexdigest()[:16]


@dataclass
class LexicalIndex:
    """A BM25 index over one modality's shards, documents numbered shard after shard."""

    retriever: object  # bm25s.BM25
    shard_files: tuple[str, ...]
    offsets: npt.NDArray[np.int64]  # len(shards) + 1

    @property
    def n_docs(self) -> int:
        return int(self.offsets[-1])

    def scores(self, query: str, *, mask: npt.NDArray[np.bool_] | None = None) -> np.ndarray:
        """BM25 score of every document for `query` (0 where no query word occurs)."""
        if self.n_docs == 0:
            return np.zeros(0, np.float32)
        vocab = self.retriever.vocab_dict  # type: ignore[attr-defined]
        tokens = [t for t in tokenize(query) if t in vocab]
        if not tokens:
            return np.zeros(self.n_docs, np.float32)
        s = np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)  # type: ignore[attr-defined]
        if mask is not None:
            s = np.where(mask, s, 0.0).astype(np.float32)
        return s

    def split(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row) of document numbers."""
        shard = np.searchsorted(self.offsets, docs, side="right") - 1
        return shard, docs - self.offsets[shard]


def _build(tables: Sequence[pa.Table]) -> object:
    import bm25s

    corpus: list[list[str]] = []
    for t in tables:
        corpus.extend(tokenize(text) for text in document_texts(t))
    retriever = bm25s.BM25()
    if corpus:
        retriever.index(corpus, show_progress=False)
    return retriever


def open_lexical(
    index_dir: str | os.PathLike[str],
    modality: str,
    shards: Sequence[tuple[str, pa.Table]],
) -> LexicalIndex:
    """The BM25 index over `shards` ((checksum, metadata) pairs), from the cache or built now."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.ERROR)
    files = tuple(s for s, _ in shards)
    offsets = np.cumsum([0, *(t.num_rows for _, t in shards)]).astype(np.int64)
    base = Path(index_dir).expanduser() / LEXICAL_DIR
    target = base / f"{modality}-{_cache_key(files)}"
    _refuse_links(base.parent, LEXICAL_DIR, f"{LEXICAL_DIR}/{target.name}")
    if (target / _DOCS).is_file():
        try:
            docs = json.loads((target / _DOCS).read_text(encoding="utf-8"))
            if docs.get("format_version") == FORMAT_VERSION and tuple(docs["shards"]) == files:
                _check_cache_arrays(target)
                retriever = (
                    bm25s.BM25.load(str(target), show_progress=False)
                    if offsets[-1]
                    else bm25s.BM25()
                )
                return LexicalIndex(retriever, files, offsets)
        except (OSError, ValueError, KeyError, IndexCorruptError) as e:
            logging.getLogger(__name__).warning("rebuilding lexical cache %s: %s", target, e)
            # A damaged cache is removed so the rebuilt one can take its name (checked above:
            # a real folder with a cache's name, not a link).
            if _CACHE_NAME.fullmatch(target.name) and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
    retriever = _build([t for _, t in shards])
    lex = LexicalIndex(retriever, files, offsets)
    with contextlib.suppress(OSError):  # a read-only index still searches, it just rebuilds
        _save(lex, base, target, modality)
    return lex


#: The sparse matrix bm25s saves: each array's file and dtype (all one-dimensional).
_CACHE_ARRAYS = {
    "data.csc.index.npy": "float32",
    "indices.csc.index.npy": "int32",
    "indptr.csc.index.npy": "int64",
}


def _check_cache_arrays(target: Path) -> None:
    """`IndexCorruptError` unless the cached arrays hold what their headers claim (a crafted
    cache could otherwise make numpy allocate whatever its header says); then it is rebuilt."""
    shapes = {
        name: check_npy_file(target / name, dtype=dtype, ndim=1, what="lexical cache")
        for name, dtype in _CACHE_ARRAYS.items()
        if (target / name).exists()
    }
    data, indices = shapes.get("data.csc.index.npy"), shapes.get("indices.csc.index.npy")
    if data is not None and indices is not None and data != indices:
        raise IndexCorruptError(f"{target}: index damaged: the lexical cache's arrays disagree")


def _refuse_links(index_dir: Path, *folders: str) -> None:
    """`IndexCorruptError` if one of `folders` inside the index is a symlink (missing is fine)."""
    for rel in folders:
        with contextlib.suppress(FileNotFoundError), folder(index_dir, rel):
            pass


def _save(lex: LexicalIndex, base: Path, target: Path, modality: str) -> None:
    with folder(base.parent, LEXICAL_DIR, create=True):  # a real folder, not a link
        pass
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        if lex.n_docs:
            lex.retriever.save(str(tmp), show_progress=False)  # type: ignore[attr-defined]
        docs = {"format_version": FORMAT_VERSION, "shards": list(lex.shard_files)}
        # Written last: its presence says the folder is complete.
        (tmp / _DOCS).write_text(json.dumps(docs), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _DOCS).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another reader wrote the same cache first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in base.glob(f"{modality}-*"):
        # Only cache folders this module names, and never through a link.
        if old != target and _CACHE_NAME.fullmatch(old.name) and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    if not (target / _DOCS).is_file():
        raise IndexCorruptError(f"{target}: the lexical cache was not written")
