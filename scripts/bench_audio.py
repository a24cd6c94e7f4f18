"""Audio embedding throughput against the raw audio-tower forward rate, side by side in one run.

    .venv/bin/python scripts/bench_audio.py                        # 512 world-like 2 s WAV clips
    .venv/bin/python scripts/bench_audio.py --format mp3 --rate 44100 --seconds 10
    .venv/bin/python scripts/bench_audio.py --model runs/demo/model  # a folder with an audio tower

Prints, on the same clips: decode ms/clip (read + mono + resample, one thread); log-mel
ms/window; raw tower forward windows/s on ready waveforms; end-to-end `Encoder.encode_audio`
clips/s from files; the ratio end-to-end / raw, taken round by round with raw and
end-to-end interleaved; and, as `bench_index.py` does for images, the pipeline ceiling =
cores / (decode core-s per clip + tower core-s per clip), since decoding and the tower share
the same cores, with end-to-end / ceiling. Each stage is timed `--repeat` times, best and median shown; on a
shared machine absolute rates swing several-fold, the per-round ratio much less.
Weights do not change speed, so the default is the recipe's tower with random weights on
the tiny image/text model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from xretrieve.encoders import Encoder, load_encoder
from xretrieve.encoders.audio_tower import AudioTower
from xretrieve.encoders.features import windows
from xretrieve.media.audio import decode_audio
from xretrieve.train.audio import AudioTrainConfig
from xretrieve.train.world import COLOURS, POSITIONS, SHAPES, SIZES, SceneObject
from xretrieve.train.world_audio import synthesize_scene

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}


def make_clips(folder: Path, n: int, *, seconds: float, rate: int, fmt: str) -> list[Path]:
    """World-like clips (notes of random scenes, repeated to `seconds`), stereo at `rate`."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        obj = SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            position=POSITIONS[int(rng.integers(len(POSITIONS)))],
        )
        mono = synthesize_scene([obj], rng, sample_rate=rate)
        mono = np.tile(mono, int(np.ceil(seconds * rate / len(mono))))[: round(seconds * rate)]
        path = folder / f"clip_{i:05d}.{fmt}"
        sf.write(
            path,
            np.stack([mono, mono * 0.8], axis=1),
            rate,
            format=FORMATS[fmt][0],
            subtype=FORMATS[fmt][1],
        )
        paths.append(path)
    return paths


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def spread(seconds: list[float], count: int, unit: str) -> str:
    best, med = count / min(seconds), count / statistics.median(seconds)
    return f"{best:8.1f} {unit} best, {med:8.1f} median ({len(seconds)} runs)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rate", type=int, default=16_000, help="sample rate of the files")
    ap.add_argument("--format", choices=sorted(FORMATS), default="wav")
    ap.add_argument("--model", default=None, help="model folder with an audio tower")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    if args.model:
        enc = load_encoder(args.model, pretrained=None, device="cpu", batch_size=args.batch_size)
    else:
        base = load_encoder("xr-tiny", pretrained=None, device="cpu", batch_size=args.batch_size)
        torch.manual_seed(0)
        tower = AudioTower(AudioTrainConfig().tower_config(base.dim)).eval()
        enc = Encoder(
            base.model,
            base.preprocess,
            base.tokenizer,
            base.spec,
            device=base.device,
            batch_size=args.batch_size,
            audio_tower=tower,
        )
    tower = enc.audio_tower
    assert tower is not None, "the model has no audio tower"  # a script, not library code
    mel = tower.cfg.mel
    print(
        f"{args.clips} clips of {args.seconds:g} s, {args.format} at {args.rate} Hz stereo; "
        f"tower window {mel.window_seconds:g} s at {mel.sample_rate} Hz; {cores} cores"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(
            Path(tmp), args.clips, seconds=args.seconds, rate=args.rate, fmt=args.format
        )
        waves = [decode_audio(p, sample_rate=mel.sample_rate).waveform for p in paths]
        batch = torch.from_numpy(np.concatenate([windows(w, mel.window_samples) for w in waves]))
        n_win = len(batch)

        torch.set_num_threads(1)
        t_dec = timed(
            lambda: [decode_audio(p, sample_rate=mel.sample_rate) for p in paths], args.repeat
        )

        def features() -> None:
            with torch.inference_mode():
                for i in range(0, n_win, args.batch_size):
                    tower.features(batch[i : i + args.batch_size])

        t_mel = timed(features, args.repeat)
        torch.set_num_threads(cores)

        def raw() -> None:
            with torch.inference_mode():
                for i in range(0, n_win, args.batch_size):
                    tower(batch[i : i + args.batch_size])

        raw()  # warm-up
        enc.encode_audio(paths[:4])
        # Interleaved, so that load from other processes hits both alike; the ratio is per round.
        t_raw: list[float] = []
        t_e2e: list[float] = []
        for _ in range(args.repeat):
            t_raw += timed(raw, 1)
            t_e2e += timed(lambda: enc.encode_audio(paths), 1)

    print(
        f"decode (1 thread)     {1000 * min(t_dec) / args.clips:8.2f} ms/clip best, "
        f"{1000 * statistics.median(t_dec) / args.clips:.2f} median"
    )
    print(
        f"log-mel (1 thread)    {1000 * min(t_mel) / n_win:8.2f} ms/window best, "
        f"{1000 * statistics.median(t_mel) / n_win:.2f} median"
    )
    print(f"raw tower forward     {spread(t_raw, n_win, 'windows/s')}  ({n_win} windows)")
    print(f"encode_audio (files)  {spread(t_e2e, args.clips, 'clips/s  ')}")
    # Per clip: raw time of a clip's windows against the end-to-end time of the clip.
    ratios = [r / e for r, e in zip(t_raw, t_e2e, strict=True)]
    print(
        f"end-to-end / raw      {statistics.median(ratios):8.2f} median per round, clip for clip "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}: the spread is the machine's noise)"
    )
    # Core-seconds per clip: decoding (one thread) plus the tower on all cores for its windows.
    decode_cs = min(t_dec) / args.clips
    tower_cs = cores * min(t_raw) / args.clips
    ceiling = cores / (decode_cs + tower_cs)
    e2e = args.clips / statistics.median(t_e2e)
    print(
        f"pipeline ceiling      {ceiling:8.1f} clips/s = cores / (decode + tower core-s per clip)"
    )
    print(f"end-to-end / ceiling  {e2e / ceiling:8.2f}")


if __name__ == "__main__":
    main()
