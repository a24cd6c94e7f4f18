"""Benchmark a whole index at scale (1M .. 10M x 512): build, bytes, open, RSS, latency, recall.

Vectors are a deterministic clustered mixture (never uniform noise): `--clusters` centres drawn
uniformly on the sphere, each vector its centre plus an offset of norm 0.4-0.8 (by cluster) in
8 random directions of its cluster's own plus isotropic noise of norm 0.3, L2-normalised. Chunk i is drawn from the seed
(seed, 1, i) alone, so any chunk can be made again without the others and no more than one
shard of vectors is ever in memory (10M x 512 float32 is 20 GB).

Chunks stream through the indexer's own write path: `store.Writer.write_shard` (plan, train,
tune, Parquet + FAISS files) with synthetic metadata rows, then `Writer.commit`, one
generation per shard, under `store.lock_index`. Exact ground truth (top-10 by inner product)
for the held-out queries (`--queries` fresh draws from the same mixture) is kept as a running
top-10 over the chunks (`faiss.knn` per chunk + merge), so memory stays bounded.

Each size in `--sizes` is a prefix of the same stream: the index grows shard by shard and is
measured when it reaches a size, in a fresh subprocess (open time and RSS of a process that
did nothing else): `store.Reader` + loading every shard, then one query at a time through the
engine's shard search (`query.stages.dense`: each shard's `ann.search` with its tuned
parameters, merged by `ann.merge_topk`) at k=10.

Restartable: `--work` holds the index, `state.json` (rows committed, build seconds, results) and
the running ground truth, saved after every commit; run the same command again after a kill
and it continues from the last commit (results already measured are printed, not re-run).

    .venv/bin/python scripts/bench_scale.py --n 1000000                       # ~6 min, ~0.6 GB disk
    .venv/bin/python scripts/bench_scale.py --n 10000000 --sizes 1000000 3000000 10000000 \\
        --work /var/tmp/xr-scale                                              # see README
    .venv/bin/python scripts/bench_scale.py --n 20000 --d 64 --clusters 200   # smoke, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from xretrieve import store

K = 10
_SUBSPACE = 8
# Rows per block when adding each row's cluster offsets: a (rows, r, d) float32 gather.
_BLOCK = 8192
_STATE = "state.json"
_TRUTH = "truth.npz"
# Parameters that define the data and the index: a work folder is only resumed with the same.
_PARAMS = ("n_max", "d", "seed", "chunk", "shard_rows", "clusters", "queries", "index_type")
_MTIME0_US = 1_420_070_400_000_000  # 2015-01-01 UTC
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


# ---------------------------------------------------------------------------------------------
# The data: a seeded mixture, any chunk regenerable alone


class Mixture:
    """Clustered unit vectors: centres on the sphere, a low-rank spread of each cluster's own,
    isotropic noise."""

    def __init__(self, d: int, clusters: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        c = rng.standard_normal((clusters, d), dtype=np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.rank = r = min(_SUBSPACE, d)
        # Each cluster spreads in r random directions of its own (nearly orthogonal in high
        # d), so neighbours within a cluster are near for a reason and no direction is shared
        # by all clusters (a shared one would dominate k-means and hide the clusters).
        self.bases = rng.standard_normal((clusters, r, d), dtype=np.float32)
        self.bases *= np.float32(1 / math.sqrt(d * r))
        self.spread = rng.uniform(0.4, 0.8, clusters).astype(np.float32)
        self.noise = np.float32(0.3 / math.sqrt(d))
        self.d, self.seed = d, seed

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """`m` vectors of the mixture, float32 (m, d), unit length."""
        label = rng.integers(0, len(self.centres), m)
        z = rng.standard_normal((m, self.rank), dtype=np.float32)
        x = self.centres[label]
        z *= self.spread[label, None]
        for a in range(0, m, _BLOCK):  # blocks bound the (rows, r, d) gather
            b = min(m, a + _BLOCK)
            x[a:b] += np.einsum("mr,mrd->md", z[a:b], self.bases[label[a:b]])
        x += rng.standard_normal((m, self.d), dtype=np.float32) * self.noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunk(self, i: int, size: int) -> np.ndarray:
        """Chunk i of the stream: rows i*size .. (i+1)*size - 1."""
        return self.draw(np.random.default_rng([self.seed, 1, i]), size)

    def queries(self, m: int) -> np.ndarray:
        """Held-out queries: fresh draws of the same mixture, never rows of the index."""
        return self.draw(np.random.default_rng([self.seed, 2]), m)

    def rows(self, start: int, stop: int, chunk: int) -> np.ndarray:
        """Rows start..stop-1 of the stream (chunks cut where the range needs it)."""
        out = np.empty((stop - start, self.d), np.float32)
        for i in range(start // chunk, (stop - 1) // chunk + 1):
            a, b = max(start, i * chunk), min(stop, (i + 1) * chunk)
            out[a - start : b - start] = self.chunk(i, chunk)[a - i * chunk : b - i * chunk]
        return out


def synthetic_metadata(start: int, stop: int, seed: int) -> pa.Table:
    """Metadata rows like an indexed photo folder's: path, folder, bytes, mtime, sha256, size."""
    n = stop - start
    i = np.arange(start, stop, dtype=np.int64)
    rng = np.random.default_rng([seed, 3, start])
    digest = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    hexed = np.empty((n, 64), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[digest >> 4], _HEX[digest & 15]
    folders = [f"f{(j // 10_000) % 100:02d}" for j in range(start, stop)]
    mtime = _MTIME0_US + i * 30_000_000
    year = mtime.astype("datetime64[us]").astype("datetime64[Y]").astype(np.int64) + 1970
    cols: dict[str, Any] = {
        "path": pa.array(
            [f"{f}/img_{j:09d}.jpg" for f, j in zip(folders, range(start, stop), strict=True)]
        ),
        "modality": pa.array(["image"] * n),
        "width": pa.array(np.full(n, 1024, np.int32)),
        "height": pa.array(np.full(n, 768, np.int32)),
        "bytes": pa.array(rng.integers(50_000, 5_000_000, n)),
        "mtime": pa.array(mtime),
        "content_hash": pa.array(hexed.view("S64").ravel()).cast(pa.string()),
        "folder": pa.array(folders),
        "year": pa.array(year.astype(np.int32)),
    }
    return store.metadata_columns(cols, n)


# ---------------------------------------------------------------------------------------------
# Ground truth: a running exact top-k over the stream


def merge_truth(
    truth: tuple[np.ndarray, np.ndarray], part: np.ndarray, offset: int, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The running exact top-k of `q` after seeing `part` (rows offset..offset+len-1)."""
    d, i = faiss.knn(q, part, min(K, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
    alld = np.concatenate([truth[0], d], axis=1)
    alli = np.concatenate([truth[1], i + offset], axis=1)
    top = np.argsort(-alld, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(alld, top, axis=1), np.take_along_axis(alli, top, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k found in its top-k."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(np.asarray(hits) / np.maximum((truth >= 0).sum(axis=1), 1)))


# ---------------------------------------------------------------------------------------------
# State: what is committed, what it cost, what was measured


def _save_json(path: Path, data: dict[str, Any]) -> None:
    store.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _save_truth(path: Path, truth: tuple[np.ndarray, np.ndarray], rows: int) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, d=truth[0], i=truth[1], rows=np.int64(rows))

    store.atomic_write(path, save)


def _load_truth(path: Path, nq: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    if not path.exists():
        empty = (np.full((nq, 0), -np.inf, np.float32), np.full((nq, 0), -1, np.int64))
        return empty, 0
    with np.load(path) as z:
        return (z["d"], z["i"]), int(z["rows"])


def _open_state(work: Path, params: dict[str, Any], fresh: bool) -> dict[str, Any]:
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / _STATE
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        old = {k: state["params"].get(k) for k in _PARAMS}
        # A larger --n only extends the stream: the rows already written stay the same.
        if {**old, "n_max": None} != {**params, "n_max": None}:
            sys.exit(f"{work} holds a run with {old}; use --fresh or another --work")
        state["params"]["n_max"] = max(old["n_max"], params["n_max"])
        return state
    return {"params": params, "rows": 0, "build_s": 0.0, "data_s": 0.0, "gaps": 0, "results": {}}


# ---------------------------------------------------------------------------------------------
# Measuring one size (in a subprocess of its own)


def _rss_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        with contextlib.suppress(IndexError, ValueError):
            out[key] = int(text.split(key + ":")[1].split()[0]) / 1024
    return out


def measure(work: Path, size: int, mmap: str) -> dict[str, Any]:
    """Open the index at `work`, search every query one at a time; the numbers as a dict.

    `mmap`: "auto" loads shards as the store does, "on" / "off" maps every / no shard file.
    """
    from xretrieve.query import stages  # the engine's own shard search and merge

    threshold = {"on": 0, "off": 1 << 62}.get(mmap, store.MMAP_MIN_BYTES)
    index_dir = work / "index"
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    reader = store.Reader(index_dir, mmap_min_bytes=threshold)
    shards = reader.shards("image")
    open_s = time.perf_counter() - t0
    rss_open = _rss_mb()
    rows = sum(s.info.rows for s in shards)
    if rows != size:
        raise SystemExit(f"the index holds {rows} rows, expected {size}")
    offsets = np.cumsum([0] + [s.info.rows for s in shards])[:-1]
    with np.load(work / f"truth-{size}.npz") as z:
        truth = z["i"]
    q = np.load(work / "queries.npy")
    found = np.full((len(q), K), -1, np.int64)
    lat = []

    def unused(i: int, r: np.ndarray) -> Any:
        raise AssertionError("no filter: every shard is searched whole")

    for j in range(len(q)):
        t = time.perf_counter()
        cand = stages.dense(shards, q[j : j + 1], K, None, unused)
        lat.append(time.perf_counter() - t)
        got = offsets[cand.shard] + cand.row
        found[j, : len(got)] = got
    lat_ms = np.asarray(lat) * 1e3
    index_bytes = meta_bytes = 0
    for s in shards:
        index_bytes += s.info.index_file.bytes
        meta_bytes += s.info.meta_file.bytes
        for side in (".json", ".rescore.npy"):
            with contextlib.suppress(FileNotFoundError):
                index_bytes += (
                    (index_dir / "shards" / (s.info.index_file.name + side)).stat().st_size
                )
    params = [s.info.ann for s in shards]
    d = shards[0].index.d
    rss_q = _rss_mb()
    # Where the open time goes: the metadata tables alone, read again (page cache warm).
    t1 = time.perf_counter()
    for s in shards:
        store.read_metadata(index_dir, s.info)
    meta_s = time.perf_counter() - t1
    return {
        "n": rows,
        "mmap": mmap,
        "shards": len(shards),
        "types": sorted({s.info.index_type for s in shards}),
        "nprobe": [
            min(p.get("nprobe", 0) for p in params),
            max(p.get("nprobe", 0) for p in params),
        ],
        "tuned_recall": min(p.get("recall", 0.0) for p in params),
        "index_bytes": index_bytes,
        "float32_bytes": rows * d * 4,
        "meta_bytes": meta_bytes,
        "open_s": open_s,
        "meta_read_s": meta_s,
        "rss_before_mb": rss0.get("VmRSS", 0.0),
        "rss_open_mb": rss_open.get("VmRSS", 0.0),
        "rss_open_anon_mb": rss_open.get("RssAnon", 0.0),
        "rss_after_queries_mb": rss_q.get("VmRSS", 0.0),
        "first_ms": float(lat_ms[0]),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "recall": recall_at_k(found, truth),
        "threads": faiss.omp_get_max_threads(),
    }


# ---------------------------------------------------------------------------------------------
# Building


def _shard_end(rows: int, size: int, shard_rows: int) -> int:
    return min(size, (rows // shard_rows + 1) * shard_rows)


def build_to(
    work: Path, state: dict[str, Any], size: int, mix: Mixture, q: np.ndarray, *, quiet: bool
) -> None:
    """Grow the index at `work` to `size` rows, one committed shard at a time."""
    p = state["params"]
    index_dir = work / "index"
    truth, truth_rows = _load_truth(work / _TRUTH, len(q))
    with store.lock_index(index_dir):
        writer = store.Writer(index_dir)
        shards = list(writer.manifest.shards) if writer.manifest else []
        committed = sum(s.rows for s in shards)
        if committed < state["rows"] or truth_rows > committed:
            sys.exit(f"{work}: the index is behind its state file; use --fresh")
        if committed > state["rows"]:
            # Killed between a commit and saving the state: that shard's build time is lost.
            state["gaps"] += 1
            state["rows"] = committed
        while truth_rows < committed:  # catch up the ground truth from regenerated chunks
            stop = _shard_end(truth_rows, committed, p["chunk"])
            truth = merge_truth(truth, mix.rows(truth_rows, stop, p["chunk"]), truth_rows, q)
            truth_rows = stop
        rows = committed
        while rows < size:
            stop = _shard_end(rows, size, p["shard_rows"])
            t0 = time.perf_counter()
            vectors = mix.rows(rows, stop, p["chunk"])
            meta = synthetic_metadata(rows, stop, p["seed"])
            for a in range(0, stop - rows, p["chunk"]):
                part = vectors[a : a + p["chunk"]]
                truth = merge_truth(truth, part, rows + a, q)
            t1 = time.perf_counter()
            payload = store.ShardPayload("image", vectors, meta, {"key": "none", "value": None})
            shards += writer.write_shard(
                payload, max_rows=p["shard_rows"], index_type=p["index_type"]
            )
            writer.commit(
                shards,
                root=str(work),
                model={"name": "synthetic", "fingerprint": f"mixture-{p['seed']}"},
                dim=p["d"],
            )
            t2 = time.perf_counter()
            del vectors, payload
            rows = stop
            _save_truth(work / _TRUTH, truth, rows)
            state["rows"], state["build_s"] = rows, state["build_s"] + (t2 - t1)
            state["data_s"] += t1 - t0
            _save_json(work / _STATE, state)
            if not quiet:
                print(
                    f"  {rows:>11,} rows  shard {len(shards)}: data+truth {t1 - t0:.1f}s, "
                    f"build {t2 - t1:.1f}s",
                    flush=True,
                )
    # This size's truth, kept for its measurement.
    _save_truth(work / f"truth-{size}.npz", truth, size)


# ---------------------------------------------------------------------------------------------
# Report


def _fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def table(state: dict[str, Any]) -> str:
    """The results so far as a Markdown table."""
    head = (
        "| n | shards (type) | load | build | index bytes (% float32) | metadata | open | "
        "RSS after open | p50 / p99 (k=10) | recall@10 | nprobe |\n"
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for key in sorted(state["results"], key=lambda k: (int(k.split("/")[0]), k)):
        r = state["results"][key]
        b = r["build_s"]
        build = (f"{b:.1f} s" if b < 120 else f"{b / 60:.1f} min") + (
            " (*)" if r.get("gaps") else ""
        )
        lo, hi = r["nprobe"]
        lines.append(
            f"| {r['n']:,} | {r['shards']} ({', '.join(r['types'])}) | {r['label']} | {build} | "
            f"{_fmt_bytes(r['index_bytes'])} ({100 * r['index_bytes'] / r['float32_bytes']:.1f} %) | "
            f"{_fmt_bytes(r['meta_bytes'])} | {r['open_s']:.2f} s (metadata {r['meta_read_s']:.2f} s) | "
            f"{r['rss_open_mb'] / 1024:.2f} GiB | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms | "
            f"{r['recall']:.3f} | {lo}-{hi} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="rows of the largest size")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="*", default=[], help="sizes measured (<= n)")
    ap.add_argument("--work", type=Path, default=None, help="folder of the index and state")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--shard-rows", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-type", default=None, help="override the planned index type")
    ap.add_argument(
        "--mmap",
        choices=("auto", "on", "off"),
        default="auto",
        help="shard loading measured: as the store does (auto), every file mapped, none",
    )
    ap.add_argument(
        "--label", default=None, help="name of this measurement in the table (default: --mmap)"
    )
    ap.add_argument("--fresh", action="store_true", help="delete --work first")
    ap.add_argument("--remeasure", action="store_true", help="measure sizes measured before")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--measure-only", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n <= 0 or a.d <= 0 or a.chunk <= 0 or a.shard_rows <= 0 or a.queries <= 0:
        ap.error("--n, --d, --chunk, --shard-rows and --queries must be positive")
    work = a.work or Path(f"/var/tmp/xretrieve-bench-scale-d{a.d}-s{a.seed}")
    if a.measure_only is not None:  # the subprocess: one size, JSON on stdout
        print(json.dumps(measure(work, a.measure_only, a.mmap)))
        return 0
    sizes = sorted({s for s in a.sizes if 0 < s <= a.n} | {a.n})
    params = {
        "n_max": a.n,
        "d": a.d,
        "seed": a.seed,
        "chunk": a.chunk,
        "shard_rows": a.shard_rows,
        "clusters": a.clusters,
        "queries": a.queries,
        "index_type": a.index_type,
    }
    state = _open_state(work, params, a.fresh)
    mix = Mixture(a.d, a.clusters, a.seed)
    q = mix.queries(a.queries)
    np.save(work / "queries.npy", q)
    if not a.quiet:
        print(f"work folder {work}; sizes {', '.join(f'{s:,}' for s in sizes)}", flush=True)
    for size in sizes:
        label = a.label or f"mmap {a.mmap}"
        key = f"{size}/{label}"
        if key in state["results"] and not a.remeasure:
            continue
        if state["rows"] > size:
            print(f"skipping {size:,}: the index in {work} is already past it (use --fresh)")
            continue
        build_to(work, state, size, mix, q, quiet=a.quiet)
        cmd = [sys.executable, __file__, "--work", str(work), "--measure-only", str(size)]
        out = subprocess.run(
            [*cmd, "--mmap", a.mmap],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.stderr.write(out.stderr)
            sys.exit(f"measuring {size:,} rows failed (exit code {out.returncode})")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(build_s=state["build_s"], data_s=state["data_s"], gaps=state["gaps"])
        result["label"] = label
        state["results"][key] = result
        _save_json(work / _STATE, state)
        if not a.quiet:
            print(json.dumps(result), flush=True)
    print(table(state))
    if a.json:
        a.json.write_text(json.dumps(state["results"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
