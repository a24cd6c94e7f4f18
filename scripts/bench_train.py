"""Print training speed (ms per step, images per second) of model configs on this machine.

.venv/bin/python scripts/bench_train.py WORLD_DIR [--models xr-small xr-tiny] [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import xretrieve.train.clip as T
from xretrieve.train.clip import TrainConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", help="a world folder made by xretrieve.train.world.make_world")
    ap.add_argument("--models", nargs="+", default=["xr-small"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    loop = T._loop

    def timed(*a, **k):  # type: ignore[no-untyped-def]
        c0, w0 = time.process_time(), time.perf_counter()
        steps, loss = loop(*a, **k)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(
            f"  {steps} steps: wall {wall / steps * 1000:.0f} ms/step "
            f"({args.batch * steps / wall:.0f} img/s), cpu {cpu / steps * 1000:.0f} ms/step"
        )
        return steps, loss

    T._loop = timed
    for name in args.models:
        print(f"{name} batch={args.batch}")
        cfg = TrainConfig(
            model=name,
            max_seconds=None,
            max_steps=args.steps,
            batch_size=args.batch,
            threads=args.threads,
        )
        trained = fit(f"{args.world}/train", config=cfg)
        print(f"  load {trained.load_seconds:.1f} s, total {trained.seconds:.1f} s")


if __name__ == "__main__":
    main()
