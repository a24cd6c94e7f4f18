"""Helpers shared by scripts/bench_encoders.py and scripts/eval_precision.py (not a script).

Interleaved timing (every candidate once per round, medians over rounds, so load that comes
and goes on a shared machine falls on all candidates alike), row-wise cosine statistics,
synthetic photo-like images, and Markdown tables.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def interleaved(
    jobs: dict[str, Callable[[], Any]], *, rounds: int, reps: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each job: A B C ... A B C ... over `rounds` rounds of `reps` calls."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                job()
            times[name].append((time.perf_counter() - t0) / reps)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def row_cosines(a: Any, b: Any) -> np.ndarray:
    """Cosine of row i of `a` with row i of `b` (rows need not be unit length)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def cos_stats(a: Any, b: Any) -> tuple[float, float]:
    """(mean, 1st percentile) of the row-wise cosines of `a` and `b`."""
    c = row_cosines(a, b)
    return float(c.mean()), float(np.percentile(c, 1))


def photo_array(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One photo-like RGB image: smooth gradient, a few blobs and sensor noise (uint8 HxWx3)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    grad = rng.uniform(-60, 60, (2, 3))
    img = base + (xx[..., None] / w) * grad[0] + (yy[..., None] / h) * grad[1]
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape[:2])[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def photos(n: int, size: tuple[int, int], *, seed: int = 0) -> list[Image.Image]:
    """`n` photo-like PIL images of `size` (width, height), deterministic."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(photo_array(rng, size)) for _ in range(n)]


def write_photos(folder: Path, n: int, size: tuple[int, int], *, seed: int = 0) -> None:
    """Write `n` photo-like JPEGs (quality 90) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(photo_array(rng, size)).save(folder / f"photo_{i:05d}.jpg", quality=90)


_TEXT = (
    "a photo of a red car parked on a quiet street near the old stone bridge at sunset "
    "two dogs playing in green grass beside a small blue house with white windows "
    "a person riding a bicycle through the busy market under a cloudy grey sky"
)


def captions(n: int, *, seed: int = 0) -> list[str]:
    """`n` distinct caption-like texts of 6 to 16 words, deterministic."""
    rng = np.random.default_rng(seed)
    vocab = _TEXT.split()
    out = []
    for i in range(n):
        words = rng.choice(vocab, size=int(rng.integers(6, 17)))
        out.append(f"{' '.join(words)} {i}")
    return out


#: A table cell for what was not measured.
NA = "n/a"


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; numbers already formatted as strings by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
