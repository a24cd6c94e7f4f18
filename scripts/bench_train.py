"""Print training steps/s by model and torch thread count, alone and beside a busy process.

.venv/bin/python scripts/bench_train.py WORLD_DIR [--models xr-small xr-tiny] [--batch 128]
    [--threads 1 2] [--hog] [--steps 8] [--rounds 2]

Data and model are loaded once; each measurement trains a fresh copy of the model for
`--warmup` + `--steps` steps and times the last `--steps`. With `--hog`, every thread count is
also measured while one CPU-bound process (`while True: pass`, started here and killed after
the measurement, and ending by itself after `--hog-limit` seconds in any case) runs beside it.
Measurements are interleaved over `--rounds` so that other load on the machine falls on all
of them alike; the ratios at the end compare configurations within this one run.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

import xretrieve.train.clip as T
from xretrieve.train.clip import TrainConfig, find_captioned_images, load_captioned_images

_HOG = "import time\nend = time.time() + {limit}\nwhile time.time() < end: pass\n"


def _timed_steps(stamps: list[float]) -> Any:
    """`budgeted_steps` that records the time each step starts (and when the loop ends)."""
    inner = T.budgeted_steps

    def wrapped(*a: Any, **k: Any) -> Iterator[Any]:
        for st in inner(*a, **k):
            stamps.append(time.perf_counter())
            yield st
        stamps.append(time.perf_counter())

    return wrapped


def _setup(name: str, world: str, n: int | None) -> tuple[Any, Any]:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = TrainConfig(model=name)
    model_cfg = T._model_cfg(name)
    pre = image_transform_v2(PreprocessCfg(**T._preprocess_cfg(model_cfg, cfg)), is_train=False)
    pairs = find_captioned_images(f"{world}/train")[:n]
    data = load_captioned_images(pairs, preprocess=pre, tokenizer=open_clip.get_tokenizer(name))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**{**model_cfg, "init_logit_scale": cfg.init_logit_scale})
    return model, data


def _measure(
    model: Any, data: Any, *, name: str, batch: int, threads: int, warmup: int, steps: int
) -> float:
    """Seconds per step of `steps` training steps after `warmup` ones, at `threads` threads."""
    stamps: list[float] = []
    T.budgeted_steps = _timed_steps(stamps)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = TrainConfig(model=name, max_seconds=None, max_steps=warmup + steps, batch_size=batch)
        T._fit(copy.deepcopy(model), data, config=cfg, t_start=time.perf_counter())
    finally:
        torch.set_num_threads(old)
    return (stamps[-1] - stamps[warmup]) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("world", help="a world folder made by xretrieve.train.world.make_world")
    ap.add_argument("--models", nargs="+", default=["xr-small"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--hog", action="store_true", help="also measure beside one busy process")
    ap.add_argument("--hog-limit", type=float, default=120.0, help="a hog ends after this (s)")
    ap.add_argument("--images", type=int, default=2000, help="training images to load")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(
        f"cores available {cores}, load average {os.getloadavg()[0]:.2f} at start, "
        f"torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps"
    )
    for name in args.models:
        model, data = _setup(name, args.world, args.images)
        results: dict[tuple[int, bool], list[float]] = {}
        for _ in range(args.rounds):
            for hog in (False, True) if args.hog else (False,):
                for threads in args.threads:
                    proc = None
                    if hog:
                        code = _HOG.format(limit=args.hog_limit)
                        proc = subprocess.Popen([sys.executable, "-c", code])
                    try:
                        s = _measure(
                            model,
                            data,
                            name=name,
                            batch=args.batch,
                            threads=threads,
                            warmup=args.warmup,
                            steps=args.steps,
                        )
                    finally:
                        if proc is not None:
                            proc.kill()
                            proc.wait()
                    results.setdefault((threads, hog), []).append(s)
                    print(
                        f"  {name} threads={threads} {'hog ' if hog else 'alone'}: "
                        f"{1 / s:.2f} steps/s ({s * 1000:.0f} ms/step)",
                        flush=True,
                    )
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"{name}, median over {args.rounds} round(s):")
        for (threads, hog), s in sorted(med.items()):
            print(f"  threads={threads} {'with hog' if hog else 'alone   '}: {1 / s:6.2f} steps/s")
        for hog in sorted({h for _, h in med}):
            base = med.get((args.threads[0], hog))
            for threads in args.threads[1:]:
                if base is not None and (threads, hog) in med:
                    print(
                        f"  {'with hog' if hog else 'alone'}: threads={threads} runs at "
                        f"{base / med[(threads, hog)]:.2f}x the speed of threads={args.threads[0]}"
                    )
        for threads in args.threads:
            if (threads, False) in med and (threads, True) in med:
                print(
                    f"  threads={threads}: with hog at {med[(threads, False)] / med[(threads, True)]:.2f}x "
                    "its speed alone"
                )


if __name__ == "__main__":
    main()
