"""Re-run speed on an unchanged folder: files/s of a no-op `index` (stat only, no vectors read).

    .venv/bin/python scripts/bench_rescan.py                 # 100k tiny PNGs, xr-tiny model
    .venv/bin/python scripts/bench_rescan.py --files 20000

Builds the folder and its index once (tiny images, tiny random model: the first build is
not what is measured), then times a second run that finds nothing to do.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from xretrieve.encoders import load_encoder
from xretrieve.indexer import IndexOptions, index_folder


def make_folder(folder: Path, n: int, per_dir: int = 1000) -> None:
    """`n` distinct 8x8 PNGs, `per_dir` to a sub-folder."""
    for i in range(n):
        d = folder / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(
            buf, format="PNG"
        )
        (d / f"img{i:07d}.png").write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the work folder here")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="xr-rescan-"))
    folder, idx = work / "media", work / "index"
    if not folder.exists():
        t0 = time.perf_counter()
        make_folder(folder, args.files)
        print(f"made {args.files} files in {time.perf_counter() - t0:.0f}s", flush=True)
    enc = load_encoder("xr-tiny", pretrained=None, device="cpu", batch_size=256)
    opts = IndexOptions(progress=False, batch_size=256, commit_every=50_000)
    if not (idx / "manifest.json").exists():
        t0 = time.perf_counter()
        first = index_folder(folder, idx, encoder=enc, options=opts)
        print(f"first build: {first.images} images in {time.perf_counter() - t0:.0f}s", flush=True)
    best = 0.0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        r = index_folder(folder, idx, encoder=enc, options=opts)
        dt = time.perf_counter() - t0
        if r.unchanged != r.images + r.texts or r.commits:
            raise SystemExit(f"not a no-op run: {r.to_dict()}")
        rate = r.unchanged / dt
        best = max(best, rate)
        print(f"rescan: {r.unchanged} unchanged files in {dt:.2f}s = {rate:,.0f} files/s")
    print(f"best rescan files/s      {best:,.0f}   (target >= 20,000)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
