"""Cold start of `xretrieve search`: this tree against another checkout, side by side.

    .venv/bin/python scripts/bench_startup.py --index indexes/demo --other /tmp/xr-before

Runs a fresh `python -m xretrieve.cli search ...` process per round, alternating the two
source trees (same venv, PYTHONPATH picks the tree), and prints the medians and their ratio.
Alternating rounds keep a noisy machine's load from favouring one side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def once(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "xretrieve.cli", "search", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tree,
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--other", type=Path, required=True, help="source tree to compare with")
    ap.add_argument("--query", default="a large red circle")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    args = [a.query, "--index", str(a.index.resolve()), "-k", "10", "--json"]
    trees = {"this tree": HERE, "other": a.other.resolve()}
    times: dict[str, list[float]] = {k: [] for k in trees}
    for tree in trees.values():  # warm the page cache for both before timing
        once(tree, args)
    for _ in range(a.rounds):
        for name, tree in trees.items():
            times[name].append(once(tree, args))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:10s} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    print(f"ratio this/other: {med['this tree'] / med['other']:.3f}")


if __name__ == "__main__":
    main()
