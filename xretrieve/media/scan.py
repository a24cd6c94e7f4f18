"""Scanning: the one walk of a media folder that indexing and training both use.

Walking never stops on a bad entry: unreadable folders, symlink loops and undecodable
files are returned as `Problem`s beside the files that are fine.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xretrieve._fs import display_path
from xretrieve._types import Modality
from xretrieve.errors import FolderError, MediaError
from xretrieve.media.audio import AUDIO_EXTS
from xretrieve.media.image import IMAGE_EXTS, PLUGIN_EXTS

__all__ = [
    "CAPTION_EXTS",
    "MAX_CAPTION_BYTES",
    "MediaFile",
    "Problem",
    "Scan",
    "iter_sidecar_pairs",
    "read_captions",
    "scan_folder",
]

CAPTION_EXTS = frozenset({".txt"})
_MODALITY_OF: dict[str, Modality] = {
    **dict.fromkeys(AUDIO_EXTS, "audio"),
    **dict.fromkeys(CAPTION_EXTS, "text"),
    **dict.fromkeys(IMAGE_EXTS, "image"),
}
#: Caption sidecars above this size are not caption files.
MAX_CAPTION_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A file found in the media folder, with what `stat` said of it."""

    fspath: str  # absolute path (a plain string: building 100k Path objects costs seconds)
    rel: str
    modality: Modality
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        """The absolute path as a `Path`."""
        return Path(self.fspath)


@dataclass(frozen=True)
class Problem:
    """A file or folder that was skipped, and why."""

    path: str
    reason: str


@dataclass
class Scan:
    """What a walk of the media folder found."""

    root: Path
    images: list[MediaFile] = field(default_factory=list)
    captions: list[MediaFile] = field(default_factory=list)
    audio: list[MediaFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def scan_folder(root: str | os.PathLike[str]) -> Scan:
    """Walk `root` recursively and classify its files, in sorted order, stat-ing each once.

    Symlinked folders are not followed (so loops cannot happen); symlinked files are.
    Unreadable folders, broken links and formats whose plugin is missing become `Problem`s.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise FolderError(f"media folder not found: {base}")
    if not base.is_dir():
        raise FolderError(f"not a folder: {base}")
    scan = Scan(root=base.resolve())
    stack: list[tuple[str, str]] = [(str(scan.root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            scan.problems.append(Problem(display_path(folder), f"cannot read folder: {e.strerror}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, f"{prefix}{name}/"))
                    continue
            except OSError:
                pass
            ext = os.path.splitext(name)[1].lower()
            modality = _MODALITY_OF.get(ext)
            if modality is None:
                if ext in PLUGIN_EXTS:
                    scan.problems.append(Problem(display_path(entry.path), PLUGIN_EXTS[ext]))
                continue
            try:
                st = entry.stat()  # follows a symlinked file
            except OSError as e:
                scan.problems.append(
                    Problem(display_path(entry.path), f"cannot stat: {e.strerror}")
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                if not stat.S_ISDIR(st.st_mode):
                    scan.problems.append(Problem(display_path(entry.path), "not a regular file"))
                continue
            item = MediaFile(entry.path, prefix + name, modality, st.st_size, st.st_mtime_ns)
            {"image": scan.images, "text": scan.captions, "audio": scan.audio}[modality].append(
                item
            )
        stack.extend(reversed(subdirs))
    return scan


def read_captions(data: bytes, *, path: object = "<bytes>") -> list[str]:
    """Captions of a sidecar file: its non-blank lines, stripped (UTF-8, BOM allowed)."""
    if len(data) > MAX_CAPTION_BYTES:
        raise MediaError(path, f"caption file larger than {MAX_CAPTION_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MediaError(path, f"caption file is not UTF-8 ({e.reason} at byte {e.start})") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def iter_sidecar_pairs(scan: Scan) -> Iterator[tuple[MediaFile, MediaFile | None]]:
    """Each caption file with the image it describes (same folder and stem), or None."""
    by_stem = {os.path.splitext(m.rel)[0]: m for m in scan.images}
    for cap in scan.captions:
        yield cap, by_stem.get(os.path.splitext(cap.rel)[0])
