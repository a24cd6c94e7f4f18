"""Class 6: `index --full` never publishes a partial index, and a kill leaves the old one.

A full rebuild over an existing index writes its shards while the old generation stays the
one readers see; its only published generation is the complete one. A rebuild killed at any
point leaves the old generation searchable with every item, and the next run removes what the
killed one left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import xretrieve
from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.store import writer as store_writer

# Small batches and commits: a rebuild passes many commit points.
SMALL = {"progress": False, "batch_size": 2, "commit_every": 3, "max_rows_per_shard": 4}


def _counts(idx: Path) -> dict[str, int]:
    return store.read_manifest(idx).rows_by_modality()


def _search_all(idx: Path) -> dict[str, int]:
    """Items a search returns by modality, k large enough for all of them."""
    index = xretrieve.open_index(idx, model="xr-tiny", pretrained=None, device="cpu")
    return {
        m: len(index.search("a red circle", modality=m, k=1000))  # type: ignore[arg-type]
        for m, n in _counts(idx).items()
        if n
    }


def test_a_full_rebuild_publishes_only_the_complete_generation(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = tmp_path / "idx"
    index_folder(media_dir, idx, encoder=tiny_encoder, options=IndexOptions(**SMALL))
    before = store.read_manifest(idx)
    full = before.rows_by_modality()
    assert full.get("image", 0) > 4 and full.get("text", 0) > 4

    published: list[tuple[int, dict[str, int]]] = []
    shard_writes = 0
    real_write_manifest = store_writer._write_manifest
    real_write_shard = store.Writer.write_shard

    def record(index_dir: Path, manifest: store.Manifest) -> None:
        real_write_manifest(index_dir, manifest)
        published.append((manifest.generation, manifest.rows_by_modality()))

    def count(self: store.Writer, *a: Any, **kw: Any) -> list[store.ShardInfo]:
        nonlocal shard_writes
        shard_writes += 1
        return real_write_shard(self, *a, **kw)

    monkeypatch.setattr(store_writer, "_write_manifest", record)
    monkeypatch.setattr(store.Writer, "write_shard", count)
    report = index_folder(
        media_dir, idx, encoder=tiny_encoder, options=IndexOptions(**SMALL, full=True)
    )
    assert shard_writes > 3  # the rebuild went through many batches
    assert published, "the rebuild landed no generation"
    for generation, counts in published:
        assert counts == full, f"generation {generation} holds {counts}, not {full}"
    assert report.generation == published[-1][0]
    assert _search_all(idx) == full
    # Beside the new generation's files, only the old one's (kept for its readers) remain.
    kept = store.read_manifest(idx).shard_files() | before.shard_files()
    assert _shard_files(idx) <= kept


def _shard_files(idx: Path) -> set[str]:
    """The files under shards/, less the FAISS side files (named after their .faiss file)."""
    sides = (".faiss.json", ".faiss.rescore.npy")
    return {p.name for p in (idx / "shards").iterdir() if not p.name.endswith(sides)}


FAULTS_DIR = Path(__file__).resolve().parents[1] / "indexer"  # tests/indexer/faults.py

# Runs a full rebuild in its own process, SIGKILLed at a commit point (see faults.py).
KILLER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import faults
from xretrieve.encoders import load_encoder
from xretrieve.indexer import IndexOptions, index_folder
folder, idx, kill_at, opts = sys.argv[2], sys.argv[3], sys.argv[4], eval(sys.argv[5])
enc = load_encoder("xr-tiny", pretrained=None, device="cpu", batch_size=2)
faults.kill_at(kill_at)
index_folder(folder, idx, encoder=enc, options=IndexOptions(**opts, full=True))
"""


@pytest.mark.parametrize(
    "kill_at",
    [
        "encoded-batch:2",
        "shard-written:1",
        "shard-written:4",
        "merged-shard:1",
        "before-manifest:1",
    ],
)
def test_a_rebuild_killed_midway_leaves_the_old_index_searchable(
    media_dir: Path, tiny_encoder: Encoder, tmp_path: Path, kill_at: str
) -> None:
    idx = tmp_path / "idx"
    index_folder(media_dir, idx, encoder=tiny_encoder, options=IndexOptions(**SMALL))
    before = store.read_manifest(idx)
    manifest_text = (idx / "manifest.json").read_text()
    r = subprocess.run(
        [sys.executable, "-c", KILLER, FAULTS_DIR, media_dir, idx, kill_at, repr(SMALL)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (idx / "manifest.json").read_text() == manifest_text  # the old generation, as it was
    assert _search_all(idx) == before.rows_by_modality()
    for info in before.shards:  # and every file it names is whole
        store.load_shard(idx, info, verify=True)

    # The next rebuild completes and leaves no file of the killed one behind.
    index_folder(media_dir, idx, encoder=tiny_encoder, options=IndexOptions(**SMALL, full=True))
    after = store.read_manifest(idx)
    assert after.rows_by_modality() == before.rows_by_modality()
    left = _shard_files(idx) - after.shard_files() - before.shard_files()
    assert not left, json.dumps(sorted(left))
