"""Query-layer latency: p50/p99 per query kind on a synthetic 100k index, and a caption corpus.

    .venv/bin/python scripts/bench_query.py                      # 100k items, d=512
    .venv/bin/python scripts/bench_query.py --corpus 1000000     # + 1M captions, tiny model

Part 1 writes shards directly (clustered random vectors + synthetic metadata through
`store.write_generation`), so it measures search, not encoding; query encoding is timed
separately with the tiny model (and the demo model when runs/demo/model exists). Part 2
streams a generated caption file through `add_captions` with the tiny model, then times
image -> caption lookups over it. Latencies exclude query encoding. The machine is shared:
numbers are noisy, run twice before trusting a difference.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from xretrieve import store
from xretrieve.encoders import Encoder, load_encoder
from xretrieve.query import Index, SearchOptions

TOPICS = [
    "beach",
    "mountain",
    "forest",
    "city",
    "river",
    "desert",
    "harbour",
    "garden",
    "market",
    "stadium",
    "bridge",
    "castle",
    "island",
    "lake",
    "meadow",
    "canyon",
    "village",
    "airport",
    "museum",
    "temple",
]
THINGS = [
    "dog",
    "cat",
    "bicycle",
    "boat",
    "car",
    "kite",
    "umbrella",
    "tree",
    "tower",
    "horse",
    "bench",
    "lamp",
    "train",
    "bird",
    "flower",
    "statue",
    "tent",
    "balloon",
    "fountain",
    "truck",
]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown"]


def _metadata(n: int, rng: np.random.Generator, topic: np.ndarray) -> pa.Table:
    thing = rng.integers(0, len(THINGS), n)
    colour = rng.integers(0, len(COLOURS), n)
    year = rng.integers(2015, 2025, n)
    width = rng.choice([640, 800, 1024, 1920, 4000], n)
    captions = [
        f"a {COLOURS[c]} {THINGS[t]} at the {TOPICS[p]}"
        for c, t, p in zip(colour, thing, topic, strict=True)
    ]
    paths = [
        f"{TOPICS[p]}/{y}/{THINGS[t]}_{i:06d}.jpg"
        for i, (p, y, t) in enumerate(zip(topic, year, thing, strict=True))
    ]
    cols: dict[str, Any] = {
        "path": paths,
        "modality": ["image"] * n,
        "caption": captions,
        "width": width.tolist(),
        "height": (width * 3 // 4).tolist(),
        "bytes": rng.integers(50_000, 5_000_000, n).tolist(),
        "mtime": [datetime(int(y), 6, 1, tzinfo=UTC) for y in year],
        "folder": [TOPICS[p] for p in topic],
        "year": year.tolist(),
        "shard": [""] * n,
        "row": [0] * n,
    }
    return pa.Table.from_arrays(
        [
            pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
            for f in store.METADATA_SCHEMA
        ],
        schema=store.METADATA_SCHEMA,
    )


def build_items(path: Path, n: int, d: int, encoder: Encoder, seed: int = 0) -> float:
    """Write an index of n clustered vectors (one cluster per topic x thing) in one shard."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(TOPICS) * len(THINGS), d)).astype(np.float32)
    topic = rng.integers(0, len(TOPICS), n)
    meta = _metadata(n, rng, topic)
    thing = np.array(
        [THINGS.index(p.split("/")[2].split("_")[0]) for p in meta["path"].to_pylist()]
    )
    x = centres[topic * len(THINGS) + thing] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    model = {**encoder.spec.to_dict(), "dim": d}
    t0 = time.perf_counter()
    store.write_generation(
        path,
        root=str(path),
        model=model,
        dim=d,
        payloads=[store.ShardPayload("image", x, meta)],
    )
    return time.perf_counter() - t0


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def time_kind(
    run: Callable[[int], Any], n_queries: int, warmup: int = 5
) -> tuple[dict[str, float], dict[str, float]]:
    """p50/p99 wall ms of `run(i)` and the median of each stage timing it reports."""
    for i in range(warmup):
        run(i)
    ms, stages = [], {}
    for i in range(n_queries):
        t0 = time.perf_counter()
        hits = run(warmup + i)
        ms.append((time.perf_counter() - t0) * 1000.0)
        for stage, v in hits.timings.items():
            stages.setdefault(stage, []).append(v)
    return _pct(ms), {s: round(float(np.median(v)), 3) for s, v in stages.items()}


