"""Atomic file writes: what every on-disk writer of xretrieve goes through.

A file is written under a temporary name in its own folder, flushed and fsynced, renamed
over its final name, and the folder is fsynced so the rename itself survives a crash. A
reader therefore sees the old file or the new one, never half of either. `sha256_file` is
the one content hash of a file that every reader checks its files with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "display_path",
    "fsync_dir",
    "path_bytes",
    "sha256_file",
]


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (best effort where the OS refuses)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def display_path(p: str | os.PathLike[str]) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes shown as \\xNN)."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def path_bytes(p: str) -> bytes | None:
    """The raw bytes of a path when `display_path` cannot give it back exactly, else None."""
    raw = os.fsencode(p)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
