"""Memory-mapped shards: what FAISS maps per index type, the reader's size rule, damage checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from xretrieve import store
from xretrieve.errors import IndexCorruptError
from xretrieve.store import ann, selectors

D = 32
KINDS = ("flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq")
# Index types whose bulk FAISS maps from the file (IVF-PQ fast-scan lists are read).
MAPPED = ("flat", "hnsw", "ivf-flat", "ivf-sq8")


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mapped_files() -> set[str]:
    """Files this process has memory-mapped (Linux /proc)."""
    text = Path("/proc/self/maps").read_text()
    return {line.split(None, 5)[5].strip() for line in text.splitlines() if len(line.split()) > 5}


def _lists(index: Any) -> object:
    """The inverted lists of an IVF index, as their own class."""
    invlists = faiss.extract_index_ivf(index).invlists
    assert invlists is not None
    return faiss.downcast_InvertedLists(invlists)


needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


def _write(tmp_path: Path, kind: str, n: int = 3000) -> tuple[Path, np.ndarray]:
    x = _vectors(n)
    built = ann.build_index(x, ann.plan_index(n, D, index_type=kind))
    path = tmp_path / f"{kind}.faiss"
    ann.write_index(built, path, params=ann.tune(built, x))
    return path, x


@needs_proc
@pytest.mark.parametrize("kind", KINDS)
def test_a_mapped_index_answers_like_a_read_one(tmp_path: Path, kind: str) -> None:
    path, _ = _write(tmp_path, kind)
    q = _vectors(20, seed=1)
    read = ann.read_index(path)
    assert str(path) not in _mapped_files()
    mapped = ann.read_index(path, mmap=True)
    # The FAISS file itself is mapped for the types FAISS can map, and only for them.
    assert (str(path) in _mapped_files()) == (kind in MAPPED)
    s0, i0 = ann.search(read, q, 10)
    s1, i1 = ann.search(mapped, q, 10)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1)
    rows = np.array([0, 7, 2999])
    np.testing.assert_allclose(
        ann.reconstruct_vectors(mapped, rows), ann.reconstruct_vectors(read, rows)
    )
    if kind == "ivf-pq":  # its fp16 re-scoring vectors are mapped instead
        assert mapped.rescorer is not None and isinstance(mapped.rescorer.codes, np.memmap)


def test_ivf_lists_are_mapped_not_copied(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "ivf-sq8")
    for kind in ("ivf-sq8", "ivf-flat"):
        assert ann.mmap_flags(ann.plan_index(3000, D, index_type=kind)) & faiss.IO_FLAG_MMAP
    mapped = ann.read_index(path, mmap=True)
    assert isinstance(_lists(mapped.index), faiss.OnDiskInvertedLists)
    assert ann.mmap_flags(ann.plan_index(3000, D, index_type="ivf-pq")) == 0


@needs_proc
def test_a_mapped_shard_filters_and_outlives_its_unlinked_file(tmp_path: Path) -> None:
    path, x = _write(tmp_path, "ivf-sq8")
    built = ann.read_index(path, mmap=True)
    q = x[:5]
    before = ann.search(built, q, 10)
    rows = np.arange(0, 3000, 2)
    found = selectors.search_selected(built, q, 10, selectors.row_selector(3000, rows))[1]
    assert set(found[found >= 0].tolist()) <= set(rows.tolist())
    for f in ann.index_files(path):
        f.unlink(missing_ok=True)  # what a writer's clean-up does to an old generation
    after = ann.search(built, q, 10)
    np.testing.assert_array_equal(before[1], after[1])


@pytest.mark.parametrize("kind", MAPPED)
def test_damaged_files_are_refused_before_they_are_mapped(tmp_path: Path, kind: str) -> None:
    path, _ = _write(tmp_path, kind, n=600)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, len(data) - 8 * D, 64):
        path.write_bytes(data[:cut])
        with pytest.raises(IndexCorruptError):
            ann.read_index(path, mmap=True)
    path.write_bytes(data + b"\0" * 16)
    with pytest.raises(IndexCorruptError, match="left over"):
        ann.read_index(path, mmap=True)


_FUZZ_MAPPED = r"""
import resource, struct, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from xretrieve.errors import IndexCorruptError
from xretrieve.store import ann
import numpy as np
path = sys.argv[1]
orig = open(path, "rb").read()
q = np.ones((1, int(sys.argv[2])), np.float32)
refused = read = 0
for off in list(range(0, min(len(orig), 400), 3)) + list(range(len(orig) - 200, len(orig), 5)):
    for val in (2**62, 2**33, 2**20):
        b = bytearray(orig)
        b[off:off + 8] = struct.pack("<Q", val)[: len(b[off:off + 8])]
        open(path, "wb").write(b)
        try:
            built = ann.read_index(path, mmap=True)
        except IndexCorruptError:
            refused += 1
            continue
        read += 1
print(refused, read)
"""


@pytest.mark.parametrize("kind", ["ivf-sq8", "flat"])
def test_huge_lengths_in_a_mapped_file_are_refused_or_read_in_bounds(
    tmp_path: Path, kind: str
) -> None:
    path, _ = _write(tmp_path, kind, n=300)
    r = subprocess.run(
        [sys.executable, "-c", _FUZZ_MAPPED, str(path), str(D)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    refused, read = map(int, r.stdout.split())
    assert refused > 10 and read > 0, r.stdout


def _index(tmp_path: Path, n: int = 2500) -> Path:
    x = _vectors(n)
    rows = [
        store.metadata_row(path=f"{i}.png", modality="image", bytes=i, mtime_us=0, content_hash="h")
        for i in range(n)
    ]
    store.write_generation(
        tmp_path,
        root="/media",
        model={"name": "m", "fingerprint": "f"},
        dim=D,
        payloads=[store.ShardPayload("image", x, store.metadata_table(rows))],
        max_rows_per_shard=1000,
        index_type="ivf-sq8",
    )
    return tmp_path


@needs_proc
def test_the_reader_maps_shard_files_from_the_size_threshold(tmp_path: Path) -> None:
    d = _index(tmp_path)
    q = _vectors(5, seed=3)
    with store.Reader(d) as r:
        small = r.shards("image")
        read = [ann.search(s.index, q, 10) for s in small]
    files = {str(d / "shards" / s.info.index_file.name) for s in small}
    assert not files & _mapped_files()  # a few KB: read
    threshold = min(s.info.index_file.bytes for s in small)
    with store.Reader(d, mmap_min_bytes=threshold) as r:
        shards = r.shards("image")
        assert files <= _mapped_files()
        for s, (s0, i0) in zip(shards, read, strict=True):
            s1, i1 = ann.search(s.index, q, 10)
            np.testing.assert_array_equal(i0, i1)
            np.testing.assert_allclose(s0, s1)
    # Explicit choices win over the threshold.
    info = store.read_manifest(d).shards[0]
    assert not isinstance(
        _lists(store.load_shard(d, info, mmap=False).index.index), faiss.OnDiskInvertedLists
    )


def test_read_index_falls_back_to_reading_when_faiss_cannot_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _write(tmp_path, "ivf-sq8")
    real = faiss.read_index
    calls: list[int] = []

    def no_mmap(name: str, flags: int = 0) -> object:
        calls.append(flags)
        if flags:
            raise RuntimeError("mmap failed: Operation not supported")
        return real(name, flags)

    monkeypatch.setattr(faiss, "read_index", no_mmap)
    built = ann.read_index(path, mmap=True)
    assert calls[0] and calls[-1] == 0 and built.ntotal == 3000
    assert os.path.exists(path)