def bench_items(args: argparse.Namespace, encoder: Encoder, work: Path) -> dict[str, Any]:
    path = work / "items"
    build_s = build_items(path, args.n, args.dim, encoder)
    manifest = store.read_manifest(path)
    idx = Index(path, manifest, encoder)  # vectors are synthetic: queries are vectors too
    rng = np.random.default_rng(1)
    shard = idx.shards("image")[0]
    from xretrieve.store import ann

    base = ann.reconstruct_vectors(shard.index, rng.integers(0, args.n, 1000))
    queries = base + 0.3 * rng.standard_normal(base.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    texts = [
        f"{COLOURS[rng.integers(10)]} {THINGS[rng.integers(20)]} {TOPICS[rng.integers(20)]}"
        for _ in range(1000)
    ]
    t0 = time.perf_counter()
    idx._lexical_index(idx.shards("image"), "image")
    lexical_build_s = time.perf_counter() - t0

    def where(i: int) -> str:
        # A different expression per query: the allowed-row cache never helps.
        return f"width >= {1000 + i % 997} AND path LIKE '%{2015 + i % 10}%'"

    kinds: dict[str, Callable[[int], Any]] = {
        "dense": lambda i: idx.search_vector(queries[i % 1000 : i % 1000 + 1], k=10),
        "dense+rerank": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1], k=10, options=SearchOptions(rerank=True)
        ),
        "hybrid(rrf)+rerank": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1],
            k=10,
            text=texts[i % 1000],
            options=SearchOptions(hybrid=True, rerank=True),
        ),
        "hybrid(convex)+rerank": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1],
            k=10,
            text=texts[i % 1000],
            options=SearchOptions(hybrid=True, rerank=True, fusion="convex"),
        ),
        "dense+where": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1], k=10, options=SearchOptions(where=where(i))
        ),
        "dense+where(cached)": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1], k=10, options=SearchOptions(where=where(0))
        ),
        "hybrid+rerank+where": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1],
            k=10,
            text=texts[i % 1000],
            options=SearchOptions(hybrid=True, rerank=True, where=where(i)),
        ),
        "dense+mmr(0.7)": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1], k=10, options=SearchOptions(mmr=0.7)
        ),
        "dense+dedup(0.95)": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1], k=10, options=SearchOptions(dedup=0.95)
        ),
        "hybrid+rerank+where+mmr": lambda i: idx.search_vector(
            queries[i % 1000 : i % 1000 + 1],
            k=10,
            text=texts[i % 1000],
            options=SearchOptions(hybrid=True, rerank=True, where=where(i), mmr=0.7),
        ),
    }
    results: dict[str, Any] = {"where_recall@10": _where_recall(idx, queries, where, 100)}
    print(f"  filtered recall@10 vs exact: {results['where_recall@10']:.3f}", flush=True)
    for name, run in kinds.items():
        lat, stages = time_kind(run, args.queries)
        results[name] = {**{k: round(v, 3) for k, v in lat.items()}, "stages_p50_ms": stages}
        print(f"  {name:26s} p50 {lat['p50']:7.2f} ms  p99 {lat['p99']:7.2f} ms", flush=True)
    results["deletions"] = bench_deletions(path, work, idx, queries, args, kinds["dense"])
    return {
        "n": args.n,
        "dim": args.dim,
        "index_type": manifest.shards[0].index_type,
        "ann": manifest.shards[0].ann,
        "build_s": round(build_s, 1),
        "lexical_build_s": round(lexical_build_s, 1),
        "latency_ms": results,
    }


