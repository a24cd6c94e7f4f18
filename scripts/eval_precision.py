"""Are bf16 and int8 vectors as good as fp32 ones? Cosines, top-10 agreement and held-out recall.

    .venv/bin/python scripts/eval_precision.py --model runs/demo/model --world runs/demo/world
    .venv/bin/python scripts/eval_precision.py --model ViT-B-32 --pretrained none \\
        --world runs/demo/world --n 200

For each precision (default bf16 and int8) against fp32, on the first --n images of the
held-out split and all their captions, every vector made through `load_encoder(...,
precision=p)` and xretrieve's own evaluation encoders (`encode_eval_images`,
`encode_eval_texts`):

- cosine between the fp32 and the p vector of the same image / the same caption (mean, 1st
  percentile over rows);
- top-10 agreement: an exact fp32 gallery of the images (fp32 vectors, inner product) queried
  with the fp32 and with the p vector of every caption; mean |top10_fp32 & top10_p| / 10;
- held-out R@1 / R@5 both ways in fp32 and in p, and the largest R@1 difference. A world made
  by `xretrieve make-world` (a folder with labels.jsonl) is scored as `xretrieve eval` scores
  it (relevant = same set of concepts: `evaluate.world_split`, `relevance_matrix`,
  `recall_at_k`); any other image-caption set `load_eval_set` reads is scored by the standard
  protocol (`retrieval.recall_both_ways`). With random weights (--pretrained none) recall is
  at chance level and says nothing; the cosines and the agreement still do.

XRETRIEVE_CACHE points at a fresh temporary folder unless --cache is given; a model folder's
towers are converted inside that folder (xretrieve's rule). Prints a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import NA, cos_stats, default_threads, markdown

KS = (1, 5, 10)
TOP = 10


@dataclass(frozen=True)
class Heldout:
    """The images and captions scored, and how recall is computed on their vectors."""

    kind: str  # "world" or the eval set's layout
    images: list[Path]
    captions: list[str]
    # world: relevance matrix captions x images; other sets: caption -> image index
    relevant: Any
    caption_image: Any

    def recall(self, img: np.ndarray, txt: np.ndarray) -> tuple[dict[int, float], ...]:
        """(text->image, image->text) R@K of these vectors."""
        if self.kind == "world":
            from xretrieve.train.evaluate import recall_at_k

            sim = txt @ img.T
            return recall_at_k(sim, self.relevant, KS), recall_at_k(sim.T, self.relevant.T, KS)
        from xretrieve.train.retrieval import recall_both_ways

        return recall_both_ways(img, txt, self.caption_image, ks=KS)

    def chance(self) -> tuple[dict[int, float], ...]:
        if self.kind == "world":
            from xretrieve.train.evaluate import chance_recall_at_k

            return chance_recall_at_k(self.relevant, KS), chance_recall_at_k(self.relevant.T, KS)
        from xretrieve.train.retrieval import chance_both_ways

        return chance_both_ways(self.caption_image, len(self.images), ks=KS)


def load_heldout(where: Path, split: str | None, n: int) -> Heldout:
    """The first `n` images of `split` (and their captions): a world, or any eval set."""
    if (where / "labels.jsonl").is_file():
        from xretrieve.train.evaluate import relevance_matrix, world_split

        ws = world_split(where, split or "test")
        labels = ws.labels[:n]
        caps = [c for lab in labels for c in lab.captions]
        keys = ws.keys[: len(labels)]
        cap_keys = ws.caption_keys[: len(caps)]  # captions are listed label by label
        return Heldout(
            "world",
            [ws.root / lab.path for lab in labels],
            caps,
            relevance_matrix(cap_keys, keys),
            None,
        )
    from xretrieve.train.datasets import load_eval_set

    ds = load_eval_set(where, split=split)
    keep = ds.caption_image < n
    return Heldout(
        ds.layout,
        ds.images[:n],
        [c for c, k in zip(ds.captions, keep, strict=True) if k],
        None,
        ds.caption_image[keep],
    )


def top_k_agreement(gallery: np.ndarray, ref: np.ndarray, other: np.ndarray, k: int) -> float:
    """Mean share of the top-k gallery items that queries `ref` and `other` have in common."""
    k = min(k, len(gallery))
    shared = []
    for start in range(0, len(ref), 4096):
        sl = slice(start, start + 4096)
        a = np.argpartition(-(ref[sl] @ gallery.T), k - 1, axis=1)[:, :k]
        b = np.argpartition(-(other[sl] @ gallery.T), k - 1, axis=1)[:, :k]
        shared += [len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    return float(np.mean(shared))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="architecture name or model folder")
    ap.add_argument("--pretrained", default="none", help="pretrained tag/file, or none")
    ap.add_argument("--world", type=Path, required=True, help="world folder or eval set")
    ap.add_argument("--split", default="test", help="none: a set that names no splits")
    ap.add_argument("--n", type=int, default=1000, help="images of the split used (first n)")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="default: every core allowed")
    ap.add_argument("--cache", type=Path, default=None, help="XRETRIEVE_CACHE (default: temp)")
    args = ap.parse_args()
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    model = args.model
    if Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    threads = args.threads or default_threads()
    work = Path(tempfile.mkdtemp(prefix="xr-eval-prec-"))
    os.environ["XRETRIEVE_CACHE"] = str((args.cache or work / "cache").resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run(args, model, pretrained, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a --cache folder lies elsewhere and stays


def run(args: argparse.Namespace, model: str, pretrained: str | None, threads: int) -> None:
    import torch

    from xretrieve.encoders import load_encoder
    from xretrieve.train.retrieval import encode_eval_images, encode_eval_texts

    torch.set_num_threads(threads)
    split = None if args.split.lower() == "none" else args.split
    data = load_heldout(args.world, split, args.n)
    t2i_c, i2t_c = data.chance()
    print(
        f"# eval_precision: model {args.model} pretrained {args.pretrained}, {args.world} "
        f"split {args.split} ({data.kind}): {len(data.images)} images, "
        f"{len(data.captions)} captions, {threads} threads"
    )
    print(
        f"chance: t->i R@1 {t2i_c[1]:.4f} R@5 {t2i_c[5]:.4f}   "
        f"i->t R@1 {i2t_c[1]:.4f} R@5 {i2t_c[5]:.4f}"
    )
    vecs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in ["fp32", *args.precisions]:
        enc = load_encoder(
            model,
            pretrained=pretrained,
            device="cpu",
            precision=p,
            threads=threads,
            batch_size=args.batch,
        )
        t0 = time.perf_counter()
        enc.encode_texts(data.captions[:1])  # conversion (if missing) and compilation
        t1 = time.perf_counter()
        img = encode_eval_images(enc, data.images, workers=threads, progress=False)
        t2 = time.perf_counter()
        txt = encode_eval_texts(enc, data.captions, progress=False)
        t3 = time.perf_counter()
        vecs[p] = (img, txt)
        print(
            f"{p:5s} {type(enc).__name__:16s} first use {t1 - t0:6.1f} s, one pass (not a benchmark): "
            f"{len(img) / (t2 - t1):8.1f}/s, captions {len(txt) / (t3 - t2):8.1f}/s"
        )
    img32, txt32 = vecs["fp32"]
    r32 = data.recall(img32, txt32)
    rows = []
    for p, (img, txt) in vecs.items():
        ci, ci1 = cos_stats(img32, img)
        ct, ct1 = cos_stats(txt32, txt)
        agree = top_k_agreement(img32, txt32, txt, TOP)
        t2i, i2t = data.recall(img, txt)
        deltas = [t2i[1] - r32[0][1], i2t[1] - r32[1][1]]
        dmax = max(deltas, key=abs)
        print(
            f"{p:5s} cos img {ci:.5f} (p1 {ci1:.5f})  cos text {ct:.5f} (p1 {ct1:.5f})  "
            f"top-{TOP} agreement {agree:.4f}  t->i R@1 {t2i[1]:.4f} R@5 {t2i[5]:.4f}  "
            f"i->t R@1 {i2t[1]:.4f} R@5 {i2t[5]:.4f}  dR@1 t->i {deltas[0]:+.4f} "
            f"i->t {deltas[1]:+.4f}"
        )
        rows.append(
            [
                p,
                f"{ci:.4f}",
                f"{ci1:.4f}",
                f"{ct:.4f}",
                f"{ct1:.4f}",
                f"{agree:.3f}",
                f"{t2i[1]:.3f}",
                f"{t2i[5]:.3f}",
                f"{i2t[1]:.3f}",
                f"{i2t[5]:.3f}",
                NA if p == "fp32" else f"{dmax:+.3f}",
            ]
        )
    print()
    print(
        f"**Precisions against fp32: {Path(args.model).name}, {args.world.name} ({split or 'all'}), "
        f"{len(data.images)} images, {len(data.captions)} captions**"
    )
    print()
    print(
        markdown(
            [
                "precision",
                "cos mean (img)",
                "cos p1 (img)",
                "cos mean (text)",
                "cos p1 (text)",
                f"top-{TOP} agreement",
                "t→i R@1",
                "R@5",
                "i→t R@1",
                "R@5",
                "ΔR@1 max",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
