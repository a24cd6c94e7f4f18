"""A deterministic synthetic world: compositional scenes of shapes with paraphrased captions.

Each image holds one or two objects; an object is a size, a colour, a shape and a quadrant.
Captions say the same thing through several templates and synonyms, so a model has to bind
attributes to objects rather than match strings. Relevance is exact: two items are relevant to
each other when their sets of object concepts are equal.

With `serials=True` every scene also gets a unique serial number (``SN-48213``) at the end of
each of its captions and in its file name (``test/000123-SN-48213.png``): a rare word no
model can read from the pixels, which only lexical search can match. Serials come from
their own random stream, so the scenes, images and captions are those of the same world
without serials; without the option the output is byte for byte what it always was.

Layout written by `make_world`::

    OUT/world.json            format, parameters, vocabularies, counts
    OUT/labels.jsonl          one line per image: path, split, sorted concepts, captions
    OUT/train/000000.png      + 000000.txt (several paraphrases, one per line)
    OUT/test/000123.png       + 000123.txt (one caption)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xretrieve.errors import FolderError, InputError

__all__ = [
    "COLOURS",
    "FORMAT_VERSION",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Label",
    "SceneObject",
    "WorldInfo",
    "concept_key",
    "load_labels",
    "make_world",
]

FORMAT_VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "purple": (145, 50, 190),
}
SIZES = ("small", "large")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_VERTICAL_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
# Object radius as a fraction of the image side; jitter is applied on top.
_RADIUS = {"small": 0.085, "large": 0.155}
_SUPERSAMPLE = 4
_TRAIN_CAPTIONS = 3
_NOISE_STD = 5.0


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: what it is and where it sits."""

    shape: str
    colour: str
    size: str
    position: str

    @property
    def concept(self) -> str:
        return f"{self.size} {self.colour} {self.shape} {self.position}"


@dataclass(frozen=True)
class Label:
    """Ground truth for one image: its objects' concepts and its captions."""

    path: str
    split: str
    concepts: tuple[str, ...]
    captions: tuple[str, ...]
    serial: str | None = None  # the scene's serial number, in worlds made with serials


@dataclass(frozen=True)
class WorldInfo:
    """What `make_world` wrote, and where."""

    root: Path
    n: int
    seed: int
    image_size: int
    n_train: int
    n_test: int

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.jsonl"


def concept_key(label: Label) -> frozenset[str]:
    """The relevance key of a label: the set of its object concepts."""
    return frozenset(label.concepts)


