"""Names and paths inside an index: the naming pattern, no-follow opens, recorded deletions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xretrieve.errors import IndexCorruptError
from xretrieve.store.safety import (
    PIN_FILE,
    SHARD_DIR_FILE,
    check_plain_name,
    check_shard_file,
    check_shard_name,
    folder,
    read_capped,
    unlink_recorded,
)


@pytest.mark.parametrize("name", ["image-00000", "text-00012", "audio-1234567"])
def test_shard_names_the_index_makes(name: str) -> None:
    assert check_shard_name(name, modality=name.split("-")[0]) == name


@pytest.mark.parametrize(
    "name",
    [
        "../../victim/x",
        "/etc/passwd",
        "image-00000/../../x",
        "image-00000\0",
        "image-0000",
        "image-00000 ",
        "Image-00000",
        "image--0001",
        "",
        None,
        12,
        "text-00000",  # another modality's name
        "x" * 10_000,
    ],
)
def test_other_shard_names_are_damage(name: object) -> None:
    with pytest.raises(IndexCorruptError, match="index damaged") as e:
        check_shard_name(name, modality="image")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_shard_file_names() -> None:
    assert check_shard_file("image-00003.g12.faiss", shard="image-00003", kind="faiss") == 12
    assert check_shard_file("text-00000.g1.deleted.npy", shard="text-00000", kind="deleted.npy")
    bad = [
        ("image-00003.g12.faiss", "image-00004", "faiss"),  # another shard's
        ("image-00003.g12.faiss", "image-00003", "parquet"),  # another kind
        ("image-00003.g0.faiss", "image-00003", "faiss"),  # generation 0 is never written
        ("image-00003.g1.faiss/../../x", "image-00003", "faiss"),
        ("/abs/image-00003.g1.faiss", "image-00003", "faiss"),
        ("image-00003.g1.faiss\0", "image-00003", "faiss"),
        (".image-00003.g1.faiss.abc.tmp", "image-00003", "faiss"),  # a temporary
    ]
    for name, shard, kind in bad:
        with pytest.raises(IndexCorruptError, match="index damaged"):
            check_shard_file(name, shard=shard, kind=kind)
    for name in ("a/b", "..", ".", "", "a\0b"):
        with pytest.raises(IndexCorruptError):
            check_plain_name(name)


def test_what_the_garbage_collector_may_remove() -> None:
    owned = [
        "image-00000.g1.faiss",
        "image-00000.g1.faiss.json",
        "image-00000.g1.faiss.rescore.npy",
        "image-00000.g1.parquet",
        "text-00001.g3.deleted.npy",
        ".image-00000.g1.faiss.k2_9xyzq.tmp",
        ".image-00000.g1.parquet.abcdefgh.tmp",
    ]
    assert all(SHARD_DIR_FILE.fullmatch(n) for n in owned)
    foreign = ["precious.txt", "image-00000.g1.faiss.bak", "notes.parquet", ".bashrc", "x.tmp"]
    assert not any(SHARD_DIR_FILE.fullmatch(n) for n in foreign)
    assert PIN_FILE.fullmatch("1234-0123456789ab.pin")
    assert PIN_FILE.fullmatch(".1234-0123456789ab.tmp")
    assert not PIN_FILE.fullmatch("precious.txt")


def test_unlink_recorded_removes_only_owned_regular_files(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (d / "image-00000.g1.faiss").write_text("x")
    (d / "precious.txt").write_text("keep")
    (d / "image-00001.g1.faiss").symlink_to(outside)
    (d / "image-00002.g1.faiss").mkdir()
    with folder(tmp_path, "shards") as fd:
        assert unlink_recorded(fd, "image-00000.g1.faiss", pattern=SHARD_DIR_FILE)
        assert not unlink_recorded(fd, "precious.txt", pattern=SHARD_DIR_FILE)
        assert not unlink_recorded(fd, "image-00001.g1.faiss", pattern=SHARD_DIR_FILE)
        assert not unlink_recorded(fd, "image-00002.g1.faiss", pattern=SHARD_DIR_FILE)
        assert not unlink_recorded(fd, "../outside.txt", pattern=SHARD_DIR_FILE)
    assert sorted(p.name for p in d.iterdir()) == [
        "image-00001.g1.faiss",
        "image-00002.g1.faiss",
        "precious.txt",
    ]
    assert outside.read_text() == "keep"


def test_read_capped(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_bytes(b"x" * 100)
    assert read_capped(tmp_path, "m.json", cap=100) == b"x" * 100
    with pytest.raises(IndexCorruptError, match="more than"):
        read_capped(tmp_path, "m.json", cap=99)
    (tmp_path / "link.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(IndexCorruptError, match="symbolic link"):
        read_capped(tmp_path, "link.json", cap=1000)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(IndexCorruptError, match="not a regular file"):
        read_capped(tmp_path, "fifo.json", cap=1000)
    with pytest.raises(FileNotFoundError):
        read_capped(tmp_path, "missing.json", cap=1000)
