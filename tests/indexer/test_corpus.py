"""Caption corpora: text, JSONL and Parquet files become text shards; bad files are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import xretrieve
from xretrieve import store
from xretrieve.errors import InputError, MediaError
from xretrieve.indexer.corpus import add_captions, read_corpus


@pytest.fixture()
def index_copy(built_index: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(built_index, dst)
    return dst


def _corpus_rows(index: Path, corpus: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for info in store.read_manifest(index).shards:
        t = store.load_shard(index, info).metadata
        rows += [r for r in t.to_pylist() if r["path"] == str(corpus.resolve())]
    return rows


def test_text_corpus_feeds_image_to_caption(
    index_copy: Path, tiny_encoder: xretrieve.Encoder, world_dir: Path, tmp_path: Path
) -> None:
    before = store.read_manifest(index_copy)
    corpus = tmp_path / "caps.txt"
    corpus.write_text("a zebra crossing\n\n   \na red balloon\r\nthe third one", encoding="utf-8")
    report = add_captions(index_copy, corpus, encoder=tiny_encoder, batch_size=2)
    assert (report.captions, report.skipped_blank) == (3, 2)
    after = store.read_manifest(index_copy)
    assert after.generation == before.generation + 1
    assert {s.name for s in before.shards} < {s.name for s in after.shards}  # kept + new
    rows = _corpus_rows(index_copy, corpus)
    assert [(r["line"], r["caption"]) for r in rows] == [
        (0, "a zebra crossing"),
        (3, "a red balloon"),
        (4, "the third one"),
    ]
    assert all(r["modality"] == "text" and r["content_hash"] for r in rows)
    idx = xretrieve.open_index(index_copy, device="cpu")
    probe = sorted((world_dir / "test").glob("*.png"))[0]
    n_text = after.rows_by_modality()["text"]
    caps = idx.caption(probe, k=n_text)
    assert {"a zebra crossing", "a red balloon", "the third one"} <= {h.caption for h in caps}
    only = idx.caption(probe, k=10, where=f"path = '{corpus.resolve()}'")
    assert len(only) == 3
    # Adding the same file again replaces its captions instead of doubling them.
    corpus.write_text("just one now\n")
    again = add_captions(index_copy, corpus, encoder=tiny_encoder)
    assert again.replaced_shards == 1
    assert [r["caption"] for r in _corpus_rows(index_copy, corpus)] == ["just one now"]


def test_jsonl_and_parquet(tmp_path: Path) -> None:
    j = tmp_path / "c.jsonl"
    j.write_text(
        "\n".join(json.dumps(x) for x in [{"text": "one"}, {"text": None}, {"text": "two"}])
    )
    assert list(read_corpus(j, column="text")) == [([0, 2], ["one", "two"], 1)]
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "cap": ["x  y", "", "z\nw"]}), p)
    assert list(read_corpus(p, column="cap", batch_size=1)) == [
        ([0], ["x y"], 0),
        ([2], ["z w"], 1),
    ]


@pytest.mark.parametrize(
    ("name", "data", "column", "error", "match"),
    [
        ("bad.txt", b"fine\n\xff\xfe broken\n", "caption", MediaError, "line 2 is not UTF-8"),
        (
            "bad.jsonl",
            b'{"caption": "ok"}\n{oops\n',
            "caption",
            MediaError,
            "line 2 is not valid JSON",
        ),
        ("bad.jsonl", b'{"text": "ok"}\n', "caption", InputError, "no 'caption' field"),
        ("bad.jsonl", b'{"caption": 3}\n', "caption", InputError, "not a string"),
    ],
)
def test_bad_corpus_files(
    tmp_path: Path, name: str, data: bytes, column: str, error: type, match: str
) -> None:
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(error, match=match):
        list(read_corpus(f, column=column))


def test_bad_corpus_changes_nothing(
    index_copy: Path, tiny_encoder: xretrieve.Encoder, tmp_path: Path
) -> None:
    before = store.read_manifest(index_copy)
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1]}), p)
    with pytest.raises(InputError, match="no column 'caption'; its columns are id"):
        add_captions(index_copy, p, encoder=tiny_encoder)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    with pytest.raises(InputError, match="holds no captions"):
        add_captions(index_copy, blank, encoder=tiny_encoder)
    with pytest.raises(MediaError, match="no such file"):
        add_captions(index_copy, tmp_path / "missing.txt", encoder=tiny_encoder)
    assert store.read_manifest(index_copy).generation == before.generation
    assert not list(index_copy.glob(".corpus-*"))  # the temporary vector file is gone
