"""Crash safety: SIGKILL the indexer at many points, run it again, get exactly the right items."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import faults
import numpy as np
import pytest
from PIL import Image

from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.store import ann

FAULTS_DIR = Path(faults.__file__).resolve().parent

# Small batches, commits and shards so that one run passes every kill point several times.
OPTS = {"progress": False, "batch_size": 2, "commit_every": 3, "max_rows_per_shard": 4}

#: (point, n): SIGKILL at the n-th time the run reaches `point` (see faults.py).
KILL_POINTS = [
    "encoded-batch:1",
    "encoded-batch:3",
    "shard-parquet:1",
    "shard-parquet:4",
    "shard-written:2",
    "shard-written:5",
    "before-manifest:1",
    "before-manifest:3",
    "after-manifest:1",
    "after-manifest:2",
    "after-manifest:3",
    "after-manifest:4",
    "merged-shard:1",
    "merged-shard:3",
    "before-manifest:7",
]

# Loads the model once, then forks one child per run: a killed child, then a resuming one.
# Torch runs single-threaded here so that forking is safe.
DRIVER = r"""
import json, os, random, shutil, signal, sys, time
import torch
torch.set_num_threads(1)
from xretrieve.encoders import load_encoder
from xretrieve.indexer import commit
from xretrieve.indexer import IndexOptions, index_folder

cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["faults_dir"])
import faults
commit.COMPACT_DELETED_FRACTION = cfg.get("deleted_fraction", commit.COMPACT_DELETED_FRACTION)
enc = load_encoder("xr-tiny", pretrained=None, device="cpu", batch_size=2)
opts = IndexOptions(**cfg["opts"])

def run(idx, kill_at=None, delay=None):
    pid = os.fork()
    if pid == 0:
        if kill_at:
            faults.kill_at(kill_at)  # in the child only: the wrappers die with it
        try:
            index_folder(cfg["folder"], idx, encoder=enc, options=opts)
            os._exit(0)
        except BaseException as e:
            print(f"child error: {e!r}", file=sys.stderr)
            os._exit(3)
    if delay is not None:
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

out = {}
for name, kill_at, delay in cfg["scenarios"]:
    idx = os.path.join(cfg["work"], name)
    shutil.copytree(cfg["base"], idx)
    killed = run(idx, kill_at, delay)
    resumed = run(idx)
    out[name] = [killed, resumed]
print(json.dumps(out))
"""


def _rows(idx: Path) -> tuple[list[tuple], dict[tuple, np.ndarray]]:  # type: ignore[type-arg]
    """Every row's identity, and its vector by identity."""
    m = store.read_manifest(idx)
    rows: list[tuple] = []  # type: ignore[type-arg]
    vecs: dict[tuple, np.ndarray] = {}  # type: ignore[type-arg]
    for info in m.shards:
        shard = store.load_shard(idx, info, verify=True)
        v = ann.reconstruct_vectors(shard.index)
        deleted = set(shard.deleted.tolist())
        for i, (r, vec) in enumerate(zip(shard.metadata.to_pylist(), v, strict=True)):
            if i in deleted:
                continue
            key = (r["modality"], r["path"], r["line"])
            rows.append((*key, r["content_hash"], r["caption"], r["image_path"], r["bytes"]))
            vecs[key] = vec
    return sorted(rows, key=str), vecs


def _change_folder(folder: Path, world: Path) -> None:
    """Add, change, rename and delete files, and edit a caption: every kind of work."""
    pngs = sorted(folder.glob("*.png"))
    pngs[0].unlink()
    pngs[0].with_suffix(".txt").unlink()
    with Image.open(pngs[1]) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pngs[1])  # same path, new pixels
    pngs[2].rename(folder / "renamed.png")
    cap = pngs[3].with_suffix(".txt")
    cap.write_text(cap.read_text() + "one more caption line\n")
    (folder / "sub").mkdir()
    for i, src in enumerate(sorted((world / "train").glob("*.png"))[:7]):
        shutil.copy(src, folder / "sub" / f"new{i}.png")
        shutil.copy(src.with_suffix(".txt"), folder / "sub" / f"new{i}.txt")


