"""Print the hybrid-search table (docs/benchmarks/eval_hybrid.md): dense, RRF, convex R@K.

.venv/bin/python scripts/eval_hybrid.py [--n 1000] [--steps 300] [--model xr-small]
    [--batch 64] [--seed 0] [--out DIR]

Makes a world and the same world with serials (same seed: the same scenes and images, with
a serial in every caption and file name), trains a model on the plain world's train split
for a fixed number of steps (the same model on every machine), then runs the cases of
`xretrieve.train.hybrid_eval` on the test split: serial (queries by serial number), plain
(no captions in the index) and plain-captioned (another paraphrase beside each image).
Everything is seeded: the same arguments print the same table. Prints a Markdown table and
the seconds each part took; `--out` keeps the worlds, model and indexes (default: a
temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from xretrieve.train.clip import TrainConfig, train
from xretrieve.train.hybrid_eval import fusion_cases, fusion_table
from xretrieve.train.world import make_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="scenes per world (20%% held out)")
    ap.add_argument("--steps", type=int, default=300, help="training steps")
    ap.add_argument("--model", default="xr-small", help="architecture to train")
    ap.add_argument("--batch", type=int, default=64, help="pairs per training step")
    ap.add_argument("--image-size", type=int, default=64, help="world image side")
    ap.add_argument("--seed", type=int, default=0, help="world and training seed")
    ap.add_argument("--out", type=Path, default=None, help="keep everything in this new folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="eval-hybrid-") as tmp:
        work = args.out or Path(tmp)
        workers = min(4, os.cpu_count() or 1)
        t0 = time.perf_counter()
        plain, serial = work / "world", work / "world-serial"
        make_world(plain, n=args.n, seed=args.seed, image_size=args.image_size, workers=workers)
        make_world(
            serial,
            n=args.n,
            seed=args.seed,
            image_size=args.image_size,
            workers=workers,
            serials=True,
        )
        t1 = time.perf_counter()
        cfg = TrainConfig(
            model=args.model,
            max_seconds=None,
            max_steps=args.steps,
            batch_size=args.batch,
            seed=args.seed,
        )
        report = train(plain / "train", work / "model", config=cfg)
        t2 = time.perf_counter()
        cases = fusion_cases(work / "model", plain, serial, work / "cases")
        t3 = time.perf_counter()
        print(
            f"{args.model}, {report.steps} steps of {args.batch} "
            f"({report.steps / max(report.seconds, 1e-9):.1f} steps/s), "
            f"worlds of {args.n} scenes (seed {args.seed}), test split of each indexed"
        )
        print()
        print(fusion_table(cases))
        print()
        print(
            f"seconds: worlds {t1 - t0:.0f}, training {t2 - t1:.0f}, "
            f"cases {t3 - t2:.0f} ({', '.join(f'{c.case} {c.seconds:.0f}' for c in cases)})"
        )


if __name__ == "__main__":
    main()
