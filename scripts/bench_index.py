"""Indexing throughput against the encoder's own speed, measured side by side in one run.

    .venv/bin/python scripts/bench_index.py                       # 64 photo-like 1 MP JPEGs
    .venv/bin/python scripts/bench_index.py --kind 12mp --images 32
    .venv/bin/python scripts/bench_index.py --model runs/demo/model --pretrained none
    .venv/bin/python scripts/bench_index.py --precision int8 --workers 1 2 --threads 1 2

Prints: raw encoder forward img/s on already preprocessed pixels; decode ms/image with and
without JPEG draft mode (one thread); the pipeline ceiling = cores / (decode core-s/img +
encoder core-s/img); end-to-end `xretrieve` indexing img/s on the same files; and the ratios
achieved/raw-encoder and achieved/ceiling. Weights do not change speed, so the default is
ViT-B-32 with random weights (no download needed).

With ``--precision bf16|int8`` the same is measured for that precision's encoder, beside the
fp32 raw rate of the same model in the same run (the issue's baseline). ``--workers`` and
``--threads`` take several values: every (decode workers, encoder threads) pair is indexed
end to end, to choose the defaults.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench_common import photo_array
from PIL import Image

from xretrieve.encoders import load_encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.media.image import decode_image

SIZES = {"small": (1024, 768), "12mp": (4000, 3000)}


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """Photo-like JPEGs: smooth gradients, blobs and sensor noise (compress like real photos)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(photo_array(rng, size)).save(folder / f"photo_{i:05d}.jpg", quality=90)


def decode_ms(files: list[Path], *, target: int, draft: bool) -> float:
    """Mean single-thread ms to read + decode + reduce one file (draft mode on or off)."""
    t0 = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        if draft:
            decode_image(data, path=f, target_size=target)
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB").resize((target, target), Image.Resampling.BICUBIC)
    return 1000 * (time.perf_counter() - t0) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--kind", choices=sorted(SIZES), default="small")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the generated folder here")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="decode threads to try")
    ap.add_argument("--threads", type=int, nargs="*", default=[], help="encoder threads to try")
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)

    def encoder(precision: str, threads: int | None = None) -> object:
        return load_encoder(
            args.model,
            pretrained=args.pretrained,
            device="cpu",
            batch_size=args.batch_size,
            precision=precision,
            threads=threads,
        )

    enc: Any = encoder(args.precision)
    fp32: Any = enc if args.precision == "fp32" else encoder("fp32")
    target = enc.spec.image_size

    work = Path(tempfile.mkdtemp(prefix="xr-bench-"))
    folder = args.keep or work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) < args.images:
        print(f"generating {args.images} {args.kind} JPEGs {SIZES[args.kind]} ...", flush=True)
        make_photos(folder, args.images, SIZES[args.kind])
    files = sorted(folder.glob("*.jpg"))[: args.images]

    sample = files[: min(16, len(files))]
    dec_draft = decode_ms(sample, target=target, draft=True)
    dec_plain = decode_ms(sample, target=target, draft=False)

    pixels = torch.stack(
        [enc.preprocess(decode_image(f.read_bytes(), target_size=target).image) for f in files]
    )

    def raw_rate(e: Any) -> float:
        e.encode_pixels(pixels[: args.batch_size])  # warm-up
        t0 = time.perf_counter()
        e.encode_pixels(pixels)
        return len(files) / (time.perf_counter() - t0)

    raw = raw_rate(enc)
    raw_fp32 = raw if fp32 is enc else raw_rate(fp32)

    idx = work / "index"
    t0 = time.perf_counter()
    report = index_folder(
        folder,
        idx,
        encoder=enc,
        options=IndexOptions(batch_size=args.batch_size, progress=False, full=True),
    )
    e2e = report.images / (time.perf_counter() - t0)
    if report.failed:
        print(f"warning: {report.failed} files failed: {report.problems[:3]}")

    encoder_core_s = cores / raw  # torch keeps every core busy during a forward pass
    ceiling = cores / (dec_draft / 1000 + encoder_core_s)
    print(
        f"model                      {enc.spec.name} ({target}px), batch {args.batch_size}, {cores} cores"
    )
    print(f"images                     {len(files)} x {args.kind} {SIZES[args.kind]}")
    print(f"decode ms/img (draft)      {dec_draft:8.1f}")
    print(
        f"decode ms/img (plain)      {dec_plain:8.1f}   draft speed-up {dec_plain / dec_draft:.1f}x"
    )
    print(f"raw encoder img/s          {raw:8.2f}   ({1000 * encoder_core_s:.0f} core-ms/img)")
    print(
        f"pipeline ceiling img/s     {ceiling:8.2f}   = cores / (decode + encoder core-s per image)"
    )
    print(f"end-to-end index img/s     {e2e:8.2f}")
    print(f"ratio e2e / raw encoder    {e2e / raw:8.2f}")
    print(f"ratio e2e / ceiling        {e2e / ceiling:8.2f}")
    if fp32 is not enc:
        print(f"precision                  {args.precision}")
        print(f"fp32 raw encoder img/s     {raw_fp32:8.2f}")
        print(f"ratio raw / fp32 raw       {raw / raw_fp32:8.2f}")
        print(f"ratio ceiling / fp32 raw   {ceiling / raw_fp32:8.2f}")
        print(f"ratio e2e / fp32 raw       {e2e / raw_fp32:8.2f}")
    if args.workers or args.threads:
        print("\n| decode workers | encoder threads | end-to-end img/s |\n| --- | --- | --- |")
        for w in args.workers or [None]:
            for t in args.threads or [None]:
                e = encoder(args.precision, t) if args.precision != "fp32" else fp32
                if args.precision == "fp32":
                    torch.set_num_threads(t or cores)
                shutil.rmtree(idx, ignore_errors=True)
                e.encode_pixels(pixels[:2])  # compile outside the timing
                t0 = time.perf_counter()
                r = index_folder(
                    folder,
                    idx,
                    encoder=e,
                    options=IndexOptions(
                        batch_size=args.batch_size, progress=False, full=True, workers=w
                    ),
                )
                rate = r.images / (time.perf_counter() - t0)
                print(f"| {w or 'default'} | {t or 'default'} | {rate:.2f} |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(idx, ignore_errors=True)


if __name__ == "__main__":
    main()
