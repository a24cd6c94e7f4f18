"""Paths inside an index: only names the index makes, never a symlink followed to write or delete.

An index folder may come from someone else, so nothing in it is trusted as a path:

- A file or shard name read from a manifest is used only if it matches the index's own naming
  pattern (`check_shard_name`, `check_shard_file`): a plain name, no separator, no `..`, no
  NUL, so it cannot resolve outside `shards/`. Anything else is damage (`IndexCorruptError`),
  reported without touching, sizing or naming any other file.
- Folders below the index root are walked one component at a time with `O_NOFOLLOW`
  (`open_dir`): a symlinked `shards/`, `readers/` or `lexical/` is damage, never followed.
  Files are opened with `O_NOFOLLOW | O_NONBLOCK` and must be regular files (`open_nofollow`):
  a symlinked `.lock` is refused rather than truncating its target, a FIFO never blocks.
- A deletion removes only a regular file whose name the index itself makes
  (`unlink_recorded`), relative to a folder descriptor opened as above.
- A folder that is neither new, empty nor an index is not written into (`check_index_target`):
  an existing project with a `shards/` folder is refused, not garbage-collected.

The index root itself is the caller's choice and may be a symlink; everything below it is not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from xretrieve._types import MODALITIES
from xretrieve.errors import IndexCorruptError, NotAnIndexError

__all__ = [
    "INDEX_ENTRIES",
    "MANIFEST_MAX_BYTES",
    "PIN_FILE",
    "SHARD_DIR_FILE",
    "check_index_target",
    "check_plain_name",
    "check_shard_file",
    "check_shard_name",
    "folder",
    "open_dir",
    "open_nofollow",
    "read_capped",
    "unlink_recorded",
]

#: A manifest larger than this is not one xretrieve wrote (~700 bytes a shard).
MANIFEST_MAX_BYTES = 64 << 20

_MOD = "|".join(MODALITIES)
_SHARD = rf"(?:{_MOD})-[0-9]{{5,12}}"
_SHARD_NAME = re.compile(rf"(?P<modality>{_MOD})-[0-9]{{5,12}}")
# `<shard>.g<generation>.<kind>`: what `Writer` names a shard's files.
_SHARD_FILE = re.compile(
    rf"(?P<shard>{_SHARD})\.g(?P<gen>[1-9][0-9]{{0,17}})\.(?P<kind>faiss|parquet|deleted\.npy)"
)
#: Every name the index writes under `shards/`: shard files, the two side files of a FAISS
#: file (`.faiss.json`, `.faiss.rescore.npy`), and `atomic_write`'s temporaries of them.
SHARD_DIR_FILE = re.compile(
    rf"\.?{_SHARD}\.g[1-9][0-9]{{0,17}}"
    r"\.(?:faiss|faiss\.json|faiss\.rescore\.npy|parquet|deleted\.npy)"
    r"(?:\.[A-Za-z0-9_]{1,16}\.tmp)?"
)
#: A reader's pin under `readers/` (`<pid>-<12 hex>.pin`) and its temporary.
PIN_FILE = re.compile(r"[0-9]{1,10}-[0-9a-f]{12}\.pin|\.[0-9]{1,10}-[0-9a-f]{12}\.tmp")
# Names the index makes at its root (besides its three folders): the manifest and its
# temporaries, the writer lock, `add_captions`' scratch vectors.
_ROOT_FILE = re.compile(
    r"manifest\.json|\.manifest\.json\.[A-Za-z0-9_]{1,16}\.tmp|\.lock|\.corpus-[A-Za-z0-9_]{1,16}\.f32\.tmp"
)
#: The folders of an index (see `xretrieve.store.manifest`).
INDEX_ENTRIES = ("shards", "readers", "lexical")
# A lexical cache folder (`<modality>-<16 hex>`) or its temporary (`mkdtemp`).
_LEXICAL_ENTRY = re.compile(rf"\.?(?:{_MOD})-[0-9a-f]{{16}}(?:\.[A-Za-z0-9_]{{1,16}})?")


def _shown(name: object) -> str:
    """A name for an error message: quoted, escaped, cut short (it may be hostile)."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _damaged(what: str) -> IndexCorruptError:
    return IndexCorruptError(f"index damaged: {what}")