def sample_scene(rng: np.random.Generator) -> tuple[SceneObject, ...]:
    """Draw one or two objects; two objects always sit in different quadrants."""
    count = 1 + int(rng.integers(2))
    quadrants = rng.permutation(len(POSITIONS))[:count]
    colours = list(COLOURS)
    return tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=colours[int(rng.integers(len(colours)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            position=POSITIONS[int(q)],
        )
        for q in quadrants
    )


def _position_words(position: str, rng: np.random.Generator) -> str:
    vertical, horizontal = position.split("-")
    words = _VERTICAL_WORDS[vertical]
    return f"{words[int(rng.integers(len(words)))]} {horizontal}"


def _size_word(size: str, rng: np.random.Generator) -> str:
    words = _SIZE_WORDS[size]
    return words[int(rng.integers(len(words)))]


def _phrase(obj: SceneObject, template: int, rng: np.random.Generator) -> str:
    size = _size_word(obj.size, rng)
    where = _position_words(obj.position, rng)
    if template == 0:
        return f"a {size} {obj.colour} {obj.shape} in the {where}"
    if template == 1:
        return f"{where}: a {size} {obj.colour} {obj.shape}"
    if template == 2:
        return f"a {obj.colour} {obj.shape}, {size}, at the {where}"
    return f"in the {where} corner a {size} {obj.colour} {obj.shape}"


_N_TEMPLATES = 4


def make_caption(objects: Iterable[SceneObject], rng: np.random.Generator) -> str:
    """One caption for a scene: a random template, synonyms, and objects in random order."""
    objs = list(objects)
    order = rng.permutation(len(objs))
    template = int(rng.integers(_N_TEMPLATES))
    body = " and ".join(_phrase(objs[int(i)], template, rng) for i in order)
    return f"there is {body}" if template == 2 else body


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Polygon vertices of a shape centred at (cx, cy) with outer radius r, rotated by angle."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
        pts = [(x * 0.85, y * 0.85) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        pts = [(x * 1.1, y * 1.1 + 0.15) for x, y in pts]
    elif shape == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.15, 0.48)
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        pts = [(rr * math.cos(a), rr * math.sin(a)) for rr, a in zip(radii, angles, strict=True)]
    elif shape == "cross":
        a, b = 0.95, 0.32
        pts = [(b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a)]
        pts += [(-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b), (-b, -a)]
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        xs = 16 * np.sin(t) ** 3 / 16
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
        pts = [(float(x), float(y) + 0.1) for x, y in zip(xs, ys, strict=True)]
    else:
        raise InputError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation light or dark backdrop (flat, gradient, or striped) as float (H, W, 3)."""
    # Low saturation keeps the backdrop from ever passing for an object colour.
    dark = bool(rng.integers(2))
    base = rng.uniform(20, 80) if dark else rng.uniform(170, 235)
    tint = rng.uniform(-1.0, 1.0, size=3) * (8.0 if dark else 18.0)
    c0 = base + tint
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    img = np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    if kind >= 1:
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)
        delta = rng.uniform(-35, 35, size=1) + rng.uniform(-10, 10, size=3)
        img = img + ramp[..., None] * delta
    if kind == 2:
        period = rng.uniform(4, 12)
        phi = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * (xx if rng.integers(2) else yy) * size / period + phi)
        img = img + stripes[..., None] * rng.uniform(4, 10)
    return img


def render_scene(
    objects: Iterable[SceneObject], rng: np.random.Generator, *, image_size: int
) -> Image.Image:
    """Draw a scene: backdrop, anti-aliased jittered objects, pixel noise."""
    img = _background(rng, image_size)
    big = image_size * _SUPERSAMPLE
    half = big / 2
    for obj in objects:
        r = _RADIUS[obj.size] * big * rng.uniform(0.88, 1.12)
        vertical, horizontal = obj.position.split("-")
        x0 = 0.0 if horizontal == "left" else half
        y0 = 0.0 if vertical == "top" else half
        margin = r * 1.2 + 0.03 * big
        cx = rng.uniform(x0 + margin, x0 + half - margin)
        cy = rng.uniform(y0 + margin, y0 + half - margin)
        angle = rng.uniform(-0.5, 0.5)
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, r, angle), fill=255)
        alpha = np.asarray(mask.resize((image_size, image_size), Image.Resampling.BOX))
        alpha = alpha.astype(np.float32)[..., None] / 255.0
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32) + rng.uniform(-12, 12, size=3)
        img = img * (1.0 - alpha) + colour * alpha
    img = img + rng.normal(0.0, _NOISE_STD, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")


def _split_of(n: int, seed: int, test_fraction: float) -> np.ndarray:
    n_test = round(n * test_fraction)
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng([seed, 0x5E57]).permutation(n)[:n_test]] = True
    return is_test


def _serials(n: int, seed: int) -> list[str]:
    """n distinct serial numbers ("SN-48213"), from a stream of their own."""
    digits = max(5, len(str(10 * n)))
    low = 10 ** (digits - 1)
    drawn = np.random.default_rng([seed, 0x5E71A1]).choice(9 * low, size=n, replace=False)
    return [f"SN-{low + int(x)}" for x in drawn]


def _make_one(args: tuple[int, int, int, bool, str, str | None]) -> dict[str, object]:
    index, seed, image_size, is_test, root, serial = args
    # One generator per image: output does not depend on worker count or order.
    rng = np.random.default_rng([seed, index])
    objects = sample_scene(rng)
    image = render_scene(objects, rng, image_size=image_size)
    n_caps = 1 if is_test else _TRAIN_CAPTIONS
    captions = [make_caption(objects, rng) for _ in range(n_caps)]
    split = "test" if is_test else "train"
    rel = f"{split}/{index:06d}.png"
    if serial is not None:
        captions = [f"{c} {serial}" for c in captions]
        rel = f"{split}/{index:06d}-{serial}.png"
    image.save(Path(root) / rel, format="PNG", optimize=False, compress_level=1)
    (Path(root) / rel).with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    row: dict[str, object] = {
        "path": rel,
        "split": split,
        "concepts": sorted(o.concept for o in objects),
        "captions": captions,
    }
    if serial is not None:
        row["serial"] = serial
    return row


def make_world(
    out_dir: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    image_size: int = 64,
    test_fraction: float = 0.2,
    workers: int = 1,
    serials: bool = False,
) -> WorldInfo:
    """Generate `n` captioned scenes into `out_dir`; same arguments, same bytes."""
    if n <= 0:
        raise InputError(f"n must be positive, got {n}")
    if image_size < 16:
        raise InputError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FolderError(f"{root} exists and is not an empty folder: pick a new output folder")
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    is_test = _split_of(n, seed, test_fraction)
    serial = _serials(n, seed) if serials else [None] * n
    jobs = [(i, seed, image_size, bool(is_test[i]), str(root), serial[i]) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            rows = pool.map(_make_one, jobs, chunksize=256)
    else:
        rows = [_make_one(job) for job in jobs]
    with open(root / "labels.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    n_test = int(is_test.sum())
    meta = {
        "format": FORMAT_VERSION,
        "n": n,
        "seed": seed,
        "image_size": image_size,
        "test_fraction": test_fraction,
        "n_train": n - n_test,
        "n_test": n_test,
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
        "objects_per_image": [1, 2],
        "captions_per_image": {"train": _TRAIN_CAPTIONS, "test": 1},
    }
    if serials:
        meta["serials"] = True
    # Written last: a folder with world.json is a complete world.
    (root / "world.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return WorldInfo(
        root=root, n=n, seed=seed, image_size=image_size, n_train=n - n_test, n_test=n_test
    )


def load_labels(world_dir: str | os.PathLike[str]) -> dict[str, Label]:
    """Read `labels.jsonl` of a world, keyed by the image path relative to the world folder."""
    root = Path(world_dir)
    path = root / "labels.jsonl"
    if not (root / "world.json").is_file() or not path.is_file():
        raise FolderError(f"{root} is not a world folder (no world.json / labels.jsonl)")
    labels: dict[str, Label] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                labels[d["path"]] = Label(
                    path=d["path"],
                    split=d["split"],
                    concepts=tuple(d["concepts"]),
                    captions=tuple(d["captions"]),
                    serial=d.get("serial"),
                )
    return labels
