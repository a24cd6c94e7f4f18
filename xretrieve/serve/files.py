"""Opening an indexed file for a client: only items of the index, never outside its media folder.

Rules kept here:

- The file is named by the item's metadata row (found by id), never by anything in the
  request. Its stored relative path must be relative and free of `..`; the media folder is
  the manifest's root.
- The real path (symlinks resolved) must lie inside the real media folder: a symlink in the
  media folder that points elsewhere is refused. The file is opened with `O_NOFOLLOW` on its
  resolved path, must be a regular file (no FIFO, device or folder), and where the OS can
  say which file a descriptor holds (/proc/self/fd), that file must lie inside the folder
  too, so a swap between the check and the open is caught.
- Refusals are `NotFound` (404): a client learns nothing about what lies outside the index.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from xretrieve.serve.errors import NotFound

__all__ = ["OpenedFile", "item_file", "open_in_root", "read_all", "stream"]

_CHUNK = 256 << 10


@dataclass
class OpenedFile:
    """An open regular file inside the media folder."""

    fd: int
    size: int
    mtime_ns: int
    name: str
    media_type: str

    def close(self) -> None:
        """Close the descriptor (again is harmless)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    @property
    def etag(self) -> str:
        """A validator of the file's current bytes: size and modification time."""
        return f'"f{self.size:x}-{self.mtime_ns:x}"'


def item_file(metadata: dict[str, Any], *, for_thumbnail: bool = False) -> str | None:
    """The stored relative path of an item's file (for a thumbnail: the image it shows)."""
    modality = metadata.get("modality")
    if for_thumbnail and modality == "text":
        return metadata.get("image_path")  # the image a caption describes, if any
    if for_thumbnail and modality != "image":
        return None
    raw = metadata.get("path_bytes")  # the exact name when it is not valid UTF-8
    return os.fsdecode(raw) if raw is not None else metadata.get("path")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def open_in_root(root: str, rel: str, *, max_bytes: int) -> OpenedFile:
    """Open the regular file `rel` below `root`, refusing any way out of `root`."""
    missing = NotFound("the item's file is not available")
    parts = PurePosixPath(rel).parts
    if not rel or "\x00" in rel or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise missing
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if not _inside(real, real_root) or real == real_root:
        raise missing
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise missing from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise missing
        with contextlib.suppress(OSError):  # not Linux: the checks above stand alone
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if not _inside(opened, real_root):
                raise missing
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    name = parts[-1]
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/"):
        media_type += "; charset=utf-8"
    return OpenedFile(fd, st.st_size, st.st_mtime_ns, name, media_type)


def read_all(f: OpenedFile) -> bytes:
    """The whole file (at most its size when opened), then closed."""
    try:
        chunks, got = [], 0
        while got < f.size:
            chunk = os.read(f.fd, min(_CHUNK, f.size - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        f.close()


def stream(f: OpenedFile) -> Iterator[bytes]:
    """The file in chunks (no more than its size when opened), closed at the end or on abort."""
    try:
        left = f.size
        while left > 0:
            chunk = os.read(f.fd, min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()
