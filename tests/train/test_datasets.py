"""Loading image-caption evaluation sets: every layout, splits, and one-line typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from caption_sets import (
    Pairs,
    distractor,
    world_pairs,
    write_coco,
    write_folder,
    write_karpathy,
    write_table,
)

from xretrieve.errors import FolderError, InputError, MediaError, XRetrieveError
from xretrieve.train.datasets import EvalSet, load_eval_set


@pytest.fixture(scope="module")
def pairs(world_dir: Path) -> Pairs:
    got = world_pairs(world_dir, n=8)
    assert min(len(c) for _, c in got) >= 2  # several captions per image
    return got


def _same(ds: EvalSet, pairs: Pairs, *, distractors: int = 0) -> None:
    """`ds` holds `pairs` in order (image bytes, captions, caption->image), then distractors."""
    assert ds.n_images == len(pairs) + distractors
    for i, (img, caps) in enumerate(pairs):
        assert ds.images[i].read_bytes() == img.read_bytes()
        assert [c for c, j in zip(ds.captions, ds.caption_image, strict=True) if j == i] == caps
    assert ds.caption_image.dtype == np.int64 and len(ds.caption_image) == ds.n_captions
    counts = ds.captions_per_image()
    assert list(counts) == [len(c) for _, c in pairs] + [0] * distractors


def _one_line(e: pytest.ExceptionInfo[XRetrieveError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "--" not in msg, msg
    return msg


def test_folder_with_sidecars(pairs: Pairs, world_dir: Path, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", pairs, extra=distractor(world_dir))
    ds = load_eval_set(root)
    assert ds.layout == "folder" and ds.split is None and ds.source == root
    _same(ds, pairs, distractors=1)
    assert ds.images[-1].name == "lonely.png"


def test_folder_split_subfolder(pairs: Pairs, tmp_path: Path) -> None:
    write_folder(tmp_path / "f" / "test", pairs[:3])
    write_folder(tmp_path / "f" / "train", pairs[3:])
    ds = load_eval_set(tmp_path / "f", split="test")
    assert ds.split == "test"
    _same(ds, pairs[:3])
    assert load_eval_set(tmp_path / "f").n_images == len(pairs)  # no split: the whole folder
    with pytest.raises(InputError) as e:
        load_eval_set(tmp_path / "f", split="val")
    assert "no split 'val'" in _one_line(e)


def test_csv_quoted_and_clip_benchmark_unquoted(
    pairs: Pairs, world_dir: Path, tmp_path: Path
) -> None:
    quoted = load_eval_set(write_table(tmp_path / "a" / "caps.csv", pairs))
    assert quoted.layout == "csv"
    _same(quoted, pairs)
    # CLIP_benchmark's flickr30k_test_karpathy.txt: header, then IMAGE,caption with bare commas.
    assert any("," in c for _, caps in pairs for c in caps)
    raw = write_table(
        tmp_path / "b" / "flickr30k_test_karpathy.txt",
        pairs,
        quote=False,
        extra=distractor(world_dir),
    )
    ds = load_eval_set(raw)
    _same(ds, pairs, distractors=1)
    # ... found in its folder by the split it is named for, as CLIP_benchmark finds it.
    by_split = load_eval_set(raw.parent, split="test")
    assert by_split.source == raw and by_split.captions == ds.captions


def test_tsv_with_split_column_and_open_clip_headers(pairs: Pairs, tmp_path: Path) -> None:
    splits = ["test" if i % 2 else "train" for i in range(len(pairs))]
    path = write_table(
        tmp_path / "t" / "data.tsv",
        pairs,
        delimiter="\t",
        header=("filepath", "title"),
        splits=splits,
    )
    ds = load_eval_set(path, split="test")
    _same(ds, [p for p, s in zip(pairs, splits, strict=True) if s == "test"])
    with pytest.raises(InputError) as e:
        load_eval_set(path)
    assert "names splits (test, train): choose one" in _one_line(e)
    with pytest.raises(InputError) as e:
        load_eval_set(path, split="val")
    assert "no split 'val'" in _one_line(e)


def test_file_without_splits_takes_only_the_split_it_is_named_for(
    pairs: Pairs, tmp_path: Path
) -> None:
    path = write_table(tmp_path / "c" / "caps.csv", pairs[:2])
    with pytest.raises(InputError) as e:
        load_eval_set(path, split="test")
    assert "caps.csv names no splits" in _one_line(e)
    named = path.rename(path.with_name("mine_test.csv"))
    assert load_eval_set(named, split="test").n_images == 2


def test_coco_captions_with_image_folder(pairs: Pairs, world_dir: Path, tmp_path: Path) -> None:
    ann = write_coco(
        tmp_path / "coco" / "coco_test_karpathy.json", pairs, extra=distractor(world_dir)
    )
    ds = load_eval_set(ann, images=tmp_path / "coco" / "val2014")
    assert ds.layout == "coco"
    _same(ds, pairs, distractors=1)
    assert (
        load_eval_set(ann, split="test", images=ann.parent / "val2014").n_images == len(pairs) + 1
    )
    # Without the image folder, names resolve beside the JSON, where they are not.
    with pytest.raises(MediaError) as e:
        load_eval_set(ann)
    assert "image not found (listed at" in _one_line(e) and "images[0]" in str(e.value)


def test_karpathy_json_splits(pairs: Pairs, tmp_path: Path) -> None:
    splits = ["test", "train", "restval", "test", "val", "test", "train", "test"]
    path = write_karpathy(tmp_path / "k" / "dataset_coco.json", pairs, splits)
    ds = load_eval_set(path, split="test")
    assert ds.layout == "karpathy" and ds.split == "test"
    _same(ds, [p for p, s in zip(pairs, splits, strict=True) if s == "test"])
    assert all(p.parent.name == "val2014" for p in ds.images)  # images under their filepath
    with pytest.raises(InputError) as e:
        load_eval_set(path)
    assert "(restval, test, train, val)" in _one_line(e)


def test_missing_image_names_the_image_and_the_line(pairs: Pairs, tmp_path: Path) -> None:
    path = write_table(tmp_path / "m" / "caps.csv", pairs[:3])
    (path.parent / "images" / "img01.png").unlink()
    with pytest.raises(MediaError) as e:
        load_eval_set(path)
    msg = _one_line(e)
    first = len(pairs[0][1]) + 2  # header, then the captions of image 0
    assert "img01.png: image not found" in msg and f"caps.csv:{first}" in msg


def test_bad_csv_header_and_bad_rows(pairs: Pairs, tmp_path: Path) -> None:
    path = write_table(tmp_path / "h" / "caps.csv", pairs[:2], header=("picture", "words"))
    with pytest.raises(MediaError) as e:
        load_eval_set(path)
    msg = _one_line(e)
    assert msg.startswith(f"{path}:1: the header must name an image column") and "picture" in msg
    bad = tmp_path / "h" / "rows.tsv"
    bad.write_text("caption\timage\tsplit\nhello\timages/img00.png\n", encoding="utf-8")
    with pytest.raises(MediaError) as e:
        load_eval_set(bad)
    assert "rows.tsv:2: expected 3 fields, found 2" in _one_line(e)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [', "bad.json:1: not valid JSON"),
        ('{"images": [{"id": 1}], "annotations": []}', "images[0]: missing or malformed field 'file_name'"),
        ('{"images": [], "annotations": [{"image_id": 7, "caption": "x"}]}', "annotations[0]: image_id 7 is not in images"),
        ('{"images": [], "annotations": [{"image_id": 7}]}', "annotations[0]: missing or malformed field 'caption'"),
        ('{"images": 3}', "neither COCO captions"),
        ("[1, 2]", "neither COCO captions"),
    ],
)  # fmt: skip
def test_bad_coco_json(doc: str, where: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(doc, encoding="utf-8")
    with pytest.raises(MediaError) as e:
        load_eval_set(path)
    assert where in _one_line(e)


def test_nothing_to_evaluate(pairs: Pairs, tmp_path: Path) -> None:
    with pytest.raises(FolderError) as e:
        load_eval_set(tmp_path / "nope")
    assert "evaluation data not found" in _one_line(e)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(pairs[0][0], empty / "x.png")  # an image, but no caption anywhere
    with pytest.raises(FolderError) as e:
        load_eval_set(empty)
    assert "no captioned images" in _one_line(e)
    # A CLIP_benchmark folder read without a split says which split files it holds.
    write_table(tmp_path / "cb" / "flickr30k_test_karpathy.txt", pairs[:1], quote=False)
    with pytest.raises(FolderError) as e:
        load_eval_set(tmp_path / "cb" / "images")
    with pytest.raises(FolderError) as e:
        load_eval_set(tmp_path / "cb")
    assert "flickr30k_test_karpathy.txt" in _one_line(e) and "choose a split" in str(e.value)


def test_bad_arguments(pairs: Pairs, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", pairs[:2])
    with pytest.raises(InputError):
        load_eval_set(root, split="../etc")
    with pytest.raises(InputError) as e:
        load_eval_set(root, images=root)
    assert "captioned folder" in _one_line(e)
    with pytest.raises(FolderError):
        load_eval_set(root, images=tmp_path / "missing")
    other = tmp_path / "notes.md"
    other.write_text("hi", encoding="utf-8")
    with pytest.raises(MediaError) as e:
        load_eval_set(other)
    assert "not an evaluation set" in _one_line(e)


def test_a_set_is_frozen(pairs: Pairs, tmp_path: Path) -> None:
    ds = load_eval_set(write_folder(tmp_path / "f", pairs[:2]))
    with pytest.raises(AttributeError):
        ds.split = "x"  # type: ignore[misc]
    assert json.dumps(ds.captions)  # plain strings
