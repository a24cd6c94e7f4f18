"""Training data, found through the one scanner that indexing uses (`xretrieve.media.scan`).

Rules every training set keeps:

- files come from `scan_folder`, in sorted path order (component by component, as
  ``sorted(Path.rglob("*"))`` gives), and carry the path they have under the folder given;
- a file's captions are the non-blank, stripped lines of the ``.txt`` with the same stem in
  the same folder, read by `read_captions` (UTF-8, BOM allowed); a sidecar that cannot be read
  raises `MediaError`, a missing one means no captions;
- a world folder (with ``world.json``) given as training data means its ``train/`` split, so
  evaluation on ``test/`` stays fair (`training_split`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from xretrieve.errors import FolderError, MediaError
from xretrieve.media.scan import MediaFile, Scan, read_captions, scan_folder

__all__ = ["Sidecars", "path_order", "scan_training_folder", "training_split"]

_SIDECAR = ".txt"


def training_split(data_dir: str | os.PathLike[str]) -> Path:
    """`data_dir`, or its ``train/`` split when it is a world folder."""
    root = Path(data_dir)
    if (root / "world.json").is_file() and (root / "train").is_dir():
        return root / "train"
    return root


def scan_training_folder(root: Path) -> Scan:
    """The scan of a training data folder; a missing folder is a `FolderError`."""
    if not root.is_dir():
        raise FolderError(f"training data folder not found: {root}")
    return scan_folder(root)


def path_order(files: Iterable[MediaFile]) -> list[MediaFile]:
    """`files` sorted by their path under the scanned folder, component by component."""
    return sorted(files, key=lambda m: m.rel.split("/"))


class Sidecars:
    """The caption sidecars of one scan, looked up by the stem of the file they describe."""

    def __init__(self, root: Path, scan: Scan) -> None:
        self.root = root
        self.scan = scan
        # Exactly "<stem>.txt": the sidecar of clip.wav is clip.txt, not clip.TXT.
        self._by_stem = {
            c.rel[: -len(_SIDECAR)]: c for c in scan.captions if c.rel.endswith(_SIDECAR)
        }

    def path(self, rel: str) -> Path:
        """Where a scanned file lies, under the folder as it was given."""
        return self.root / rel

    def captions(self, rel: str) -> list[str]:
        """Captions of the file at `rel` (its sidecar's lines); [] when it has no sidecar."""
        side = self._by_stem.get(os.path.splitext(rel)[0])
        if side is None:
            return []
        path = self.path(side.rel)
        try:
            data = side.path.read_bytes()
        except OSError as e:
            raise MediaError(path, f"cannot read caption file ({e.strerror or e})") from e
        return read_captions(data, path=path)
