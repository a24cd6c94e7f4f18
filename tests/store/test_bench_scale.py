"""Smoke test of scripts/bench_scale.py: a small clustered index built, measured and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_scale.py"
ARGS = ["--n", "20000", "--d", "64", "--clusters", "200", "--chunk", "5000"]
ARGS += ["--shard-rows", "10000", "--queries", "100", "--index-type", "ivf-sq8"]


def _run(*extra: str) -> str:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *ARGS, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _recalls(table: str) -> list[float]:
    rows = [line for line in table.splitlines() if line.startswith("| ") and "," in line]
    return [float(line.split("|")[-3]) for line in rows]


def test_bench_scale_builds_measures_and_resumes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = _run(
        "--work", str(work), "--sizes", "10000", "--mmap", "on", "--json", str(tmp_path / "r.json")
    )
    recalls = _recalls(out)
    assert len(recalls) == 2 and min(recalls) >= 0.9, out
    results = json.loads((tmp_path / "r.json").read_text())
    big = results["20000/mmap on"]
    assert big["shards"] == 2 and big["types"] == ["ivf-sq8"]
    # SQ8 codes + ids + quantizer: about a quarter of float32 at d=64 plus the list ids.
    assert big["index_bytes"] < 0.5 * big["float32_bytes"]
    # Run again: nothing is built or measured again, the same table is printed.
    again = _run("--work", str(work), "--sizes", "10000", "--mmap", "on")
    assert "rows  shard" not in again and _recalls(again) == recalls
    # The ground truth kept while streaming equals exact search over regenerated chunks.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(SCRIPT.parent))
    mix = bench_scale.Mixture(64, 200, 0)
    xb = mix.rows(0, 20000, 5000)
    q = np.load(work / "queries.npy")
    exact = faiss.knn(q, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    with np.load(work / "truth-20000.npz") as z:
        kept = z["i"]
    assert bench_scale.recall_at_k(kept, exact) == 1.0
