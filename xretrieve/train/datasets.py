"""Image-caption evaluation sets: a captioned folder, a CSV/TSV file, or a COCO / Karpathy JSON.

Rules every loader keeps:

- the result is an `EvalSet`: each image once (in the order first listed), every caption, and
  for each caption the index of its image; an image may have no caption: it stays in the
  gallery as a distractor;
- every listed image exists as a file when loading ends (a missing one is a `MediaError`
  naming the image and where it was listed); images are decoded later, while encoding;
- layouts follow CLIP_benchmark's: ``flickr30k_test_karpathy.txt`` is a header line and then
  ``IMAGE,caption`` rows whose captions may hold unquoted commas, images relative to the file;
  ``coco_test_karpathy.json`` is a COCO captions file (``images`` + ``annotations``);
- a split is chosen where the layout names splits: a ``split`` column, Karpathy's
  ``images[].split``, a split file in a folder (``*_test_karpathy.txt``, ``test.csv``...) or
  a split subfolder (``test/``). A layout that names several splits needs one chosen; a file
  that names none may be chosen as the split it is named after (``coco_test_karpathy.json``);
- errors are typed and one line: `FolderError` (nothing there), `MediaError` (a file that
  cannot be read or parsed, named with its line or JSON field), `InputError` (a split that
  does not exist). Messages name files, never command-line flags.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xretrieve._fs import display_path
from xretrieve._types import Ids
from xretrieve.errors import FolderError, InputError, MediaError
from xretrieve.media.files import read_regular_file
from xretrieve.media.scan import (
    MAX_CAPTION_BYTES,
    iter_sidecar_pairs,
    read_captions,
    scan_folder,
)

__all__ = ["EvalSet", "Layout", "load_eval_set"]

Layout = Literal["folder", "csv", "coco", "karpathy"]

_TABLE_EXTS = (".csv", ".tsv", ".txt")
_IMAGE_COLUMNS = ("image", "filepath", "file_name", "filename", "image_path", "path")
_CAPTION_COLUMNS = ("caption", "title", "text", "sentence", "raw")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: Annotation files are read whole; dataset_coco.json (all of COCO) is about 140 MB.
_MAX_ANNOTATION_BYTES = 1 << 30


@dataclass(frozen=True)
class EvalSet:
    """An image-caption set: image paths, captions, and the image each caption describes."""

    source: Path
    layout: Layout
    split: str | None
    images: list[Path]
    captions: list[str]
    caption_image: Ids  # (n_captions,) int64, indices into `images`
    skipped: tuple[str, ...] = ()  # "path: reason" for files a folder scan passed over

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def captions_per_image(self) -> Ids:
        """How many captions each image has (0 for a distractor)."""
        counts: Ids = np.bincount(self.caption_image, minlength=self.n_images).astype(np.int64)
        return counts


def _build(
    source: Path,
    layout: Layout,
    split: str | None,
    grouped: dict[Path, list[str]],
    skipped: Sequence[str] = (),
) -> EvalSet:
    """An `EvalSet` from {image: its captions}, in insertion order."""
    images = list(grouped)
    captions = [c for caps in grouped.values() for c in caps]
    if not captions:
        where = f"{display_path(source)}" + (f" (split {split!r})" if split else "")
        raise FolderError(f"no captions found in {where}")
    owner = np.repeat(np.arange(len(images), dtype=np.int64), [len(c) for c in grouped.values()])
    return EvalSet(source, layout, split, images, captions, owner, tuple(skipped))


def _require_file(image: Path, where: str) -> None:
    if not image.is_file():
        raise MediaError(display_path(image), f"image not found (listed at {where})")


def _has_split_token(path: Path, split: str) -> bool:
    """Whether the file's name names `split` as a word (coco_test_karpathy.json: "test")."""
    return split.lower() in re.split(r"[^0-9a-z]+", path.stem.lower())


def _choose_split(label: str, available: Iterable[str], split: str | None) -> str:
    names = sorted(set(available))
    if split is None:
        raise InputError(
            f"{label} names splits ({', '.join(names)}): choose one",
            code=InputError.SPLIT_UNCHOSEN,
        )
    if split not in names:
        raise InputError(f"{label} has no split {split!r}; its splits: {', '.join(names)}")
    return split


def _no_splits(path: Path, split: str | None) -> None:
    if split is not None and not _has_split_token(path, split):
        raise InputError(
            f"{display_path(path)} names no splits, and its name does not say it is split {split!r}"
        )


def _read(path: Path) -> bytes:
    return read_regular_file(path, max_bytes=_MAX_ANNOTATION_BYTES)


