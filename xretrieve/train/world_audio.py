"""Sound for the synthetic world: every scene also plays as a short clip, concept by concept.

Each object of a scene (see `xretrieve.train.world`) becomes one note, synthesised with numpy:

    shape    -> timbre      circle: sine, square: odd harmonics (clarinet-like),
                            triangle: all harmonics (sawtooth), star: inharmonic bell,
                            cross: harmonics with a 12 Hz tremolo, heart: sine + octave with vibrato
    colour   -> pitch       red 262 Hz, orange 349, yellow 466, green 622, blue 830, purple 1108
    size     -> length + loudness   large: ~0.4 s at full level, small: ~0.17 s, 9 dB softer
    position -> time slot   the clip has 4 slots of 0.5 s in reading order:
                            top-left, top-right, bottom-left, bottom-right

A two-object scene sounds as both notes, each in its own slot (objects never share a quadrant).
Pitch, onset, length, level, noise floor and overall gain are jittered per clip. The files are
mono 16-bit WAV written next to the images, with the same stem, so the image's caption sidecar
describes the sound too, and image + sound form an audio-image pair::

    OUT/train/000123.png  000123.txt  000123.wav
    OUT/audio.json        parameters and counts, written last (a world with it has sound)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from xretrieve.errors import FolderError, InputError
from xretrieve.train.world import COLOURS, POSITIONS, SHAPES, SIZES, SceneObject, load_labels

__all__ = [
    "AUDIO_FORMAT_VERSION",
    "CLIP_SECONDS",
    "PITCHES",
    "SLOT_SECONDS",
    "AudioWorldInfo",
    "add_audio_to_world",
    "parse_concept",
    "synthesize_scene",
]

AUDIO_FORMAT_VERSION = 1
SLOT_SECONDS = 0.5
CLIP_SECONDS = SLOT_SECONDS * len(POSITIONS)
#: Fundamental per colour, a fourth apart: resolvable by a 64-band mel spectrogram.
PITCHES = dict(zip(COLOURS, (262.0, 349.0, 466.0, 622.0, 830.0, 1108.0), strict=True))
_NOTE_SECONDS = {"small": (0.15, 0.19), "large": (0.38, 0.44)}
_LEVEL_DB = {"small": -9.0, "large": 0.0}
# Partial frequency ratios and amplitudes per shape.
_PARTIALS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "circle": ((1.0,), (1.0,)),
    "square": ((1.0, 3.0, 5.0, 7.0, 9.0), (1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9)),
    "triangle": (tuple(float(k) for k in range(1, 9)), tuple(1.0 / k for k in range(1, 9))),
    "star": ((1.0, 2.76, 5.40, 8.93), (1.0, 0.6, 0.4, 0.25)),
    "cross": ((1.0, 2.0, 3.0, 4.0), (1.0, 0.5, 0.33, 0.25)),
    "heart": ((1.0, 2.0), (1.0, 0.5)),
}
_PEAK = 0.5


@dataclass(frozen=True)
class AudioWorldInfo:
    """What `add_audio_to_world` wrote."""

    root: Path
    n_clips: int
    sample_rate: int
    seed: int
    clip_seconds: float


def parse_concept(concept: str) -> SceneObject:
    """The object behind a concept string such as ``"large red circle top-left"``."""
    parts = concept.split()
    if len(parts) != 4:
        raise InputError(f"not an object concept (size colour shape position): {concept!r}")
    size, colour, shape, position = parts
    if (
        size not in SIZES
        or colour not in COLOURS
        or shape not in SHAPES
        or position not in POSITIONS
    ):
        raise InputError(f"unknown size, colour, shape or position in concept {concept!r}")
    return SceneObject(shape=shape, colour=colour, size=size, position=position)


def _note(
    obj: SceneObject, rng: np.random.Generator, sample_rate: int, n: int
) -> npt.NDArray[np.float64]:
    t = np.arange(n) / sample_rate
    f0 = PITCHES[obj.colour] * 2 ** (rng.uniform(-0.25, 0.25) / 12)
    ratios, amps = _PARTIALS[obj.shape]
    # Vibrato bends the phase: integrate the instantaneous frequency.
    phase = 2 * np.pi * f0 * t
    if obj.shape == "heart":
        phase = phase + 0.04 * f0 / 6.0 * np.sin(2 * np.pi * 6.0 * t)
    out = np.zeros(n)
    for r, a in zip(ratios, amps, strict=True):
        if r * f0 < 0.45 * sample_rate:
            out += a * np.sin(r * phase + rng.uniform(0, 2 * np.pi))
    attack = np.clip(t / 0.01, 0.0, 1.0)
    release = np.clip((t[-1] - t) / 0.03, 0.0, 1.0)
    env = attack * release
    if obj.shape == "star":
        env = env * np.exp(-t / (t[-1] / 3.0))
    if obj.shape == "cross":
        env = env * (0.6 + 0.4 * np.sin(2 * np.pi * 12.0 * t))
    out = out * env
    return out / max(float(np.abs(out).max()), 1e-9)


def synthesize_scene(
    objects: Iterable[SceneObject], rng: np.random.Generator, *, sample_rate: int = 16_000
) -> npt.NDArray[np.float32]:
    """The clip of a scene: one note per object in its position's time slot, float32 mono."""
    n_total = round(CLIP_SECONDS * sample_rate)
    slot = round(SLOT_SECONDS * sample_rate)
    clip = np.zeros(n_total)
    for obj in objects:
        lo, hi = _NOTE_SECONDS[obj.size]
        n = round(rng.uniform(lo, hi) * sample_rate)
        start = POSITIONS.index(obj.position) * slot + round(rng.uniform(0.0, 0.05) * sample_rate)
        n = min(n, n_total - start)
        level = 10 ** ((_LEVEL_DB[obj.size] + rng.uniform(-1.5, 1.5)) / 20)
        clip[start : start + n] += level * _note(obj, rng, sample_rate, n)
    noise_db = rng.uniform(-60.0, -45.0)
    clip += rng.normal(0.0, 10 ** (noise_db / 20), size=n_total)
    gain = _PEAK * 10 ** (rng.uniform(-4.0, 0.0) / 20)
    return (clip * gain).astype(np.float32)