def bench_deletions(
    path: Path,
    work: Path,
    idx: Index,
    queries: np.ndarray,
    args: argparse.Namespace,
    dense: Callable[[int], Any],
) -> dict[str, Any]:
    """Delete 1 % of the rows: a deleted-row list against rewriting the shard, side by side.

    Times landing the new generation both ways, then dense search on the listed generation
    against the untouched one, and checks that no deleted row is ever returned.
    """
    from xretrieve.store import ann

    m = store.read_manifest(path)
    info = m.shards[0]
    rng = np.random.default_rng(2)
    gone = np.sort(rng.choice(info.rows, info.rows // 100, replace=False)).astype(np.int64)
    t0 = time.perf_counter()
    with store.lock_index(path):
        w = store.Writer(path)
        w.commit([w.write_deletions(info, gone)], root=m.root, model=m.model, dim=m.dim)
    list_s = time.perf_counter() - t0
    shard = idx.shards("image")[0]
    keep = np.setdiff1d(np.arange(info.rows), gone)
    vecs, meta = ann.reconstruct_vectors(shard.index, keep), shard.metadata.take(pa.array(keep))
    t0 = time.perf_counter()
    store.write_generation(
        work / "rewritten",
        root=m.root,
        model=m.model,
        dim=m.dim,
        payloads=[store.ShardPayload("image", vecs, meta)],
    )
    rewrite_s = time.perf_counter() - t0
    listed = Index(path, store.read_manifest(path), idx.encoder)
    deleted = set(gone.tolist())
    for i in range(200):
        hits = listed.search_vector(queries[i : i + 1], k=10)
        assert len(hits) == 10 and not {h.metadata["row"] for h in hits} & deleted
    q = lambda i: listed.search_vector(queries[i % 1000 : i % 1000 + 1], k=10)  # noqa: E731
    # Side by side, interleaved in blocks, so that machine noise hits both alike.
    plain, with_list = [], []
    for _ in range(3):
        plain.append(time_kind(dense, args.queries // 3)[0]["p50"])
        with_list.append(time_kind(q, args.queries // 3)[0]["p50"])
    out = {
        "deleted_rows": len(gone),
        "land_with_list_s": round(list_s, 3),
        "land_by_rewrite_s": round(rewrite_s, 2),
        "dense_p50_ms": round(float(np.median(plain)), 3),
        "dense_with_list_p50_ms": round(float(np.median(with_list)), 3),
    }
    print(
        f"  delete 1 % ({len(gone)} rows): land as a list {list_s:.3f} s, by rewriting the "
        f"shard {rewrite_s:.1f} s ({rewrite_s / max(list_s, 1e-9):.0f}x); dense p50 "
        f"{out['dense_p50_ms']:.2f} ms plain vs {out['dense_with_list_p50_ms']:.2f} ms with "
        "the list; no deleted row returned in 200 queries",
        flush=True,
    )
    return out


def _where_recall(idx: Index, queries: np.ndarray, where: Callable[[int], str], n: int) -> float:
    """Mean recall@10 of filtered search against exact search over the matching rows."""
    from xretrieve.query.filters import Filter, parse_where
    from xretrieve.store import ann

    shard = idx.shards("image")[0]
    allv = ann.reconstruct_vectors(shard.index)
    f = Filter()
    got = []
    for i in range(n):
        w = parse_where(where(i), columns=store.METADATA_SCHEMA.names)
        rows = f.allowed_rows(w, "bench", shard.metadata)
        q = queries[i : i + 1]
        truth = set(rows[np.argsort(-(allv[rows] @ q[0]), kind="stable")[:10]].tolist())
        hits = idx.search_vector(q, k=10, options=SearchOptions(where=where(i)))
        found = {h.metadata["row"] for h in hits}
        got.append(len(found & truth) / max(1, min(10, len(rows))))
    return round(float(np.mean(got)), 4)


def bench_encoding(encoder: Encoder, demo: Path | None) -> dict[str, Any]:
    from PIL import Image

    out: dict[str, Any] = {}
    img = Image.new("RGB", (640, 480), (120, 30, 200))
    for name, enc in [("xr-tiny", encoder)] + (
        [("runs/demo/model", load_encoder(str(demo), device="cpu"))] if demo else []
    ):
        t_ms, i_ms = [], []
        for i in range(30):
            t0 = time.perf_counter()
            enc.encode_texts([f"a red circle number {i}"])
            t_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            enc.encode_images([img])
            i_ms.append((time.perf_counter() - t0) * 1000)
        out[name] = {"text": _pct(t_ms[5:]), "image": _pct(i_ms[5:])}
        print(f"  encode {name}: text p50 {out[name]['text']['p50']:.2f} ms, "
              f"image p50 {out[name]['image']['p50']:.2f} ms", flush=True)  # fmt: skip
    return out


def bench_corpus(args: argparse.Namespace, encoder: Encoder, work: Path) -> dict[str, Any]:
    from xretrieve.indexer.corpus import add_captions

    path = work / "captions"
    rng = np.random.default_rng(2)
    seed_meta = _metadata(1, rng, np.array([0]))
    store.write_generation(
        path,
        root=str(work),
        model=encoder.spec.to_dict(),
        dim=encoder.dim,
        payloads=[store.ShardPayload("image", encoder.encode_texts(["seed"]), seed_meta)],
    )
    corpus = work / "captions.txt"
    t0 = time.perf_counter()
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(args.corpus):
            c, t, p = rng.integers(10), rng.integers(20), rng.integers(20)
            f.write(f"a {COLOURS[c]} {THINGS[t]} at the {TOPICS[p]}, photo {i}\n")
    gen_s = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = add_captions(path, corpus, encoder=encoder)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"  add-captions {report.captions} in {report.seconds:.1f} s "
          f"(encode {report.encode_seconds:.1f} s, {report.captions_per_s:.0f}/s)", flush=True)  # fmt: skip
    manifest = store.read_manifest(path)
    idx = Index(path, manifest, encoder)
    from PIL import Image

    img_q = encoder.encode_images([Image.new("RGB", (64, 64), (200, 20, 20))])
    q = img_q + 0.05 * rng.standard_normal((200, encoder.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lat, stages = time_kind(
        lambda i: idx.search_vector(q[i % 200 : i % 200 + 1], k=10, modality="text"),
        args.queries,
    )
    print(
        f"  image->caption over {report.captions}: p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms"
    )
    where = SearchOptions(where="caption LIKE '%red kite%'")
    lat_w, _ = time_kind(
        lambda i: idx.search_vector(q[i % 200 : i % 200 + 1], k=10, modality="text", options=where),
        max(20, args.queries // 10),
    )
    return {
        "captions": report.captions,
        "generate_file_s": round(gen_s, 1),
        "add_captions": report.to_dict(),
        "max_rss_mb_before": round(rss0 / 1024),
        "max_rss_mb_after": round(rss1 / 1024),
        "text_shards": [
            {"rows": s.rows, "index_type": s.index_type}
            for s in manifest.shards
            if s.modality == "text"
        ],
        "image_to_caption_ms": {k: round(v, 3) for k, v in lat.items()},
        "image_to_caption_stages_p50_ms": stages,
        "image_to_caption_where_ms": {k: round(v, 3) for k, v in lat_w.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="indexed items (part 1)")
    ap.add_argument("--dim", type=int, default=512, help="vector dimension (part 1)")
    ap.add_argument("--queries", type=int, default=300, help="timed queries per kind")
    ap.add_argument("--corpus", type=int, default=0, help="captions in part 2 (0: skip)")
    ap.add_argument("--skip-items", action="store_true", help="only part 2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for encoding")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead here
    # The tiny model's small matrices gain nothing from a second thread, and on a shared
    # 2-core machine two spinning threads made text encoding ~10x slower (measured).
    torch.set_num_threads(args.threads)
    encoder = load_encoder("xr-tiny", pretrained=None, device="cpu")
    demo = Path("runs/demo/model")
    out: dict[str, Any] = {"argv": sys.argv[1:]}
    work = Path(tempfile.mkdtemp(prefix="xr-bench-query-"))
    try:
        print("query encoding (excluded from the latencies below):", flush=True)
        out["encoding_ms"] = bench_encoding(encoder, demo if demo.is_dir() else None)
        if not args.skip_items:
            print(f"{args.n} items, d={args.dim}:", flush=True)
            out["items"] = bench_items(args, encoder, work)
        if args.corpus:
            print(f"caption corpus of {args.corpus}:", flush=True)
            out["corpus"] = bench_corpus(args, encoder, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
