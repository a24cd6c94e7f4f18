"""Benchmark one shard's FAISS index on SyntheticDataset(512, 200k, nb, 1000, IP), normalised.

Runs the engine's own path (plan_index -> build_index -> tune -> write_index -> search) and
prints build time, peak memory growth, on-disk bytes vs raw float32, single-query latency and
recall@10, next to exact search measured in the same run.

    .venv/bin/python scripts/bench_faiss.py                 # 1M vectors (~5 min, ~12 GiB peak)
    .venv/bin/python scripts/bench_faiss.py --nb 100000     # quick
    .venv/bin/python scripts/bench_faiss.py --nb 100000 --index-type ivf-pq

Build and tuning use all FAISS threads; latency is measured one query at a time with
faiss.omp_set_num_threads(1), the way an interactive query meets one shard.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.datasets import SyntheticDataset

from xretrieve.store import ann

K = 10
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@contextmanager
def peak_rss_growth() -> Iterator[dict[str, int]]:
    """Sample RSS every 10 ms; yields a dict that gets 'bytes' = peak minus the starting RSS."""
    out: dict[str, int] = {}
    start = _rss()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["bytes"] = max(peak[0], _rss()) - start


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def one_at_a_time(
    search: Callable[[np.ndarray], np.ndarray], xq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ids (nq, K) and per-query latencies in seconds, one query per call."""
    ids = np.empty((len(xq), K), dtype=np.int64)
    lat = np.empty(len(xq))
    for i in range(len(xq)):
        t = time.perf_counter()
        ids[i] = search(xq[i : i + 1])[0]
        lat[i] = time.perf_counter() - t
    return ids, lat


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nb", type=int, default=1_000_000, help="database vectors (default 1M)")
    ap.add_argument("--index-type", default=None, help="short name or FAISS factory string")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--exact-queries", type=int, default=200, help="queries timed on exact search")
    args = ap.parse_args()

    d, nt, nq = 512, 200_000, 1000
    ds, gen_s = timed(lambda: SyntheticDataset(d, nt, args.nb, nq, metric="IP"))
    # Normalise in place so get_groundtruth ranks the same vectors the index holds.
    ds.xb, ds.xq, ds.xt = _normalise(ds.xb), _normalise(ds.xq), _normalise(ds.xt)
    xb, xq = ds.get_database(), ds.get_queries()
    gt, gt_s = timed(lambda: ds.get_groundtruth(K))
    threads = faiss.omp_get_max_threads()
    print(f"dataset: {args.nb} x {d} (+{nq} queries) in {gen_s:.1f} s; ground truth {gt_s:.1f} s")

    plan = ann.plan_index(args.nb, d, index_type=args.index_type)
    print(f"plan: {plan.kind} {plan.factory!r} rescore={plan.rescore} train_size={plan.train_size}")
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with peak_rss_growth() as mem:
        built, build_s = timed(lambda: ann.build_index(xb, plan))
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tuned, tune_s = timed(lambda: ann.tune(built, xb, target_recall=args.target_recall, k=K))
    built = ann.with_params(built, tuned)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.faiss"
        _, write_s = timed(lambda: ann.write_index(built, path))
        index_bytes = sum(f.stat().st_size for f in ann.index_files(path) if f.exists())
        reread = ann.read_index(path)
    raw = args.nb * d * 4

    faiss.omp_set_num_threads(1)
    ids, lat = one_at_a_time(lambda q: ann.search(reread, q, K)[1], xq)
    exact = faiss.IndexFlatIP(d)
    exact.add(xb)
    m = min(args.exact_queries, nq)
    ex_ids, ex_lat = one_at_a_time(lambda q: exact.search(q, K)[1], xq[:m])
    faiss.omp_set_num_threads(threads)

    rec = recall_at_k(ids, gt)
    p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
    e50, e99 = np.percentile(ex_lat, 50) * 1e3, np.percentile(ex_lat, 99) * 1e3
    print(f"build (train+add): {build_s:.1f} s   tune: {tune_s:.1f} s   write: {write_s:.1f} s")
    print(
        f"peak RSS growth during build: {mem['bytes'] / 2**20:.0f} MiB "
        f"(ru_maxrss delta {(maxrss1 - maxrss0) / 2**20:.0f} MiB)"
    )
    print(
        f"index bytes on disk: {index_bytes / 2**20:.1f} MiB = {index_bytes / raw:.1%} of raw float32"
    )
    print(f"tuned: {tuned}")
    print(f"search threads: 1 (faiss.omp_set_num_threads(1)); build threads: {threads}")
    print(f"{'':14}{'recall@10':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'ann':14}{rec:>10.3f}{p50:>10.3f}{p99:>10.3f}")
    print(f"{'exact':14}{recall_at_k(ex_ids, gt[:m]):>10.3f}{e50:>10.3f}{e99:>10.3f}")
    print(f"{'ann / exact':14}{'':>10}{p50 / e50:>10.3f}{p99 / e99:>10.3f}")
    print(f"speed-up at p50: {e50 / p50:.1f}x")


if __name__ == "__main__":
    main()