def _make_one(args: tuple[str, tuple[str, ...], int, int, int, str]) -> None:
    import soundfile as sf

    rel, concepts, index, seed, sample_rate, root = args
    # One generator per clip: the output does not depend on worker count or order.
    rng = np.random.default_rng([seed, index, 0xA0D10])
    wave = synthesize_scene([parse_concept(c) for c in concepts], rng, sample_rate=sample_rate)
    out = (Path(root) / rel).with_suffix(".wav")
    tmp = out.with_name(f".{out.name}.tmp")
    sf.write(str(tmp), wave, sample_rate, format="WAV", subtype="PCM_16")
    os.replace(tmp, out)


def add_audio_to_world(
    world_dir: str | os.PathLike[str],
    *,
    sample_rate: int = 16_000,
    seed: int = 0,
    workers: int = 1,
) -> AudioWorldInfo:
    """Write a `.wav` beside every image of a world (all splits); same arguments, same bytes."""
    if sample_rate < 8_000:
        raise InputError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    root = Path(world_dir)
    labels = load_labels(root)
    if not labels:
        raise FolderError(f"world {root} has no images to give sound to")
    jobs = []
    for rel, lab in sorted(labels.items()):
        stem = Path(rel).stem
        if not stem.isdigit():
            raise FolderError(f"unexpected image name {rel!r} in {root}: not a generated world")
        jobs.append((rel, lab.concepts, int(stem), seed, sample_rate, str(root)))
    (root / "audio.json").unlink(missing_ok=True)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_make_one, jobs, chunksize=256)
    else:
        for job in jobs:
            _make_one(job)
    meta = {
        "format": AUDIO_FORMAT_VERSION,
        "sample_rate": sample_rate,
        "seed": seed,
        "clip_seconds": CLIP_SECONDS,
        "slot_seconds": SLOT_SECONDS,
        "slots": list(POSITIONS),
        "pitches": PITCHES,
        "timbres": {s: list(p[0]) for s, p in _PARTIALS.items()},
        "n_clips": len(jobs),
    }
    # Written last: a world with audio.json has a sound for every image.
    (root / "audio.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return AudioWorldInfo(
        root=root, n_clips=len(jobs), sample_rate=sample_rate, seed=seed, clip_seconds=CLIP_SECONDS
    )
