"""Class 1: nothing outside the index folder is written or deleted.

An existing folder that is not an index is refused, symlinks inside an index are never
followed to write or delete (by `index` nor by a plain `search --hybrid`), and the index
itself is left as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sandbox import Sandbox, one_line, tree_state

from xretrieve.errors import IndexCorruptError, NotAnIndexError
from xretrieve.store.safety import check_index_target, open_dir, open_nofollow

TINY = ("--model", "xr-tiny", "--pretrained", "none", "--device", "cpu")


def _project(root: Path) -> Path:
    """A folder someone keeps other things in, with subfolders named like an index's."""
    for sub in ("readers", "shards", "lexical", "src"):
        (root / sub).mkdir(parents=True)
        (root / sub / "keep.txt").write_text(f"mine: {sub}\n")
    (root / "shards" / "image-00000.g1.parquet").write_text("not a shard\n")
    (root / "README.md").write_text("a project\n")
    return root


def _small_media(world_dir: Path, root: Path) -> Path:
    root.mkdir()
    for png in sorted((world_dir / "test").glob("*.png"))[:3]:
        shutil.copy(png, root / png.name)
        txt = png.with_suffix(".txt")
        if txt.exists():
            shutil.copy(txt, root / txt.name)
    return root


def test_index_into_a_folder_that_is_not_an_index_is_refused(
    sandbox: Sandbox, world_dir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    media = _small_media(world_dir, sandbox.work / "media")
    project = _project(sandbox.work / "project")
    before = tree_state(project)
    for target in (project, sandbox.victim):
        r = cli("index", media, "--index", target, *TINY)
        assert r.returncode == 5, r.stderr
        line = one_line(r.stderr)
        assert "holds no xretrieve index" in line and "nothing was written" in line, line
    assert tree_state(project) == before


def test_index_target_rules(sandbox: Sandbox, built_index: Path) -> None:
    w = sandbox.work
    check_index_target(w / "new")  # does not exist
    (w / "empty").mkdir()
    check_index_target(w / "empty")
    check_index_target(built_index)  # an index
    # A first run killed before its first commit: only names an index makes.
    killed = w / "killed"
    (killed / "shards").mkdir(parents=True)
    (killed / ".lock").write_text("1\n")
    (killed / "shards" / "image-00000.g1.parquet").write_bytes(b"x")
    (killed / "shards" / ".image-00000.g1.faiss.abc_123.tmp").write_bytes(b"x")
    check_index_target(killed)
    refused = {
        "victim": sandbox.victim,  # has a manifest.json, but not an xretrieve one
        "project": _project(w / "project"),
        "file": w / "file.txt",
    }
    refused["file"].write_text("x")
    linked = w / "linked"
    (linked).mkdir()
    (linked / "shards").symlink_to(sandbox.victim / "shards")
    refused["linked"] = linked
    stray = w / "stray"
    (stray / "shards").mkdir(parents=True)
    (stray / "shards" / "notes.txt").write_text("x")
    refused["stray"] = stray
    for name, target in refused.items():
        with pytest.raises(NotAnIndexError) as e:
            check_index_target(target)
        assert "\n" not in str(e.value), name


def _copy_index(built_index: Path, dst: Path) -> Path:
    shutil.copytree(built_index, dst, ignore=shutil.ignore_patterns(".lock", "*.pin"))
    return dst


@pytest.mark.parametrize("entry", [".lock", "readers", "shards", "lexical"])
def test_symlinks_inside_an_index_are_never_followed(
    sandbox: Sandbox, built_index: Path, world_dir: Path, cli, entry: str
) -> None:  # type: ignore[no-untyped-def]
    idx = _copy_index(built_index, sandbox.work / "idx")
    # Outside the index: a copy of its own shards, so that a reader that followed the link
    # would find every file it expects there (and a writer something to collect).
    outside = sandbox.work.parent / "outside"
    shutil.copytree(idx / "shards", outside / "shards")
    targets = {
        ".lock": sandbox.victim / "precious.txt",
        "readers": sandbox.victim / "readers",
        "shards": outside / "shards",
        "lexical": sandbox.victim / "lexical",
    }
    link = idx / entry
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists():
        link.unlink()
    link.symlink_to(targets[entry])
    outside_before = tree_state(outside)
    media = _small_media(world_dir, sandbox.work / "media")

    r = cli("search", "red circle", "--index", idx, "--hybrid", "-k", "3", *TINY)
    # .lock is a writer's file only: a search does not open it.
    assert r.returncode == (0 if entry == ".lock" else 5), r.stderr
    if entry != ".lock":
        line = one_line(r.stderr)
        assert "index damaged" in line and "symbolic link" in line, line

    r = cli("index", media, "--index", idx, *TINY)
    assert r.returncode == 5, r.stderr
    line = one_line(r.stderr)
    assert "index damaged" in line and "symbolic link" in line, line

    assert os.readlink(link) == str(targets[entry])  # neither replaced nor removed
    assert tree_state(outside) == outside_before


def test_no_follow_helpers(sandbox: Sandbox) -> None:
    root = sandbox.work / "idx"
    (root / "shards").mkdir(parents=True)
    (root / "readers").symlink_to(sandbox.victim / "readers")
    (root / ".lock").symlink_to(sandbox.victim / "precious.txt")
    os.mkfifo(root / "fifo")
    with pytest.raises(IndexCorruptError, match="symbolic link"):
        open_dir(root, "readers", create=True)
    with pytest.raises(IndexCorruptError, match="symbolic link"):
        open_nofollow(root, "readers/x.pin", os.O_RDWR | os.O_CREAT)
    with pytest.raises(IndexCorruptError, match="symbolic link"):
        open_nofollow(root, ".lock", os.O_RDWR | os.O_CREAT)
    with pytest.raises(IndexCorruptError, match="not a regular file"):
        open_nofollow(root, "fifo", os.O_RDONLY)  # refused at once, never blocks
    with pytest.raises(IndexCorruptError, match="leaves the index"):
        open_nofollow(root, "../victim/precious.txt", os.O_RDONLY)
    fd = open_nofollow(root, "shards/ok.bin", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    assert (root / "shards" / "ok.bin").is_file()
