"""Small image-caption sets in each layout `load_eval_set` reads, drawn from a generated world."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from xretrieve.train.world import load_labels

#: (image file, its captions): a few captioned images of a world, captions unique in the set.
Pairs = list[tuple[Path, list[str]]]


def world_pairs(world_dir: Path, *, n: int = 12) -> Pairs:
    """The first `n` train images of a world with their captions (several each)."""
    seen: set[str] = set()
    pairs: Pairs = []
    for label in sorted(load_labels(world_dir).values(), key=lambda lab: lab.path):
        if label.split != "train":
            continue
        # Unique caption texts: equal texts would tie, and ties are cut arbitrarily.
        caps = [c for c in label.captions if c not in seen]
        seen.update(caps)
        pairs.append((world_dir / label.path, caps))
        if len(pairs) == n:
            break
    return pairs


def distractor(world_dir: Path) -> Path:
    """A world image that is not among `world_pairs`: a test-split one."""
    return sorted((world_dir / "test").glob("*.png"))[0]


def write_folder(out: Path, pairs: Pairs, extra: Path | None = None) -> Path:
    """Images with .txt sidecars; `extra` is copied without a sidecar."""
    out.mkdir(parents=True)
    for i, (img, caps) in enumerate(pairs):
        shutil.copy(img, out / f"img{i:02d}.png")
        (out / f"img{i:02d}.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    if extra is not None:
        shutil.copy(extra, out / "lonely.png")
    return out


def write_table(
    path: Path,
    pairs: Pairs,
    *,
    delimiter: str = ",",
    header: tuple[str, ...] = ("image", "caption"),
    splits: list[str] | None = None,
    extra: Path | None = None,
    quote: bool = True,
) -> Path:
    """One row per caption, images copied into `images/` beside the file.

    With `quote=False` rows are written as CLIP_benchmark's Flickr files are: commas inside
    captions left unquoted. `splits` gives each image a split (adds a split column).
    """
    folder = path.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for i, (img, caps) in enumerate(pairs):
        name = f"images/img{i:02d}.png"
        shutil.copy(img, path.parent / name)
        for c in caps:
            rows.append([name, c] + ([splits[i]] if splits else []))
    if extra is not None:
        shutil.copy(extra, folder / "lonely.png")
        rows.append(["images/lonely.png", ""] + ([splits[0]] if splits else []))
    head = list(header) + (["split"] if splits else [])
    with open(path, "w", encoding="utf-8", newline="") as f:
        if quote:
            w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
            w.writerow(head)
            w.writerows(rows)
        else:
            f.write(delimiter.join(head) + "\n")
            f.writelines(delimiter.join(r) + "\n" for r in rows)
    return path


def write_coco(path: Path, pairs: Pairs, *, extra: Path | None = None) -> Path:
    """COCO captions: `images` (id, file_name) + `annotations` (image_id, caption)."""
    folder = path.parent / "val2014"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (img, caps) in enumerate(pairs):
        name = f"COCO_val2014_{i:012d}.png"
        shutil.copy(img, folder / name)
        images.append({"id": 100 + i, "file_name": name, "width": 32, "height": 32})
        annotations += [{"id": len(annotations), "image_id": 100 + i, "caption": c} for c in caps]
    if extra is not None:
        shutil.copy(extra, folder / "lonely.png")
        images.append({"id": 999, "file_name": "lonely.png"})
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def write_karpathy(path: Path, pairs: Pairs, splits: list[str]) -> Path:
    """Karpathy's dataset_*.json: images[] with filepath, filename, split and sentences."""
    (path.parent / "val2014").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (img, caps) in enumerate(pairs):
        name = f"k{i:02d}.png"
        shutil.copy(img, path.parent / "val2014" / name)
        sentences = [{"raw": c, "tokens": c.split(), "imgid": i} for c in caps]
        images.append(
            {"filepath": "val2014", "filename": name, "split": splits[i], "sentences": sentences}
        )
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path
