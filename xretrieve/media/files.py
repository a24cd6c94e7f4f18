"""Reading a file a caller named: a regular file only, and never more than a byte cap.

A query image or sound comes from someone else. `/dev/zero`, a FIFO or a socket would make a
plain `read_bytes()` block or read forever, and a huge file would be read whole before any
decoder could refuse it. So the file is opened non-blocking (a FIFO with no writer does not
hang the open), checked to be a regular file on the open descriptor (no race between check
and read), and read to at most `max_bytes + 1` bytes.
"""

from __future__ import annotations

import os
import stat

from xretrieve._fs import display_path
from xretrieve.errors import MediaError

__all__ = ["MAX_QUERY_FILE_BYTES", "check_regular_file", "read_regular_file"]

#: The largest query file read (images and sounds): far above any real photo or clip.
MAX_QUERY_FILE_BYTES = 256 << 20


def _open(path: str | os.PathLike[str]) -> int:
    label = display_path(path)
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise MediaError(label, "cannot read: no such file") from e
    except IsADirectoryError as e:
        raise MediaError(label, "is a folder, not a file") from e
    except OSError as e:
        raise MediaError(label, f"cannot read: {e.strerror or e}") from e


def _check_stat(st: os.stat_result, label: str, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise MediaError(label, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(label, "not a regular file (a device, FIFO or socket is never read)")
    if st.st_size > max_bytes:
        raise MediaError(label, f"file too large: {st.st_size:,} bytes (limit {max_bytes:,})")


def check_regular_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_QUERY_FILE_BYTES
) -> None:
    """Raise `MediaError` unless `path` is a regular file of at most `max_bytes`."""
    fd = _open(path)
    try:
        _check_stat(os.fstat(fd), display_path(path), max_bytes)
    finally:
        os.close(fd)


def read_regular_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_QUERY_FILE_BYTES
) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is a `MediaError`."""
    label = display_path(path)
    fd = _open(path)
    try:
        _check_stat(os.fstat(fd), label, max_bytes)
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise MediaError(label, f"cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if got > max_bytes:  # the file grew while it was read
        raise MediaError(label, f"file too large: more than {max_bytes:,} bytes")
    return b"".join(chunks)
