"""The GPU path measured: encoder img/s per precision, and FAISS flat search on the GPU vs the CPU.

    python scripts/bench_gpu.py                     # 2,000 JPEGs 640x480, 1M x 512 vectors
    python scripts/bench_gpu.py --images 500 --vectors 200000   # a quicker look
    python scripts/bench_gpu.py --device cpu --images 64 --vectors 20000  # dry run, no GPU

Run by scripts/gpu_check.sh on a machine with an NVIDIA GPU (it prints SKIP and exits 0
without one). Weights do not change speed, so the model is ViT-B-32 with random weights
(pretrained=None: no download). Prints, for fp32, fp16 and bf16 (torch autocast on CUDA):

- raw encoder img/s: `Encoder.encode_pixels` on pixels already decoded and preprocessed (the
  GPU's own pace, host-to-device copies included);
- decode-fed img/s: xretrieve's bounded decode map (`_threads.bounded_map`, one thread per
  core: read, `media.image.decode_image` in JPEG draft mode, the model's preprocessing)
  feeding `encode_pixels` batch by batch, i.e. what the CPU can feed the GPU;
- indexer img/s: `xretrieve.indexer.index_folder` end to end on the same folder (decode,
  encode, the FAISS index and the Parquet metadata written), a full rebuild each time;
- agreement: the lowest cosine of each precision's rows with the GPU's fp32 rows.

Then FAISS on 1M x 512 clustered float32 unit vectors, flat inner product, through the
project's own switch (`store.ann.build_index(..., use_gpu=True)`, `store.ann.search`): build
seconds, search latency p50/p99 at batch 1 and batch 64 on the GPU and on the CPU, and the
CPU-vs-GPU agreement of the top-10 (ids equal, top-1 equal, largest score difference).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image

from xretrieve.store.ann.gpu import faiss_gpu_problem

MODEL = "ViT-B-32"
PRECISIONS = ("fp32", "fp16", "bf16")
JPEG_SIZE = (640, 480)


def line(label: str, value: str) -> None:
    """One result line: a fixed-width label, then the value."""
    print(f"{label:<34} {value}", flush=True)


def _photo(args: tuple[Path, int]) -> None:
    """One photo-like JPEG: gradient, a few blocks, sensor noise (compresses like a photo)."""
    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = rng.uniform(-80, 80, (2, 3)).astype(np.float32)
    img = rng.uniform(40, 200, 3).astype(np.float32) + xx[..., None] / w * grad[0]
    img += yy[..., None] / h * grad[1]
    for _ in range(5):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        img[y0 : y0 + int(rng.integers(30, 240)), x0 : x0 + int(rng.integers(30, 320))] = (
            rng.uniform(0, 255, 3)
        )
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_photos(folder: Path, n: int) -> list[Path]:
    """`n` JPEGs of JPEG_SIZE in `folder`, made in threads (numpy and PIL release the GIL)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(n)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_photo, [(p, i) for i, p in enumerate(paths)]))
    return paths


def load(precision: str, batch_size: int, device: str) -> Any:
    """ViT-B-32 (random, seeded weights) on `device` in `precision`."""
    from xretrieve.encoders.factory import load_encoder

    return load_encoder(
        MODEL, pretrained=None, device=device, batch_size=batch_size, precision=precision
    )