@pytest.fixture(scope="module")
def resume_setup(
    world_dir: Path, tiny_encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("resume")
    folder = work / "media"
    shutil.copytree(world_dir / "test", folder)
    base = work / "base"
    index_folder(folder, base, encoder=tiny_encoder, options=IndexOptions(**OPTS))
    _change_folder(folder, world_dir)
    fresh = work / "fresh"
    index_folder(folder, fresh, encoder=tiny_encoder, options=IndexOptions(**OPTS))
    return folder, base, fresh


def _drive(
    work: Path,
    folder: Path,
    base: Path,
    scenarios: list[tuple],  # type: ignore[type-arg]
    *,
    opts: dict[str, Any] | None = None,
    **extra: Any,
) -> dict:  # type: ignore[type-arg]
    cfg = {
        "folder": str(folder),
        "base": str(base),
        "work": str(work),
        "opts": {**OPTS, **(opts or {})},
        "scenarios": scenarios,
        "faults_dir": str(FAULTS_DIR),
        **extra,
    }
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert "child error" not in r.stderr, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _check_exact(idx: Path, fresh: Path) -> None:
    want_rows, want_vecs = _rows(fresh)
    got_rows, got_vecs = _rows(idx)
    assert got_rows == want_rows  # none lost, none twice, metadata as a fresh build
    for key, vec in want_vecs.items():
        np.testing.assert_allclose(got_vecs[key], vec, atol=1e-4, err_msg=str(key))
    m = store.read_manifest(idx)
    assert all(s.rows <= OPTS["max_rows_per_shard"] for s in m.shards)
    assert m.stats["last_run"]["failed"] == 0


def test_kill_at_each_point_then_resume(
    resume_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    folder, base, fresh = resume_setup
    scenarios = [(f"k{i}", point, None) for i, point in enumerate(KILL_POINTS)]
    results = _drive(tmp_path, folder, base, scenarios)
    killed = [name for name, (rc, _) in results.items() if rc == -signal.SIGKILL]
    assert len(killed) == len(KILL_POINTS), results  # every fault really fired
    for name, (_, resumed) in results.items():
        assert resumed == 0, (name, results)
        _check_exact(tmp_path / name, fresh)


def test_kill_then_resume_with_deleted_row_lists(
    resume_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Shards of 2+ rows count as big and keep up to 90 % deleted rows: replaced and removed
    rows are listed, not rewritten."""
    folder, base, fresh = resume_setup
    points = ["after-manifest:1", "after-manifest:2", "before-manifest:3", "merged-shard:1"]
    scenarios = [(f"d{i}", point, None) for i, point in enumerate(points)]
    scenarios.append(("d-none", None, None))
    results = _drive(
        tmp_path, folder, base, scenarios, opts={"compact_rows": 2}, deleted_fraction=0.9
    )
    for name, (_, resumed) in results.items():
        assert resumed == 0, (name, results)
        _check_exact(tmp_path / name, fresh)
    listed = store.read_manifest(tmp_path / "d-none")
    assert any(s.deleted_rows for s in listed.shards)  # the lists were really used


@pytest.mark.slow
def test_kill_at_random_times_then_resume(
    resume_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    folder, base, fresh = resume_setup
    rng = np.random.default_rng(0)
    scenarios = [(f"t{i}", None, float(d)) for i, d in enumerate(rng.uniform(0.0, 0.6, 8))]
    results = _drive(tmp_path, folder, base, scenarios)
    assert any(rc == -signal.SIGKILL for rc, _ in results.values()), results
    for name, (_, resumed) in results.items():
        assert resumed == 0, (name, results)
        _check_exact(tmp_path / name, fresh)


def test_every_kill_point_is_reached(
    resume_setup: tuple[Path, Path, Path],
    tiny_encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run the kill tests interrupt passes each point of KILL_POINTS at least n times, so
    every kill scenario really kills (the faults' wrappers sit on live code paths)."""
    folder, base, fresh = resume_setup
    idx = tmp_path / "idx"
    shutil.copytree(base, idx)
    counts = faults.counter(patch=monkeypatch.setattr)
    index_folder(folder, idx, encoder=tiny_encoder, options=IndexOptions(**OPTS))
    for spec in KILL_POINTS:
        point, _, nth = spec.partition(":")
        assert counts[point] >= int(nth), (spec, counts)
    _check_exact(idx, fresh)


# `xretrieve index` run as `python -m xretrieve.cli`, with the kill wrappers installed first.
CLI_KILLED = r"""
import runpy, sys
sys.path.insert(0, sys.argv[1])
import faults
faults.kill_at(sys.argv[2])
sys.argv = ["xretrieve", *sys.argv[3:]]
runpy.run_module("xretrieve.cli", run_name="__main__", alter_sys=True)
"""


def test_killed_cli_run_resumes(
    resume_setup: tuple[Path, Path, Path],
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """The real `xretrieve index` command, killed before its second commit, then run again."""
    folder, base, fresh = resume_setup
    idx = tmp_path / "idx"
    shutil.copytree(base, idx)
    args = ["index", folder, "--index", idx, "--model", "xr-tiny", "--pretrained", "none"]
    args += ["--device", "cpu", "--batch-size", "2", "--commit-every", "3", "--max-rows", "4"]
    r = subprocess.run(
        list(
            map(
                str,
                [
                    sys.executable,
                    "-c",
                    CLI_KILLED,
                    FAULTS_DIR,
                    "before-manifest:2",
                    *args,
                    "--json",
                ],
            )
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert store.read_manifest(idx).generation == store.read_manifest(base).generation + 1
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["unchanged"] > 0 and report["failed"] == 0  # the first commit was kept
    _check_exact(idx, fresh)
