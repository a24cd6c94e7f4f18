"""Indexing through Ray against indexing in this process, side by side in one run.

    .venv/bin/python scripts/bench_ray.py                         # 256 photo-like 1 MP JPEGs
    .venv/bin/python scripts/bench_ray.py --precision bf16 --images 512
    .venv/bin/python scripts/bench_ray.py --model xr-tiny --images 16 --rounds 1   # smoke test

The same folder (photo-like JPEGs, `bench_index.make_photos`) is indexed from scratch in
alternate rounds (after an untimed warm-up round), locally and on a local Ray cluster started
once on this machine (every core), and the median of each is printed: local img/s, Ray img/s (end to end, which includes
starting the encoder actors and loading the model in each, and from the first result on), and
their ratio. Then the driver's commit cost: `commit.commit` of 10,000 synthetic rows (random
unit vectors, full metadata rows) into a fresh index, median over rounds. Weights do not
change speed, so the default is ViT-B-32 with random weights (no download needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_index import SIZES, make_photos  # scripts/ is this script's sys.path[0]

from xretrieve import store
from xretrieve.encoders import load_encoder
from xretrieve.indexer import IndexOptions, IndexReport, distributed, index_folder
from xretrieve.indexer import commit as commit_mod
from xretrieve.indexer.known import Known
from xretrieve.indexer.run import Item, Pending, Run
from xretrieve.media.scan import Scan


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def commit_seconds(encoder: Any, rows: int, work: Path, rounds: int) -> float:
    """Median seconds of one `commit.commit` of `rows` new rows into a fresh index."""
    rng = np.random.default_rng(0)
    times = []
    for r in range(rounds):
        out = work / f"commit{r}"
        vecs = rng.standard_normal((rows, encoder.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        items = []
        for i in range(rows):
            row = store.metadata_row(
                path=f"synthetic/{i // 1000:03d}/photo_{i:07d}.jpg",
                modality="image",
                bytes=250_000 + i,
                mtime_us=1_700_000_000_000_000 + i,
                content_hash=f"{r:08x}{i:056x}",
                width=1024,
                height=768,
            )
            items.append(Item(row, vector=vecs[i]))
        with store.lock_index(out):
            run = Run(
                scan=Scan(root=work),
                encoder=encoder,
                options=IndexOptions(progress=False, shard_by="none", commit_every=rows),
                report=IndexReport(index=str(out)),
                writer=store.Writer(out),
                known=Known(),
                pending=Pending(shards=[], items=items),
                progress=_Quiet(),
                started=time.perf_counter(),
            )
            t0 = time.perf_counter()
            commit_mod.commit(run)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--kind", choices=sorted(SIZES), default="small")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="encoder threads (both runs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (file cache, Ray workers)"
    )
    ap.add_argument("--commit-rows", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        t0 = time.perf_counter()
        make_photos(folder, args.images, SIZES[args.kind])
        print(f"{args.images} {args.kind} JPEGs made in {time.perf_counter() - t0:.1f} s")
        pretrained = None if args.pretrained.lower() == "none" else args.pretrained
        encoder = load_encoder(
            args.model,
            pretrained=pretrained,
            device="cpu",
            batch_size=args.batch_size,
            precision=args.precision,
            threads=args.threads,
        )
        n = cores()
        t0 = time.perf_counter()
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level="warning")
        print(f"Ray cluster of {n} CPUs started in {time.perf_counter() - t0:.1f} s")

        first: list[float] = []
        real_unpack = distributed._unpack

        def timed_unpack(batch: Any) -> Any:
            if not first:
                first.append(time.perf_counter())
            return real_unpack(batch)

        distributed._unpack = timed_unpack  # type: ignore[assignment]
        base = {"batch_size": args.batch_size, "torch_threads": args.threads, "progress": False}
        local_rates, ray_rates, steady_rates = [], [], []
        for r in range(-args.warmup, args.rounds):
            for how in ("local", "ray"):
                out = work / f"{how}{r}"
                opts = IndexOptions(**base, ray="auto" if how == "ray" else None)
                first.clear()
                t0 = time.perf_counter()
                report = index_folder(folder, out, encoder=encoder, options=opts)
                seconds = time.perf_counter() - t0
                if report.images != args.images or report.failed:
                    raise SystemExit(f"{how}: {report.to_dict()}")
                rate = args.images / seconds
                name = f"round {r + 1}" if r >= 0 else "warm-up"
                line = f"{name} {how:5}: {rate:7.1f} img/s ({seconds:.1f} s)"
                steady = args.images / max(1e-9, t0 + seconds - first[0]) if first else 0.0
                if how == "ray":
                    line += f", {steady:.1f} img/s from the first result"
                print(line, flush=True)
                if r >= 0:
                    (local_rates if how == "local" else ray_rates).append(rate)
                    if how == "ray":
                        steady_rates.append(steady)
                shutil.rmtree(out)
        ray.shutdown()
        local, ray_rate = statistics.median(local_rates), statistics.median(ray_rates)
        steady = statistics.median(steady_rates) if steady_rates else float("nan")
        per10k = commit_seconds(encoder, args.commit_rows, work, args.rounds)
        per10k *= 10_000 / args.commit_rows
        print()
        print(
            f"{args.model} {args.precision}, {args.images} {args.kind} JPEGs, batch "
            f"{args.batch_size}, {n} cores, median of {args.rounds}:"
        )
        print(
            "| local img/s | Ray img/s | Ray / local | Ray img/s from first result "
            "| commit per 10k rows |"
        )
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| {local:.1f} | {ray_rate:.1f} | **{ray_rate / local:.2f}** | {steady:.1f} "
            f"| {per10k:.2f} s |"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
