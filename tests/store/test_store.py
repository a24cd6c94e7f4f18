"""The on-disk format: manifest, atomic writes, damage detection, the writer lock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xretrieve import store
from xretrieve.errors import (
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStoreError,
)
from xretrieve.store import ann, writer


def _payload(n: int, dim: int = 8, modality: str = "image", seed: int = 0) -> store.ShardPayload:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [
        store.metadata_row(
            path=f"{i}.png", modality=modality, bytes=i, mtime_us=0, content_hash=f"h{i}"
        )
        for i in range(n)
    ]
    return store.ShardPayload(modality, v, store.metadata_table(rows))  # type: ignore[arg-type]


def _write(d: Path, *payloads: store.ShardPayload, **kw: object) -> store.Manifest:
    return store.write_generation(
        d,
        root="/media",
        model={"name": "m", "fingerprint": "f"},
        dim=8,
        payloads=payloads,
        **kw,  # type: ignore[arg-type]
    )


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    m = _write(tmp_path, _payload(30), _payload(5, modality="text"))
    again = store.read_manifest(tmp_path)
    assert again == m
    assert again.rows_by_modality() == {"image": 30, "text": 5}
    shard = store.load_shard(tmp_path, again.shards[0], verify=True)
    assert shard.metadata.column("row").to_pylist() == list(range(30))
    assert set(shard.metadata.column("shard").to_pylist()) == {"image-00000"}
    np.testing.assert_allclose(
        ann.reconstruct_vectors(shard.index), _payload(30).vectors, atol=1e-6
    )


def test_shards_split_at_max_rows_and_generations_replace_files(tmp_path: Path) -> None:
    m1 = _write(tmp_path, _payload(25), max_rows_per_shard=10)
    assert [s.rows for s in m1.shards] == [10, 10, 5]
    assert [s.name for s in m1.shards] == ["image-00000", "image-00001", "image-00002"]
    m2 = _write(tmp_path, _payload(7))
    assert m2.generation == m1.generation + 1
    assert [s.name for s in m2.shards] == ["image-00003"]  # names are never reused
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    # Generation 1 stays for readers that opened it, until generation 3 lands.
    assert {f.split(".")[1] for f in files} == {"g1", "g2"}, files
    m3 = _write(tmp_path, _payload(2))
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert {f.split(".")[1] for f in files} == {"g2", "g3"}, files
    assert store.load_shard(tmp_path, m3.shards[0]).metadata.num_rows == 2


def test_failed_write_keeps_previous_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m1 = _write(tmp_path, _payload(12))

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, _payload(50, seed=1))
    monkeypatch.undo()
    assert store.read_manifest(tmp_path) == m1
    shard = store.load_shard(tmp_path, m1.shards[0], verify=True)
    assert shard.metadata.num_rows == 12
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no index at"):
        store.read_manifest(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(IndexNotFoundError, match="not an xretrieve index"):
        store.read_manifest(tmp_path / "other")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "xretrieve-index"}', ""])
def test_damaged_manifest(tmp_path: Path, text: str) -> None:
    _write(tmp_path, _payload(3))
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(IndexCorruptError, match="damaged"):
        store.read_manifest(tmp_path)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, _payload(3))
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["format_version"] = store.FORMAT_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(IndexStoreError, match="newer"):
        store.read_manifest(tmp_path)


@pytest.mark.parametrize("which", ["index_file", "meta_file"])
def test_truncated_or_altered_shard_file(tmp_path: Path, which: str) -> None:
    m = _write(tmp_path, _payload(20))
    info = m.shards[0]
    path = tmp_path / "shards" / getattr(info, which).name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="damaged"):
        store.load_shard(tmp_path, info)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(IndexCorruptError, match="checksum"):
        store.load_shard(tmp_path, info, verify=True)
    path.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        store.load_shard(tmp_path, info)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    with store.lock_index(tmp_path), pytest.raises(IndexLockedError, match="another process"):  # noqa: SIM117
        with store.lock_index(tmp_path):
            pass
    with store.lock_index(tmp_path):  # released again
        pass


def test_atomic_write_leaves_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("new but")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        store.atomic_write(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_kept_shards_carry_over_and_new_ones_number_after_them(tmp_path: Path) -> None:
    m1 = _write(tmp_path, _payload(4), _payload(3, modality="text"))
    m2 = _write(tmp_path, _payload(6, seed=2), keep=m1.shards)
    assert [s.name for s in m2.shards] == ["image-00000", "text-00000", "image-00001"]
    assert m2.shards[:2] == m1.shards  # same files, same checksums
    for info in m2.shards:
        assert store.load_shard(tmp_path, info, verify=True).metadata.num_rows == info.rows
