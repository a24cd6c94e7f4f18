"""Deleted rows: replaced and removed items of big shards are listed, not rewritten, and no
search, re-run or reader mid-run sees them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import faults
import numpy as np
import pytest

import xretrieve
from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.errors import IndexCorruptError
from xretrieve.indexer import IndexOptions, index_folder


def _opts(**kw: Any) -> IndexOptions:
    """Shards of 4 rows or more count as big (the default threshold is 20,000 rows)."""
    return IndexOptions(**{"progress": False, "batch_size": 8, "compact_rows": 4, **kw})


@pytest.fixture()
def folder(world_dir: Path, tmp_path: Path) -> Path:
    """24 captioned images (3 caption lines each)."""
    root = tmp_path / "media"
    root.mkdir()
    for src in sorted((world_dir / "train").glob("*.png"))[:24]:
        shutil.copy(src, root / src.name)
        shutil.copy(src.with_suffix(".txt"), root / src.with_suffix(".txt").name)
    return root


def _shard(m: store.Manifest, modality: str) -> store.ShardInfo:
    (s,) = [s for s in m.shards if s.modality == modality]
    return s


def _remove(folder: Path, names: list[str]) -> set[str]:
    for n in names:
        (folder / n).unlink()
        (folder / n).with_suffix(".txt").unlink()
    return set(names)


@pytest.mark.parametrize("index_type", [None, "ivf-flat"])
def test_a_few_deletions_mark_rows_and_keep_the_shard_files(
    folder: Path, tmp_path: Path, tiny_encoder: Encoder, index_type: str | None
) -> None:
    idx = tmp_path / "idx"
    index_folder(folder, idx, encoder=tiny_encoder, options=_opts(index_type=index_type))
    first = store.read_manifest(idx)
    assert first.format_version == 1 and first.rows_by_modality() == {"image": 24, "text": 72}
    images = sorted(p.name for p in folder.glob("*.png"))
    gone = _remove(folder, images[:2])

    run = index_folder(folder, idx, encoder=tiny_encoder, options=_opts(index_type=index_type))
    assert run.removed == 2 + 6 and run.encoded == 0
    m = store.read_manifest(idx)
    img, txt = _shard(m, "image"), _shard(m, "text")
    # The shards' files are the same (no rewrite, no ANN training); only a row list is new.
    assert img.index_file == _shard(first, "image").index_file
    assert txt.meta_file == _shard(first, "text").meta_file
    assert (img.rows, img.deleted_rows, txt.deleted_rows) == (24, 2, 6)
    assert m.format_version == 2 and m.rows_by_modality() == {"image": 22, "text": 66}
    deleted = store.read_deleted(idx, img)
    paths = store.read_metadata(idx, img).column("path").to_pylist()
    assert {paths[r] for r in deleted} == gone

    with xretrieve.open_index(idx, device="cpu") as x:
        hits = x.search("a red circle", k=100)
        assert len(hits) == 22 and not {h.path for h in hits} & gone
        hits = x.search("a red circle", k=100, hybrid=True, rerank=True)
        assert len(hits) == 22 and not {h.path for h in hits} & gone
        caps = x.search("a red circle", k=200, modality="text")
        assert len(caps) == 66 and not {h.metadata["image_path"] for h in caps} & gone
        wh = x.search("a red circle", k=100, where="width > 0")
        assert len(wh) == 22 and not {h.path for h in wh} & gone
        assert x.info()["shards"][0]["deleted_rows"] == 2

    again = index_folder(folder, idx, encoder=tiny_encoder, options=_opts(index_type=index_type))
    assert again.commits == 0 and again.unchanged == 22 + 66  # deleted rows stay deleted

    # Past a quarter of a shard deleted, the shard is rewritten without them.
    gone |= _remove(folder, images[2:7])
    index_folder(folder, idx, encoder=tiny_encoder, options=_opts(index_type=index_type))
    m = store.read_manifest(idx)
    img = _shard(m, "image")
    assert img.index_file != _shard(first, "image").index_file
    assert (img.rows, img.deleted_rows, img.deleted) == (17, 0, None)
    assert not set(store.read_metadata(idx, img).column("path").to_pylist()) & gone


def test_a_changed_file_shows_once_in_every_generation_of_a_run(
    folder: Path,
    world_dir: Path,
    tmp_path: Path,
    tiny_encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idx = tmp_path / "idx"
    index_folder(folder, idx, encoder=tiny_encoder, options=_opts())
    images = sorted(folder.glob("*.png"))
    others = sorted((world_dir / "test").glob("*.png"))
    shutil.copy(others[0], images[0])  # changed content, same path
    for src in others[1:6]:
        shutil.copy(src, folder / f"new-{src.name}")  # new items: several commits
    views: list[list[tuple[str, str]]] = []

    def snapshot(point: str) -> None:
        if point == "after-manifest":
            with store.Reader(idx) as r:
                views.append(
                    [
                        (row["modality"], row["path"])
                        for s in r.shards()
                        for i, row in enumerate(s.metadata.to_pylist())
                        if i not in set(s.deleted.tolist()) and row["modality"] != "text"
                    ]
                )

    faults.install(snapshot, patch=monkeypatch.setattr)
    run = index_folder(folder, idx, encoder=tiny_encoder, options=_opts(commit_every=2))
    assert run.commits >= 3 and run.updated == 1 and run.indexed == 5
    for view in views:  # every generation the run landed: each file once
        assert len(view) == len(set(view))
        assert ("image", images[0].name) in view
    assert len(views[-1]) == 24 + 5


def test_a_damaged_deleted_list_is_reported(
    folder: Path, tmp_path: Path, tiny_encoder: Encoder
) -> None:
    idx = tmp_path / "idx"
    index_folder(folder, idx, encoder=tiny_encoder, options=_opts())
    _remove(folder, [sorted(p.name for p in folder.glob("*.png"))[0]])
    index_folder(folder, idx, encoder=tiny_encoder, options=_opts())
    img = _shard(store.read_manifest(idx), "image")
    assert img.deleted is not None
    path = idx / store.SHARDS_DIR / img.deleted.name
    path.write_bytes(b"\x93NUMPY" + bytes(len(path.read_bytes()) - 6))  # same size, garbage
    with pytest.raises(IndexCorruptError):
        store.load_shard(idx, img)
    path.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        store.read_deleted(idx, img)
    txt = _shard(store.read_manifest(idx), "text")
    assert np.array_equal(store.read_deleted(idx, txt), np.arange(3))  # its 3 caption lines