def sync() -> None:
    """Wait for queued GPU work, so that timings hold all of it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decoder(enc: Any) -> Callable[[Path], torch.Tensor]:
    """What one decode thread does for a file: read, decode (draft mode), preprocess."""
    from xretrieve.media.image import decode_image

    size = enc.spec.image_size

    def one(path: Path) -> torch.Tensor:
        return enc.preprocess(decode_image(path.read_bytes(), path=path, target_size=size).image)

    return one


def decode_fed(enc: Any, files: list[Path]) -> float:
    """img/s of the bounded decode map feeding `encode_pixels` batch by batch."""
    from xretrieve._threads import bounded_map, default_workers

    bs = enc.batch_size
    t0 = time.perf_counter()
    pixels = bounded_map(decoder(enc), files, workers=default_workers(), window=4 * bs)
    try:
        for start in range(0, len(files), bs):
            enc.encode_pixels(torch.stack([next(pixels) for _ in files[start : start + bs]]))
    finally:
        pixels.close()
    sync()
    return len(files) / (time.perf_counter() - t0)


def indexer_rate(enc: Any, folder: Path, out: Path) -> str:
    """img/s of `index_folder` on `folder` (a full rebuild), or why it could not run."""
    try:
        from xretrieve.indexer import IndexOptions, index_folder

        t0 = time.perf_counter()
        report = index_folder(
            folder,
            out,
            encoder=enc,
            options=IndexOptions(batch_size=enc.batch_size, progress=False, full=True),
        )
        rate = report.images / (time.perf_counter() - t0)
    except Exception as e:  # a benchmark reports what broke and goes on
        return f"FAILED ({type(e).__name__}: {str(e)[:120]})"
    failed = f", {report.failed} failed" if report.failed else ""
    return f"{rate:8.1f}   ({report.images} images{failed})"


def bench_encoder(args: argparse.Namespace, work: Path) -> None:
    """Encoder img/s per precision: raw, decode-fed and through the indexer."""
    print(
        f"\n== encoder: {MODEL} (random weights), batch {args.batch_size}, {args.device}",
        flush=True,
    )
    t0 = time.perf_counter()
    files = make_photos(work / "photos", args.images)
    line(
        "images",
        f"{len(files)} JPEGs {JPEG_SIZE[0]}x{JPEG_SIZE[1]} ({time.perf_counter() - t0:.1f} s to make)",
    )
    line("decode threads", str(os.cpu_count()))
    line("TF32 matmul in fp32", str(torch.backends.cuda.matmul.allow_tf32))
    reference: np.ndarray | None = None
    pixels: torch.Tensor | None = None
    for precision in PRECISIONS if args.device == "cuda" else ("fp32",):
        try:
            enc = load(precision, args.batch_size, args.device)
        except Exception as e:
            line(f"[{precision}] load", f"FAILED ({type(e).__name__}: {str(e)[:160]})")
            continue
        if pixels is None:
            from xretrieve._threads import bounded_map, default_workers

            t0 = time.perf_counter()
            pixels = torch.stack(
                list(bounded_map(decoder(enc), files, workers=default_workers(), window=256))
            )
            line(
                "decode + preprocess only",
                f"{len(files) / (time.perf_counter() - t0):8.1f} img/s (CPU, all threads)",
            )
        enc.encode_pixels(pixels[: 2 * args.batch_size])  # warm-up: kernels, autocast caches
        sync()
        t0 = time.perf_counter()
        rows = enc.encode_pixels(pixels)
        sync()
        raw = len(pixels) / (time.perf_counter() - t0)
        line(f"[{precision}] raw encoder img/s", f"{raw:8.1f}")
        line(f"[{precision}] decode-fed img/s", f"{decode_fed(enc, files):8.1f}")
        line(
            f"[{precision}] indexer img/s",
            indexer_rate(enc, work / "photos", work / f"idx-{precision}"),
        )
        if reference is None:
            reference = rows
        else:
            cos = (reference * rows).sum(axis=1)
            line(f"[{precision}] cosine vs fp32", f"min {cos.min():.5f}  mean {cos.mean():.5f}")
        del enc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def clustered(n: int, d: int, *, clusters: int = 1024, seed: int = 0) -> np.ndarray:
    """`n` float32 unit vectors around `clusters` random centres (like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(0.6 / np.sqrt(d))
    x += centres[rng.integers(0, clusters, n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latencies(
    search: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int, reps: int
) -> str:
    """p50 / p99 milliseconds of `search` on `reps` batches of `batch` queries."""
    search(queries[:batch])  # warm-up
    times = []
    for r in range(reps):
        start = (r * batch) % (len(queries) - batch + 1)
        t0 = time.perf_counter()
        search(queries[start : start + batch])
        times.append(1000 * (time.perf_counter() - t0))
    p50, p99 = np.percentile(times, [50, 99])
    return f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  ({batch * 1000 / p50:9.0f} q/s, {reps} runs)"


def torch_flat(x: np.ndarray, queries: np.ndarray, k: int) -> None:
    """The same flat search as one matmul + top-k in torch on the GPU: what the GPU can do."""
    xb = torch.from_numpy(x).cuda()

    def search(q: np.ndarray) -> Any:
        s, i = torch.topk(torch.from_numpy(q).cuda() @ xb.T, k, dim=1)
        return s.cpu().numpy(), i.cpu().numpy()

    line("torch GPU batch 1 (reference)", latencies(search, queries, 1, 1000))
    line("torch GPU batch 64 (reference)", latencies(search, queries, 64, 200))


def bench_faiss(args: argparse.Namespace) -> None:
    """Flat inner-product search on 1M x 512 through the project's switch: GPU vs CPU."""
    from xretrieve.store import ann

    n, d, k = args.vectors, 512, 10
    print(f"\n== FAISS: flat inner product, {n:,} x {d} clustered float32, k={k}", flush=True)
    problem = faiss_gpu_problem()
    line("FAISS GPUs", f"{ann.faiss_gpu_count()}")
    if problem is not None:
        line("FAISS GPU part", f"SKIPPED: {problem}")
    t0 = time.perf_counter()
    x = clustered(n, d)
    queries = clustered(2048, d, seed=1)
    line("vectors made", f"{time.perf_counter() - t0:.1f} s")
    plan = ann.plan_index(n, d, index_type="flat")
    gpu = None
    if problem is None:
        t0 = time.perf_counter()
        gpu = ann.build_index(x, plan, use_gpu=True)
        line("GPU build (copy + add)", f"{time.perf_counter() - t0:.2f} s  on_gpu={gpu.on_gpu}")
        line("GPU batch 1", latencies(lambda q: ann.search(gpu, q, k), queries, 1, 1000))
        line("GPU batch 64", latencies(lambda q: ann.search(gpu, q, k), queries, 64, 200))
    if torch.cuda.is_available():
        torch_flat(x, queries, k)
    t0 = time.perf_counter()
    cpu = ann.build_index(x, plan, use_gpu=False)
    line("CPU build", f"{time.perf_counter() - t0:.2f} s  ({faiss.omp_get_max_threads()} threads)")
    line("CPU batch 1", latencies(lambda q: ann.search(cpu, q, k), queries, 1, args.cpu_reps))
    line(
        "CPU batch 64",
        latencies(lambda q: ann.search(cpu, q, k), queries, 64, max(3, args.cpu_reps // 5)),
    )
    if gpu is not None:
        q = queries[:256]
        gs, gi = ann.search(gpu, q, k)
        cs, ci = ann.search(cpu, q, k)
        line(
            "CPU vs GPU agreement (256 q)",
            f"top-10 ids equal {np.mean(gi == ci):.4f}  top-1 equal {np.mean(gi[:, 0] == ci[:, 0]):.4f}"
            f"  max |score diff| {np.abs(gs - cs).max():.2e}",
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--cpu-reps", type=int, default=50, help="batch-1 searches timed on the CPU")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run")
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--skip-faiss", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no NVIDIA GPU (torch.cuda.is_available() is False)")
        return 0
    print("== bench_gpu", flush=True)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        line(
            "GPU",
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)",
        )
    line(
        "torch / CUDA / faiss", f"{torch.__version__} / {torch.version.cuda} / {faiss.__version__}"
    )
    line("CPU cores", str(os.cpu_count()))
    work = Path(tempfile.mkdtemp(prefix="xr-bench-gpu-"))
    t_all = time.perf_counter()
    try:
        if not args.skip_encoder:
            bench_encoder(args, work)
        if not args.skip_faiss:
            bench_faiss(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    line("bench total", f"{time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
