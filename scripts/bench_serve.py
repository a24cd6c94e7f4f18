"""HTTP service latency: /api/search by id and by text on a synthetic 100k index, from loopback.

    .venv/bin/python scripts/bench_serve.py                       # 100k items, 3,000 requests
    .venv/bin/python scripts/bench_serve.py --n 5000 --requests 300   # a quick check

Builds the index with `bench_query.build_items` (clustered random unit vectors and synthetic
metadata, no image encoding) at the model's dimension, so text queries embed for real
(random-initialised model: the latency is real, the ranking meaningless). Runs uvicorn in
this process on 127.0.0.1 (a thread) and measures, in one run:

1. overhead: the same searches in-process (`run_search` on the app's generation) and over
   HTTP, alternated one by one from a single client; overhead = HTTP - in-process;
2. load: 16 concurrent clients, a bounded number of requests (half by id, half by text),
   p50/p99, errors, process RSS before and after;
3. thumbnails from the cache: 16 clients fetching already made thumbnails.

The client shares the process (and the GIL) with the server, so numbers are upper bounds;
the machine may be shared: run twice before trusting a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import COLOURS, THINGS, TOPICS, build_items

from xretrieve import store
from xretrieve.encoders import load_encoder
from xretrieve.query import Index
from xretrieve.serve import ServeConfig, create_app
from xretrieve.serve.catalog import ServedIndex
from xretrieve.serve.models import SearchRequest
from xretrieve.serve.search import run_search


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(n: int, ids: list[str], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Alternating by-id and by-text search bodies."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"id": ids[int(rng.integers(len(ids)))], "k": 10})
        else:
            words = (
                f"{COLOURS[rng.integers(10)]} {THINGS[rng.integers(20)]} {TOPICS[rng.integers(20)]}"
            )
            out.append({"text": words, "k": 10})
    return out


def _write_images(root: Path, paths: list[str]) -> None:
    """Real JPEG files for a few rows, so thumbnails can be made and then served from cache."""
    for i, rel in enumerate(paths):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (800, 600), (i * 7 % 255, 90, 160)).save(p, quality=90)


def overhead(app: Any, base: str, bodies: list[dict[str, Any]], token: str) -> dict[str, Any]:
    """In-process vs HTTP for the same searches, alternated one by one."""
    service = app.state.service
    cfg = service.config
    inproc: dict[str, list[float]] = {"id": [], "text": []}
    http: dict[str, list[float]] = {"id": [], "text": []}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
        for i, body in enumerate(bodies):
            kind = "id" if "id" in body else "text"
            gen = service.generation(None)
            t0 = time.perf_counter()
            run_search(gen, SearchRequest(**body), image=None, config=cfg)
            t1 = time.perf_counter()
            r = c.post("/api/search", json=body)
            t2 = time.perf_counter()
            r.raise_for_status()
            if i >= 20:  # warm-up excluded
                inproc[kind].append((t1 - t0) * 1000)
                http[kind].append((t2 - t1) * 1000)
    out = {}
    for kind in ("id", "text"):
        a, b = np.asarray(inproc[kind]), np.asarray(http[kind])
        out[kind] = {
            "in_process_ms": _pct(list(a)),
            "http_ms": _pct(list(b)),
            "overhead_p50_ms": round(float(np.percentile(b, 50) - np.percentile(a, 50)), 3),
            "overhead_median_of_pairs_ms": round(float(np.median(b - a)), 3),
        }
    return out


async def _load(
    base: str, token: str, bodies: list[dict[str, Any]], clients: int
) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"id": [], "text": []}
    errors: dict[str, int] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=60
    ) as c:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await c.post("/api/search", json=body)
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                else:
                    lat["id" if "id" in body else "text"].append(ms)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(bodies),
        "clients": clients,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(bodies) / wall, 1),
        "by_id_ms": _pct(lat["id"]) if lat["id"] else None,
        "by_text_ms": _pct(lat["text"]) if lat["text"] else None,
        "errors": errors,
    }


async def _thumbs(
    base: str, token: str, urls: list[str], total: int, clients: int
) -> dict[str, Any]:
    done = 0
    errors = 0
    async with httpx.AsyncClient(base_url=base, params={"token": token}, timeout=60) as c:
        for u in urls:  # make them once: from here on they come from the cache
            (await c.get(u)).raise_for_status()

        async def worker(w: int) -> None:
            nonlocal done, errors
            for i in range(w, total, clients):
                r = await c.get(urls[i % len(urls)])
                done += r.status_code == 200
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    return {"thumbnails": done, "errors": errors, "per_s": round(done / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="indexed items")
    ap.add_argument("--model", default="xr-small", help="model config (random init)")
    ap.add_argument("--requests", type=int, default=3000, help="requests of the load phase")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--pairs", type=int, default=300, help="in-process/HTTP pairs (overhead)")
    ap.add_argument("--threads", type=int, default=4, help="server worker threads")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    encoder = load_encoder(args.model, pretrained=None, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="xr-bench-serve-"))
    server: uvicorn.Server | None = None
    try:
        path = work / "items"
        build_s = build_items(path, args.n, encoder.dim, encoder)
        manifest = store.read_manifest(path)
        index = Index(path, manifest, encoder)
        meta = index.shards("image")[0].metadata
        _write_images(Path(manifest.root), meta.column("path").to_pylist()[:32])
        token = "bench-token-0123456789"
        cfg = ServeConfig(indexes={"bench": path}, token=token, threads=args.threads,
                          queue=4 * args.clients, device="cpu")  # fmt: skip
        app = create_app(cfg, served={"bench": ServedIndex("bench", index, refresh_interval=1.0)})
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        gen = app.state.service.generation(None)
        rng = np.random.default_rng(0)
        from xretrieve.serve.ids import item_id

        paths, hashes = meta.column("path").to_pylist(), meta.column("content_hash").to_pylist()
        ids = [item_id(paths[i], hashes[i]) for i in rng.integers(0, len(paths), 500)]
        assert gen.find(ids[0]) is not None
        out: dict[str, Any] = {"argv": sys.argv[1:], "n": args.n, "dim": encoder.dim,
                               "index_type": manifest.shards[0].index_type,
                               "build_s": round(build_s, 1)}  # fmt: skip
        print(f"{args.n} items, d={encoder.dim} ({out['index_type']}), built in {build_s:.1f} s")
        out["overhead"] = overhead(app, base, _bodies(args.pairs + 20, ids, rng), token)
        for kind, o in out["overhead"].items():
            print(f"  by {kind:4s}: in-process p50 {o['in_process_ms']['p50']:.2f} ms, HTTP p50 "
                  f"{o['http_ms']['p50']:.2f} ms -> overhead p50 {o['overhead_p50_ms']:.2f} ms")  # fmt: skip
        warm = _bodies(200, ids, rng)
        asyncio.run(_load(base, token, warm, args.clients))
        rss0 = _rss_mb()
        load = asyncio.run(_load(base, token, _bodies(args.requests, ids, rng), args.clients))
        rss1 = _rss_mb()
        out["load"] = {**load, "rss_mb_before": round(rss0), "rss_mb_after": round(rss1)}
        print(f"  load: {load['requests']} requests, {load['clients']} clients, "
              f"{load['requests_per_s']}/s; by id {load['by_id_ms']}, by text {load['by_text_ms']}; "
              f"errors {load['errors'] or 0}; RSS {rss0:.0f} -> {rss1:.0f} MB")  # fmt: skip
        urls = [f"/api/thumb/{item_id(p, None if h is None else h)}?size=256"
                for p, h in zip(paths[:32], hashes[:32], strict=True)]  # fmt: skip
        out["thumbs"] = asyncio.run(_thumbs(base, token, urls, 2000, args.clients))
        print(f"  thumbnails from cache: {out['thumbs']['per_s']}/s "
              f"({out['thumbs']['errors']} errors)")  # fmt: skip
    finally:
        if server is not None:
            server.should_exit = True
            time.sleep(0.3)
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