# --- folder of images with .txt sidecars -------------------------------------------------


def _split_file(folder: Path, split: str) -> Path | None:
    """The one annotation file in `folder` named for `split`, if any."""
    found = sorted(
        p
        for pattern in (f"*_{split}_karpathy.*", f"{split}.*")
        for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in (*_TABLE_EXTS, ".json")
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{display_path(folder)} holds several files for split {split!r}: {names}")
    return found[0] if found else None


def _load_folder(folder: Path, split: str | None) -> EvalSet:
    root = folder / split if split is not None else folder
    if split is not None and not root.is_dir():
        raise InputError(
            f"{display_path(folder)} has no split {split!r}: no {split}/ subfolder and no "
            f"annotation file named for it (*_{split}_karpathy.txt, {split}.csv...)"
        )
    scan = scan_folder(root)
    grouped: dict[Path, list[str]] = {m.path: [] for m in scan.images}
    for cap, image in iter_sidecar_pairs(scan):
        if image is not None:
            data = read_regular_file(cap.fspath, max_bytes=MAX_CAPTION_BYTES)
            grouped[image.path] = read_captions(data, path=display_path(cap.fspath))
    if not any(grouped.values()):
        hint = ""
        named = sorted(p.name for p in root.glob("*_karpathy.*"))
        if named:
            hint = f"; it holds annotation files ({', '.join(named)}): choose a split"
        raise FolderError(
            f"no captioned images (image + .txt sidecar) in {display_path(root)}{hint}",
            code=FolderError.SPLIT_UNCHOSEN if named else None,
        )
    skipped = [f"{p.path}: {p.reason}" for p in scan.problems]
    return _build(root, "folder", split, grouped, skipped)


# --- CSV / TSV: image,caption rows -------------------------------------------------------


def _column(header: list[str], names: Sequence[str]) -> int | None:
    return next((header.index(n) for n in names if n in header), None)


def _delimiter(path: Path, first_line: str) -> str:
    ext = path.suffix.lower()
    if ext == ".tsv":
        return "\t"
    if ext == ".csv":
        return ","
    return "\t" if "\t" in first_line else ","


def _table_rows(
    reader: Any, label: str, width: int, cap_col: int, delim: str
) -> list[tuple[int, list[str]]]:
    """The non-blank rows after the header, each with its line number."""
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            if len(row) > width and cap_col == width - 1:
                # CLIP_benchmark's Flickr files leave commas inside captions unquoted.
                row = [*row[:cap_col], delim.join(row[cap_col:])]
            if len(row) != width:
                raise MediaError(
                    f"{label}:{reader.line_num}", f"expected {width} fields, found {len(row)}"
                )
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise MediaError(f"{label}:{reader.line_num}", f"cannot parse ({e})") from e
    return rows


def _load_table(path: Path, split: str | None, base: Path) -> EvalSet:
    label = display_path(path)
    try:
        text = _read(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MediaError(label, f"not UTF-8 ({e.reason} at byte {e.start})") from e
    delim = _delimiter(path, text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    header = [h.strip().lower() for h in next(reader, [])]
    img_col, cap_col = _column(header, _IMAGE_COLUMNS), _column(header, _CAPTION_COLUMNS)
    if img_col is None or cap_col is None:
        raise MediaError(
            f"{label}:1",
            f"the header must name an image column ({', '.join(_IMAGE_COLUMNS)}) and a caption "
            f"column ({', '.join(_CAPTION_COLUMNS)}); found {header}",
        )
    split_col = _column(header, ("split",))
    rows = _table_rows(reader, label, len(header), cap_col, delim)
    if split_col is None:
        _no_splits(path, split)
    else:
        chosen = _choose_split(label, (r[split_col].strip() for _, r in rows), split)
        rows = [(n, r) for n, r in rows if r[split_col].strip() == chosen]
    grouped: dict[Path, list[str]] = {}
    for line, row in rows:
        name = row[img_col].strip()
        if not name:
            raise MediaError(f"{label}:{line}", "empty image field")
        image = base / name
        caps = grouped.get(image)
        if caps is None:
            _require_file(image, f"{label}:{line}")
            caps = grouped[image] = []
        caption = row[cap_col].strip()
        if caption:  # a row with an empty caption lists a distractor image
            caps.append(caption)
    return _build(path, "csv", split, grouped)


# --- COCO captions and Karpathy JSON -----------------------------------------------------


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MediaError(where, f"missing or malformed field {key!r}")
    return value


def _load_coco(path: Path, doc: dict[str, Any], split: str | None, base: Path) -> EvalSet:
    label = display_path(path)
    _no_splits(path, split)
    images = _field(doc, "images", list, label)
    annotations = _field(doc, "annotations", list, label)
    by_id: dict[int | str, Path] = {}
    grouped: dict[Path, list[str]] = {}
    for i, entry in enumerate(images):
        where = f"{label}: images[{i}]"
        image = base / _field(entry, "file_name", str, where)
        _require_file(image, where)
        by_id[_field(entry, "id", (int, str), where)] = image
        grouped.setdefault(image, [])
    for j, ann in enumerate(annotations):
        where = f"{label}: annotations[{j}]"
        image_id = _field(ann, "image_id", (int, str), where)
        caption = _field(ann, "caption", str, where).strip()
        if image_id not in by_id:
            raise MediaError(where, f"image_id {image_id!r} is not in images")
        if caption:
            grouped[by_id[image_id]].append(caption)
    return _build(path, "coco", split, grouped)


def _karpathy_image(entry: dict[str, Any], base: Path, where: str) -> Path:
    name = _field(entry, "filename", str, where)
    folder = entry.get("filepath")
    # dataset_coco.json keeps images under their COCO folder (filepath "val2014").
    if isinstance(folder, str) and folder and (base / folder / name).is_file():
        return base / folder / name
    return base / name


def _load_karpathy(path: Path, doc: dict[str, Any], split: str | None, base: Path) -> EvalSet:
    label = display_path(path)
    images = _field(doc, "images", list, label)
    splits = [_field(e, "split", str, f"{label}: images[{i}]") for i, e in enumerate(images)]
    chosen = _choose_split(label, splits, split)
    grouped: dict[Path, list[str]] = {}
    for i, entry in enumerate(images):
        if splits[i] != chosen:
            continue
        where = f"{label}: images[{i}]"
        image = _karpathy_image(entry, base, where)
        _require_file(image, where)
        caps = grouped.setdefault(image, [])
        for j, sentence in enumerate(_field(entry, "sentences", list, where)):
            raw = _field(sentence, "raw", str, f"{where}.sentences[{j}]").strip()
            if raw:
                caps.append(raw)
    return _build(path, "karpathy", chosen, grouped)


def _load_json(path: Path, split: str | None, base: Path) -> EvalSet:
    label = display_path(path)
    try:
        doc = json.loads(_read(path))
    except UnicodeDecodeError as e:
        raise MediaError(label, f"not UTF-8 ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise MediaError(
            f"{label}:{e.lineno}", f"not valid JSON ({e.msg}, column {e.colno})"
        ) from e
    if isinstance(doc, dict) and "annotations" in doc:
        return _load_coco(path, doc, split, base)
    entries = doc.get("images") if isinstance(doc, dict) else None
    if (
        isinstance(entries, list)
        and entries
        and isinstance(entries[0], dict)
        and ("sentences" in entries[0])
    ):
        return _load_karpathy(path, doc, split, base)
    raise MediaError(
        label,
        "neither COCO captions (images + annotations) nor Karpathy (images[] with sentences "
        "and split)",
    )


# --- entry point -------------------------------------------------------------------------


def load_eval_set(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> EvalSet:
    """Read an image-caption set from a folder, a CSV/TSV file or a COCO / Karpathy JSON.

    `images` is the folder image names are relative to (default: the annotation file's own
    folder); it does not apply to a captioned folder, whose images lie beside their captions.
    """
    if split is not None and (not _SPLIT_NAME.fullmatch(split) or set(split) == {"."}):
        raise InputError(f"a split is a plain name such as test, got {split!r}")
    src = Path(path).expanduser()
    if not src.exists():
        raise FolderError(f"evaluation data not found: {display_path(src)}")
    if images is not None:
        base = Path(images).expanduser()
        if not base.is_dir():
            raise FolderError(f"image folder not found: {display_path(base)}")
    if src.is_dir():
        named = _split_file(src, split) if split is not None else None
        if named is None:
            if images is not None:
                raise InputError(
                    f"{display_path(src)} is a captioned folder: its images lie beside their "
                    "captions, so no separate image folder applies"
                )
            return _load_folder(src, split)
        src = named
    base = Path(images).expanduser() if images is not None else src.parent
    ext = src.suffix.lower()
    if ext == ".json":
        return _load_json(src, split, base)
    if ext in _TABLE_EXTS:
        return _load_table(src, split, base)
    raise MediaError(
        display_path(src),
        "not an evaluation set: expected a folder, a .csv/.tsv/.txt table or a .json file",
    )