def check_plain_name(name: object, *, what: str = "file name") -> str:
    """`name` if it is one plain file name (no separator, `..`, NUL or leading `/`)."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or len(name) > 255
    ):
        raise _damaged(f"{what} {_shown(name)} is not a plain file name")
    return name


def check_shard_name(name: object, *, modality: object) -> str:
    """`name` if it is a shard name this index makes for `modality` (`image-00012`)."""
    check_plain_name(name, what="shard name")
    m = _SHARD_NAME.fullmatch(str(name))
    if m is None or m.group("modality") != modality:
        raise _damaged(f"shard name {_shown(name)} is not one this index makes for {modality!r}")
    return str(name)


def check_shard_file(name: object, *, shard: str, kind: str) -> int:
    """The generation in `name` if it is `<shard>.g<N>.<kind>`, the name `Writer` gives a file."""
    check_plain_name(name)
    m = _SHARD_FILE.fullmatch(str(name))
    if m is None or m.group("shard") != shard or m.group("kind") != kind:
        raise _damaged(f"file name {_shown(name)} is not a {kind} file of shard {shard}")
    return int(m.group("gen"))


# ---------------------------------------------------------------------------------------------
# No-follow access below the index root


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    for p in parts:
        if p == ".." or p.startswith("/"):
            raise _damaged(f"{_shown(str(rel))} leaves the index")
    return parts


def _loop_error(rel: object, e: OSError) -> IndexCorruptError:
    return _damaged(
        f"{rel} is a symbolic link or not a folder (refusing to follow it: {e.strerror})"
    )


def open_dir(
    root: str | os.PathLike[str], rel: str | os.PathLike[str] = "", *, create: bool = False
) -> int:
    """A descriptor of folder `root/rel`, every component below `root` opened without following
    a symlink (created, mode 0o755, when `create`); the caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in _parts(rel):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _loop_error(os.path.join(root, rel), e) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder(
    root: str | os.PathLike[str], rel: str | os.PathLike[str] = "", *, create: bool = False
) -> Iterator[int]:
    """`open_dir` as a context manager."""
    fd = open_dir(root, rel, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def open_nofollow(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], flags: int, mode: int = 0o644
) -> int:
    """Open regular file `root/rel` with `flags`, following no symlink below `root`.

    A symlink, FIFO, device or folder there is damage (`IndexCorruptError`); a missing file
    raises `FileNotFoundError` as `os.open` does. The caller closes the descriptor.
    """
    parts = _parts(rel)
    if not parts:
        raise _damaged(f"{_shown(str(rel))} is not a file name")
    with folder(root, os.path.join(*parts[:-1]) if len(parts) > 1 else "") as dfd:
        try:
            fd = os.open(
                parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd
            )
        except OSError as e:
            if e.errno == errno.ELOOP:
                where = os.path.join(root, rel)
                raise _damaged(f"{where} is a symbolic link (refusing to follow it)") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _damaged(f"{os.path.join(root, rel)} is not a regular file")
    return fd


def read_capped(root: str | os.PathLike[str], rel: str | os.PathLike[str], *, cap: int) -> bytes:
    """The bytes of regular file `root/rel` (no symlink followed), refused past `cap` bytes."""
    fd = open_nofollow(root, rel, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            where = os.path.join(root, rel)
            raise _damaged(f"{where} holds {size} bytes, more than the {cap} an index writes")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            if size < -cap:  # grew while read
                raise _damaged(f"{os.path.join(root, rel)} keeps growing")
        return b"".join(chunks)
    finally:
        os.close(fd)


def unlink_recorded(dir_fd: int, name: str, *, pattern: re.Pattern[str]) -> bool:
    """Remove `name` from the folder `dir_fd` only if the index makes that name (`pattern`)
    and it is a regular file (not a symlink); True if it was removed."""
    if "/" in name or "\0" in name or not pattern.fullmatch(name):
        return False
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return False
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The folder an index may be written into


def _is_index_made(index_dir: Path) -> bool:
    """Whether every entry of `index_dir` (and of its folders) is one an index makes."""
    try:
        with folder(index_dir) as fd:
            names = os.listdir(fd)
            for name in names:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if name in INDEX_ENTRIES:
                    if not stat.S_ISDIR(st.st_mode):
                        return False
                    with folder(index_dir, name) as sub:
                        inner = os.listdir(sub)
                    pattern = {"shards": SHARD_DIR_FILE, "readers": PIN_FILE}.get(
                        name, _LEXICAL_ENTRY
                    )
                    if not all(pattern.fullmatch(n) for n in inner):
                        return False
                elif not (stat.S_ISREG(st.st_mode) and _ROOT_FILE.fullmatch(name)):
                    return False
    except (OSError, IndexCorruptError):
        return False
    return True


def _says_index(index_dir: Path) -> bool:
    """Whether `index_dir/manifest.json` is a regular file that calls itself an xretrieve index."""
    try:
        data = json.loads(read_capped(index_dir, "manifest.json", cap=MANIFEST_MAX_BYTES))
    except (OSError, ValueError, RecursionError, IndexCorruptError):
        return False
    return isinstance(data, dict) and data.get("format") == "xretrieve-index"


def check_index_target(index_dir: str | os.PathLike[str]) -> None:
    """Refuse with `NotAnIndexError` a folder an index must not be written into.

    An index may be written into a folder that does not exist yet, an empty one, one whose
    manifest says it is an xretrieve index, or one holding only what an index makes (a first
    run killed before its first commit). Any other folder holds someone's files: writing an
    index there would collect them as garbage.
    """
    d = Path(index_dir).expanduser()
    try:
        st = d.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise NotAnIndexError(f"{d} cannot be used as an index folder: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise NotAnIndexError(f"{d} exists and is not a folder; choose a new or empty folder")
    if _says_index(d) or _is_index_made(d):
        return
    raise NotAnIndexError(
        f"{d} is not empty and holds no xretrieve index; nothing was written: "
        "choose a new or empty folder for the index"
    )
