"""Shards by partition key, their manifest statistics, the writer lock, readers during writes."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faults
import pytest

from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.errors import IndexLockedError
from xretrieve.indexer import IndexOptions, index_folder


def _opts(**kw: Any) -> IndexOptions:
    return IndexOptions(**{"progress": False, "batch_size": 4, **kw})


def _year_ns(year: int) -> int:
    return int(datetime(year, 6, 1, tzinfo=timezone.utc).timestamp()) * 10**9


@pytest.fixture()
def tree(world_dir: Path, tmp_path: Path) -> Path:
    """Images spread over a/, b/c/ and the root, with mtimes in 2019, 2021 and 2023."""
    root = tmp_path / "tree"
    pngs = sorted((world_dir / "train").glob("*.png"))[:12]
    for i, src in enumerate(pngs):
        sub = ["a", "b/c", ""][i % 3]
        (root / sub).mkdir(parents=True, exist_ok=True)
        dst = root / sub / src.name
        shutil.copy(src, dst)
        shutil.copy(src.with_suffix(".txt"), dst.with_suffix(".txt"))
        year = [2019, 2021, 2023][i % 4 % 3]
        for f in (dst, dst.with_suffix(".txt")):
            os.utime(f, ns=(_year_ns(year), _year_ns(year)))
    return root


def _shard_rows(idx: Path) -> list[tuple[store.ShardInfo, list[dict[str, Any]]]]:
    m = store.read_manifest(idx)
    return [(s, store.read_metadata(idx, s).to_pylist()) for s in m.shards]


def _check_stats(info: store.ShardInfo, rows: list[dict[str, Any]]) -> None:
    stats = info.partition["stats"]
    for col in ("width", "height", "bytes", "year"):
        values = [r[col] for r in rows if r[col] is not None]
        want = {"min": min(values), "max": max(values)} if values else {"min": None, "max": None}
        assert stats[col] == want, (info.name, col)
    times = [r["mtime"] for r in rows]
    assert datetime.fromisoformat(stats["mtime"]["min"]) == min(times)
    assert datetime.fromisoformat(stats["mtime"]["max"]) == max(times)


@pytest.mark.parametrize("key", ["folder", "year"])
def test_shard_by_partitions_caps_and_records_stats(
    tree: Path, tiny_encoder: Encoder, tmp_path: Path, key: str
) -> None:
    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts(shard_by=key, max_rows_per_shard=3))
    shards = _shard_rows(idx)
    seen: dict[tuple[str, Any], int] = {}
    for info, rows in shards:
        assert info.partition["key"] == key
        assert len(rows) == info.rows <= 3
        assert {r[key] for r in rows} == {info.partition["value"]}  # one value per shard
        assert {r["modality"] for r in rows} == {info.modality}
        _check_stats(info, rows)
        seen[(info.modality, info.partition["value"])] = (
            seen.get((info.modality, info.partition["value"]), 0) + info.rows
        )
    images = {k[1]: n for k, n in seen.items() if k[0] == "image"}
    if key == "folder":
        assert images == {"a": 4, "b": 4, "": 4}
    else:
        assert images == {2019: 6, 2021: 3, 2023: 3}


def test_rows_carry_folder_and_year(tree: Path, tiny_encoder: Encoder, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    for info, rows in _shard_rows(idx):
        assert info.partition == {"key": "none", "value": None, "stats": info.partition["stats"]}
        for r in rows:
            assert r["folder"] == (r["path"].split("/")[0] if "/" in r["path"] else "")
            assert r["year"] == r["mtime"].year


def test_changing_shard_by_repartitions_without_encoding(
    tree: Path, tiny_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "idx"
    first = index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    calls: list[int] = []
    monkeypatch.setattr(tiny_encoder, "encode_pixels", lambda p: calls.append(len(p)))
    monkeypatch.setattr(tiny_encoder, "encode_texts", lambda t: calls.append(len(t)))
    run = index_folder(tree, idx, encoder=tiny_encoder, options=_opts(shard_by="folder"))
    assert calls == [] and run.unchanged == first.images + first.texts
    values = {s.partition["value"] for s, _ in _shard_rows(idx)}
    assert values == {"a", "b", ""}
    # The next run keeps the index's key when none is given, and rewrites nothing.
    again = index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    assert again.generation == run.generation and again.commits == 0


def test_second_writer_is_refused_with_a_clear_message(
    tree: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    idx = tmp_path / "idx"
    with store.lock_index(idx), pytest.raises(IndexLockedError, match="another process"):
        index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    assert not (idx / "manifest.json").exists()
    assert index_folder(tree, idx, encoder=tiny_encoder, options=_opts()).images == 12


def _keys(shards: list[store.LoadedShard]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["modality"], r["path"], r["line"]) for s in shards for r in s.metadata.to_pylist()
    )


def test_reader_keeps_a_consistent_view_across_writes(
    tree: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    reader = store.Reader(idx)  # opened before the writes, nothing loaded yet
    assert reader.pinned
    before = reader.manifest
    images_before = reader.shards("image")  # part of the view loaded now...

    victims = sorted(tree.rglob("*.png"))
    for i in range(3):  # three more generations land: without the pin, N's files would go
        victims[i].unlink()
        index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    assert store.read_manifest(idx).generation >= before.generation + 3
    texts = reader.shards("text")  # ...the rest after the writes: still generation N
    assert reader.manifest.generation == before.generation
    assert sum(s.metadata.num_rows for s in images_before + texts) == before.rows
    gone = ("image", victims[0].relative_to(tree).as_posix(), None)
    assert gone in _keys(images_before)

    reader.close()  # the pin goes; the next write removes N's files
    victims[3].unlink()
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    shard_dir = idx / store.SHARDS_DIR
    assert not (shard_dir / before.shards[0].index_file.name).exists()
    assert list((idx / store.READERS_DIR).iterdir()) == []
    late = store.Reader(idx, manifest=before)  # a reader of N whose files are gone
    shards = late.shards()
    now = store.read_manifest(idx)
    assert late.manifest.generation == now.generation > before.generation + 1
    assert len(_keys(shards)) == now.rows == len(set(_keys(shards)))
    assert ("image", victims[3].relative_to(tree).as_posix(), None) not in _keys(shards)


def test_a_dead_readers_pin_is_released(tree: Path, tiny_encoder: Encoder, tmp_path: Path) -> None:
    import subprocess
    import sys

    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    before = store.read_manifest(idx)
    # A reader in another process pins generation N, then dies without closing (SIGKILL).
    code = (
        "import os, signal, sys; from xretrieve import store; "
        f"r = store.Reader({str(idx)!r}); assert r.pinned; os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert len(list((idx / store.READERS_DIR).glob("*.pin"))) == 1
    victims = sorted(tree.rglob("*.png"))
    for v in victims[:2]:
        v.unlink()
        index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    # The dead pin protected nothing: it was removed, and N's files with it.
    assert list((idx / store.READERS_DIR).iterdir()) == []
    assert not (idx / store.SHARDS_DIR / before.shards[0].meta_file.name).exists()


def test_reader_opened_during_a_write_sees_one_generation(
    tree: Path,
    world_dir: Path,
    tiny_encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    gone = sorted(tree.rglob("*.png"))[:3]
    for p in gone:
        p.unlink()
    (tree / "new").mkdir()
    for src in sorted((world_dir / "test").glob("*.png"))[:5]:
        shutil.copy(src, tree / "new" / src.name)  # new items: several commits in the run
    readers: list[store.Reader] = []

    def open_reader(point: str) -> None:
        if point == "after-manifest" and not readers:
            readers.append(store.Reader(idx))  # between two commits of the run

    faults.install(open_reader, patch=monkeypatch.setattr)
    run = index_folder(tree, idx, encoder=tiny_encoder, options=_opts(commit_every=2))
    assert run.commits >= 3 and run.indexed == 5
    (reader,) = readers
    assert reader.manifest.generation < store.read_manifest(idx).generation
    shards = reader.shards()
    assert {s.info.name for s in shards} == {s.name for s in reader.manifest.shards}
    assert sum(s.metadata.num_rows - len(s.deleted) for s in shards) == reader.manifest.rows
    # Mid-run, the deleted files are already out of the view (their rows are marked deleted).
    live = {
        r["path"]
        for s in shards
        for i, r in enumerate(s.metadata.to_pylist())
        if r["modality"] == "image" and i not in set(s.deleted.tolist())
    }
    assert live and not live & {p.relative_to(tree).as_posix() for p in gone}


def test_a_reader_that_cannot_pin_still_sees_one_generation(
    tree: Path, tiny_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only index: no pin can be written, so the reader follows the newest generation."""
    idx = tmp_path / "idx"
    index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    real_mkdir = os.mkdir

    def refuse(path: Any, *a: Any, **kw: Any) -> None:
        if os.path.basename(os.fspath(path)) == store.READERS_DIR:
            raise PermissionError(13, "read-only", str(path))
        real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", refuse)
    reader = store.Reader(idx)
    assert not reader.pinned
    before = reader.manifest
    monkeypatch.undo()
    victims = sorted(tree.rglob("*.png"))
    for v in victims[:2]:  # two generations: the reader's files are removed
        v.unlink()
        index_folder(tree, idx, encoder=tiny_encoder, options=_opts())
    shards = reader.shards()  # re-reads the manifest instead of failing
    now = store.read_manifest(idx)
    assert reader.manifest.generation == now.generation > before.generation
    assert sum(s.metadata.num_rows - len(s.deleted) for s in shards) == now.rows
