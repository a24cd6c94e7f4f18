"""BM25 over captions and path words: tokens, ranking, the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from xretrieve.query import lexical
from xretrieve.query.lexical import document_texts, open_lexical, tokenize


def test_tokenize_splits_paths_camel_case_and_digits() -> None:
    assert tokenize("Holidays/2024_Beach-trip/IMG_0042.JPG") == [
        "holidays",
        "2024",
        "beach",
        "trip",
        "0042",
    ]
    assert tokenize("redCircle on a BlueSquare") == ["red", "circle", "blue", "square"]
    assert tokenize("café au lait") == ["café", "au", "lait"]
    assert tokenize(None) == [] and tokenize("") == []


def _table(captions: list[str | None], paths: list[str], modality: str = "image") -> pa.Table:
    n = len(paths)
    return pa.table(
        {
            "caption": pa.array(captions, pa.string()),
            "path": paths,
            "image_path": pa.array([None] * n, pa.string()),
            "modality": [modality] * n,
        }
    )


def test_document_texts_use_caption_and_path() -> None:
    t = _table(["a red circle", None], ["trips/paris/eiffel.jpg", "x.png"])
    assert document_texts(t) == ["a red circle trips/paris/eiffel.jpg", " x.png"]
    corpus = _table(["a cat"], ["/data/corpus.txt"], modality="text")
    assert document_texts(corpus) == ["a cat "]  # the corpus file name is not a word of it


def test_bm25_ranks_and_spans_shards(tmp_path: Path) -> None:
    s0 = _table(["a red triangle", "a blue square"], ["a.png", "b.png"])
    s1 = _table(["red red red circle", None], ["c.png", "holidays/paris/d.png"])
    lex = open_lexical(tmp_path, "image", [("s0", s0), ("s1", s1)])
    scores = lex.scores("red circle")
    assert scores.shape == (4,) and int(np.argmax(scores)) == 2 and scores[1] == 0.0
    shard, row = lex.split(np.array([0, 1, 2, 3]))
    assert shard.tolist() == [0, 0, 1, 1] and row.tolist() == [0, 1, 0, 1]
    assert int(np.argmax(lex.scores("paris"))) == 3
    assert not lex.scores("zebra").any()  # unknown words score nothing, no error
    masked = lex.scores("red", mask=np.array([True, True, False, True]))
    assert masked[2] == 0.0 and masked[0] > 0


def test_cache_is_reused_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s0 = _table(["a red circle"], ["a.png"])
    open_lexical(tmp_path, "image", [("k1", s0)])
    (first,) = (tmp_path / "lexical").glob("image-*")

    def no_build(tables):  # type: ignore[no-untyped-def]
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(lexical, "_build", no_build)
    again = open_lexical(tmp_path, "image", [("k1", s0)])
    assert again.scores("circle")[0] > 0
    monkeypatch.undo()
    open_lexical(tmp_path, "image", [("k2", s0)])  # other shard files: a new cache
    (second,) = (tmp_path / "lexical").glob("image-*")
    assert second != first and not first.exists()
    assert not list((tmp_path / "lexical").glob(".*"))  # no temporary folder left


def test_empty_shards(tmp_path: Path) -> None:
    lex = open_lexical(tmp_path, "text", [("e", _table([], []))])
    assert lex.n_docs == 0 and lex.scores("anything").size == 0
    assert open_lexical(tmp_path, "text", [("e", _table([], []))]).n_docs == 0
