"""Tests for xretrieve.ann: plans, build + tune recall, re-scoring, files, merging, GPU switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from faiss.contrib.datasets import SyntheticDataset

from xretrieve.errors import IndexCorruptError, IndexNotFoundError, InputError
from xretrieve.store import ann
from xretrieve.store.ann import gpu as ann_gpu
from xretrieve.store.ann import tuning

D = 64
K = 10


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised (database 20k x 64, queries 100 x 64, exact top-10 ids)."""
    ds = SyntheticDataset(D, 5000, 20000, 100, metric="IP")
    xb, xq = _normalise(ds.get_database()), _normalise(ds.get_queries())
    truth = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    return xb, xq, truth


@pytest.fixture(scope="module")
def small(data: Any) -> np.ndarray:
    return data[0][:4000]


@pytest.fixture(scope="module")
def pq_built(small: np.ndarray) -> ann.BuiltIndex:
    """An IVF-PQ index that re-scores with fp16 vectors (the compressed-codes path)."""
    plan = ann.plan_index(len(small), D, index_type="ivf-pq")
    built = ann.build_index(small, plan)
    return ann.with_params(built, ann.tune(built, small, k=K))


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)])
    )


def _brute(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = xq @ xb.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


# --- plans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "kind"),
    [(0, "flat"), (30, "flat"), (ann.FLAT_MAX_N, "flat"), (ann.FLAT_MAX_N + 1, "ivf-flat"),
     (ann.IVF_FLAT_MAX_N, "ivf-flat"), (ann.IVF_FLAT_MAX_N + 1, "ivf-sq8"), (10**7, "ivf-sq8")],
)  # fmt: skip
def test_plan_by_size(n: int, kind: str) -> None:
    plan = ann.plan_index(n, 512)
    assert plan.kind == kind
    assert plan.exact == (kind == "flat")


def test_plan_large_shard_fits_under_30_percent_of_float32() -> None:
    plan = ann.plan_index(1_000_000, 512)
    assert plan.factory == "IVF4096,SQ8"
    assert ann.estimate_bytes(plan) <= 0.30 * 1_000_000 * 512 * 4
    assert 0 < plan.train_size <= 1 << 17


def test_plan_budget_steps_down_the_ladder() -> None:
    n, d = 100_000, 512
    raw = n * d * 4
    assert ann.plan_index(n, d, memory_budget_bytes=2 * raw).kind == "ivf-flat"
    roomy = ann.plan_index(n, d, memory_budget_bytes=raw // 10 * 7)
    assert (roomy.kind, roomy.rescore) == ("ivf-pq", "fp16")
    assert ann.plan_index(n, d, memory_budget_bytes=raw // 3).kind == "ivf-sq8"
    tight = ann.plan_index(n, d, memory_budget_bytes=raw // 7)
    assert (tight.kind, tight.rescore) == ("ivf-pq", "none")
    for budget in (2 * raw, raw // 10 * 7, raw // 3, raw // 7):
        assert ann.estimate_bytes(ann.plan_index(n, d, memory_budget_bytes=budget)) <= budget
    with pytest.raises(InputError, match="fits"):
        ann.plan_index(n, d, memory_budget_bytes=1000)


def test_plan_small_shard_over_budget_is_compressed() -> None:
    plan = ann.plan_index(10_000, 512, memory_budget_bytes=10_000 * 512 * 2)
    assert plan.kind != "flat"
    assert ann.estimate_bytes(plan) <= 10_000 * 512 * 2


def test_plan_override_by_name_and_factory_string() -> None:
    assert ann.plan_index(100, D, index_type="HNSW").kind == "hnsw"
    pq = ann.plan_index(100_000, D, index_type="ivf-pq")
    assert pq.needs_rescore and pq.oversample > 1
    raw = ann.plan_index(100_000, D, index_type="IVF256,SQfp16")
    assert (raw.kind, raw.factory, raw.nlist, raw.rescore) == (
        "factory",
        "IVF256,SQfp16",
        256,
        "none",
    )
    assert raw.train_size > 0
    assert ann.plan_index(100, D, index_type="HNSW16").hnsw_m == 16
    with pytest.raises(InputError, match="factory string"):
        ann.plan_index(100, D, index_type="NotAnIndex42")
    with pytest.raises(InputError):
        ann.plan_index(-1, D)


def test_plan_round_trips_through_dict() -> None:
    plan = ann.plan_index(500_000, 512)
    assert ann.IndexPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# --- build, tune, search --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf-flat", "hnsw", "ivf-sq8"])
def test_tuned_index_reaches_target_recall(data: Any, kind: str) -> None:
    xb, xq, truth = data
    built = ann.build_index(xb, ann.plan_index(len(xb), D, index_type=kind))
    tuned = ann.tune(built, xb, target_recall=0.95, k=K)
    assert tuned.reached and tuned.recall >= 0.95
    assert tuned.nprobe > 0 or tuned.ef_search > 0
    # The tuned value is the smallest that reaches the target: one less falls short.
    field = "nprobe" if tuned.nprobe else "ef_search"
    assert 0 < getattr(tuned, field) < (built.plan.nlist or 2048)
    # Held-out queries (not perturbed copies of rows) see about the same recall.
    _, ids = ann.search(built, xq, K, params=tuned)
    assert _recall(ids, truth) >= 0.92


def test_tune_picks_the_smallest_nprobe(data: Any) -> None:
    xb = data[0]
    built = ann.build_index(xb, ann.plan_index(len(xb), D, index_type="ivf-flat"))
    tuned = ann.tune(built, xb, target_recall=0.9, k=K)
    below = ann.tune(built, xb, target_recall=tuned.recall + 1e-9, k=K)
    assert below.nprobe >= tuned.nprobe
    q, rows = tuning._tune_queries(xb, 200, 0.0, 0)  # what tune() uses for IVF
    truth = tuning._drop_self(
        faiss.knn(q, xb, K + 1, metric=faiss.METRIC_INNER_PRODUCT)[1], rows, K
    )
    smaller = ann.TunedParams(nprobe=tuned.nprobe - 1)
    found = tuning._drop_self(ann.search(built, q, K + 1, params=smaller)[1], rows, K)
    assert tuning._recall(found, truth) < 0.9


def test_tune_reports_an_unreachable_target(small: np.ndarray) -> None:
    plan = ann.plan_index(len(small), D, index_type="IVF64,PQ4x4fs")
    built = ann.build_index(small, plan)
    tuned = ann.tune(built, small, target_recall=1.0, k=K)
    assert not tuned.reached and tuned.nprobe == 64 and tuned.recall < 1.0


def test_flat_is_exact_and_needs_no_tuning(data: Any) -> None:
    xb, xq, _ = data
    built = ann.build_index(xb[:3000], ann.plan_index(3000, D))
    assert ann.tune(built, xb[:3000]).recall == 1.0
    scores, ids = ann.search(built, xq, K)
    want_s, want_i = _brute(xb[:3000], xq, K)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)


def test_rescoring_returns_exact_inner_products(
    pq_built: ann.BuiltIndex, small: Any, data: Any
) -> None:
    xq = data[1]
    assert pq_built.rescorer is not None and pq_built.rescorer.codes.dtype == np.float16
    scores, ids = ann.search(pq_built, xq, K)
    assert (ids >= 0).all()
    exact = np.einsum("qd,qkd->qk", xq, small[ids])
    np.testing.assert_allclose(scores, exact, atol=2e-3)  # fp16 re-scoring vectors
    assert (np.diff(scores, axis=1) <= 0).all()
    # With the shard's float32 vectors the scores are exact to float32 rounding.
    scores32, ids32 = ann.search(pq_built, xq, K, vectors=small)
    np.testing.assert_allclose(scores32, np.einsum("qd,qkd->qk", xq, small[ids32]), atol=1e-5)
    _, want_i = _brute(small, xq, K)
    assert _recall(ids32, want_i) >= 0.9
    # Whatever candidates came back, their re-scored order is the exact order.
    _, pool = ann.search(pq_built, xq, K * pq_built.plan.oversample, oversample=1, vectors=small)
    pool_scores = np.einsum("qd,qkd->qk", xq, small[np.maximum(pool, 0)])
    best = np.take_along_axis(pool, np.argsort(-pool_scores, axis=1)[:, :K], axis=1)
    np.testing.assert_array_equal(np.sort(ids32, axis=1), np.sort(best, axis=1))


def test_reconstruct_vectors(pq_built: ann.BuiltIndex, small: np.ndarray) -> None:
    rows = np.array([0, 7, 3999])
    np.testing.assert_allclose(ann.reconstruct_vectors(pq_built, rows), small[rows], atol=1e-3)
    flat = ann.build_index(small[:50], ann.plan_index(50, D))
    np.testing.assert_array_equal(ann.reconstruct_vectors(flat), small[:50])
    ivf = ann.build_index(small, ann.plan_index(len(small), D, index_type="ivf-flat"))
    np.testing.assert_array_equal(ann.reconstruct_vectors(ivf, rows), small[rows])
    with pytest.raises(InputError):
        ann.reconstruct_vectors(flat, np.array([50]))


@pytest.mark.parametrize("index_type", ["flat", "ivf-flat", "ivf-pq"])
def test_k_larger_than_n_pads(small: np.ndarray, index_type: str) -> None:
    n = 300 if index_type != "flat" else 5
    x = small[:n]
    plan = ann.plan_index(n, D, index_type=index_type)
    built = ann.build_index(x, plan)
    q = small[-3:]
    scores, ids = ann.search(built, q, n + 7, params=ann.TunedParams(nprobe=plan.nlist or 1))
    assert ids.shape == scores.shape == (3, n + 7)
    assert (ids[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
    np.testing.assert_array_equal(np.sort(ids[:, :n], axis=1), np.tile(np.arange(n), (3, 1)))
    assert np.isfinite(scores[:, :n]).all() and (np.diff(scores[:, :n], axis=1) <= 0).all()


def test_empty_shard_returns_only_padding() -> None:
    built = ann.build_index(np.zeros((0, D), np.float32), ann.plan_index(0, D))
    scores, ids = ann.search(built, np.ones((2, D), np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_bad_inputs_raise_input_error(small: np.ndarray) -> None:
    built = ann.build_index(small[:20], ann.plan_index(20, D))
    for bad_k in (0, -1, 2.5):
        with pytest.raises(InputError):
            ann.search(built, small[:1], bad_k)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dimension"):
        ann.search(built, np.ones((1, D + 1), np.float32), 3)
    with pytest.raises(InputError, match="NaN"):
        ann.search(built, np.full((1, D), np.nan, np.float32), 3)
    with pytest.raises(InputError, match="dimension"):
        ann.build_index(small[:, :10], ann.plan_index(20, D))
    with pytest.raises(InputError):
        ann.tune(built, small[:20], target_recall=1.5)
    # A 1-D query is one query.
    assert ann.search(built, small[0], 3)[1].shape == (1, 3)


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_write_read_round_trip(
    pq_built: ann.BuiltIndex, data: Any, tmp_path: Path, mmap: bool
) -> None:
    xq = data[1]
    path = tmp_path / "shard.g1.faiss"
    ann.write_index(pq_built, path)
    index_file, json_file, rescore_file = ann.index_files(path)
    assert index_file.is_file() and json_file.is_file() and rescore_file.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    back = ann.read_index(path, mmap=mmap)
    assert back.plan == pq_built.plan and back.params == pq_built.params
    assert back.ntotal == pq_built.ntotal
    s1, i1 = ann.search(pq_built, xq, K)
    s2, i2 = ann.search(back, xq, K)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_write_takes_params_from_the_caller(small: np.ndarray, tmp_path: Path) -> None:
    built = ann.build_index(small, ann.plan_index(len(small), D, index_type="ivf-flat"))
    tuned = ann.tune(built, small, k=K)
    ann.write_index(built, tmp_path / "x.faiss", params=tuned)
    assert not ann.index_files(tmp_path / "x.faiss")[2].exists()  # nothing to re-score
    assert ann.read_index(tmp_path / "x.faiss").params == tuned
    assert json.loads((tmp_path / "x.faiss.json").read_text())["params"]["nprobe"] == tuned.nprobe


def _write(pq_built: ann.BuiltIndex, tmp_path: Path) -> Path:
    path = tmp_path / "s.faiss"
    ann.write_index(pq_built, path)
    return path


def test_truncated_index_is_corrupt(pq_built: ann.BuiltIndex, tmp_path: Path) -> None:
    path = _write(pq_built, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match=r"s\.faiss.*truncated or damaged"):
        ann.read_index(path)


def test_garbage_index_is_corrupt(pq_built: ann.BuiltIndex, tmp_path: Path) -> None:
    path = _write(pq_built, tmp_path)
    path.write_bytes(b"not a faiss index at all" * 10)
    with pytest.raises(IndexCorruptError, match="not a readable FAISS index"):
        ann.read_index(path)


def test_damaged_sidecars_are_corrupt(pq_built: ann.BuiltIndex, tmp_path: Path) -> None:
    path = _write(pq_built, tmp_path)
    _, json_file, rescore_file = ann.index_files(path)
    good_npy = rescore_file.read_bytes()
    rescore_file.write_bytes(good_npy[: len(good_npy) // 3])
    with pytest.raises(IndexCorruptError, match="re-scoring"):
        ann.read_index(path)
    np.save(rescore_file, np.zeros((3, D), np.float16))
    with pytest.raises(IndexCorruptError, match="expected"):
        ann.read_index(path)
    rescore_file.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        ann.read_index(path)
    rescore_file.write_bytes(good_npy)
    json_file.write_text("{ half a json")
    with pytest.raises(IndexCorruptError, match="sidecar"):
        ann.read_index(path)
    meta = {**json.loads(json.dumps(_meta(pq_built))), "ntotal": 5}
    json_file.write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="sidecar says 5"):
        ann.read_index(path)
    json_file.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        ann.read_index(path)


def _meta(built: ann.BuiltIndex) -> dict[str, Any]:
    return {
        "format_version": ann.FORMAT_VERSION,
        "ntotal": built.ntotal,
        "d": built.d,
        "plan": built.plan.to_dict(),
        "params": None,
        "rescore": {"kind": "fp16", "file": "s.faiss.rescore.npy"},
    }


def test_missing_index_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        ann.read_index(tmp_path / "nothing.faiss")


# --- merging --------------------------------------------------------------------------------


def test_merge_topk_equals_brute_force_merge() -> None:
    rng = np.random.default_rng(3)
    nq, k = 7, 10
    sizes = [10, 4, 10, 0]  # shard 1 holds 4 rows; shard 3 is empty
    scores, ids = [], []
    for n_rows in sizes:
        s = np.full((nq, 10), -np.inf, np.float32)
        i = np.full((nq, 10), -1, np.int64)
        s[:, :n_rows] = -np.sort(-rng.standard_normal((nq, n_rows)).astype(np.float32), axis=1)
        i[:, :n_rows] = rng.integers(0, 1 << 35, size=(nq, n_rows))
        scores.append(s)
        ids.append(i)
    got_s, got_refs = ann.merge_topk(scores, ids, k)
    all_s = np.concatenate(scores, axis=1)
    shard = np.concatenate([np.full((nq, 10), j) for j in range(len(sizes))], axis=1)
    row = np.concatenate(ids, axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got_s, np.take_along_axis(all_s, order, axis=1))
    np.testing.assert_array_equal(got_refs[..., 0], np.take_along_axis(shard, order, axis=1))
    np.testing.assert_array_equal(got_refs[..., 1], np.take_along_axis(row, order, axis=1))


def test_merge_topk_pads_when_shards_hold_fewer_than_k() -> None:
    s = np.array([[0.9, 0.1]], np.float32)
    i = np.array([[4, 2]], np.int64)
    got_s, refs = ann.merge_topk([s, s - 0.5], [i, i], 5)
    np.testing.assert_allclose(got_s[0, :4], [0.9, 0.4, 0.1, -0.4])
    assert np.isneginf(got_s[0, 4]) and (refs[0, 4] == -1).all()
    np.testing.assert_array_equal(refs[0, :4], [[0, 4], [1, 4], [0, 2], [1, 2]])
    with pytest.raises(InputError):
        ann.merge_topk([s], [i[:, :1]], 3)


def test_merge_of_real_shards_equals_one_index(data: Any) -> None:
    xb, xq, _ = data
    parts = [xb[:700], xb[700:1500], xb[1500:2000]]
    res = [ann.search(ann.build_index(p, ann.plan_index(len(p), D)), xq, K) for p in parts]
    s, refs = ann.merge_topk([r[0] for r in res], [r[1] for r in res], K)
    offsets = np.array([0, 700, 1500])
    want_s, want_i = _brute(xb[:2000], xq, K)
    np.testing.assert_array_equal(offsets[refs[..., 0]] + refs[..., 1], want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)


# --- GPU switch -----------------------------------------------------------------------------


class _FakeClonerOptions:
    shard = False
    useFloat16 = True


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Pretend FAISS sees 2 GPUs; 'cloning' returns the CPU index and records the call."""
    calls: list[tuple[str, Any]] = []

    def to_all(index: Any, co: Any = None, ngpu: int = -1) -> Any:
        calls.append(("to_gpu", co.shard if co is not None else None))
        return index

    def to_cpu(index: Any) -> Any:
        calls.append(("to_cpu", None))
        return index

    monkeypatch.setattr(ann_gpu, "faiss_gpu_count", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", to_cpu, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _FakeClonerOptions, raising=False)
    return calls


def test_gpu_switch_builds_sharded_on_gpus_and_writes_from_cpu(
    fake_gpus: list[tuple[str, Any]], data: Any, tmp_path: Path
) -> None:
    xb, xq, truth = data
    assert ann.use_gpu_now("auto") and ann.use_gpu_now(True) and not ann.use_gpu_now(False)
    built = ann.build_index(xb, ann.plan_index(len(xb), D, index_type="ivf-flat"))
    assert built.on_gpu
    # k-means runs on a GPU flat index, then the trained index is sharded over the GPUs
    assert fake_gpus == [("to_gpu", None), ("to_gpu", True)]
    params = ann.TunedParams(nprobe=64)
    _, ids = ann.search(built, xq, K, params=params)  # GPU path sets nprobe on the index
    assert _recall(ids, truth) > 0.9
    ann.write_index(built, tmp_path / "g.faiss", params=params)
    assert ("to_cpu", None) in fake_gpus
    back = ann.read_index(tmp_path / "g.faiss")
    assert not back.on_gpu
    assert ann.on_device(back).on_gpu
    assert not ann.on_device(back, use_gpu=False).on_gpu


def test_gpu_switch_falls_back_when_the_type_has_no_gpu_version(
    fake_gpus: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch, small: np.ndarray
) -> None:
    def refuse(index: Any, co: Any = None, ngpu: int = -1) -> Any:
        raise RuntimeError("not implemented for this type of index")

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse)
    index, on_gpu = ann.to_device(faiss.IndexHNSWFlat(D, 8))
    assert not on_gpu and isinstance(index, faiss.IndexHNSWFlat)


def test_cpu_only_never_touches_gpu_functions(monkeypatch: pytest.MonkeyPatch, small: Any) -> None:
    def boom(*a: Any, **kw: Any) -> Any:
        raise AssertionError("GPU function called on a CPU-only machine")

    monkeypatch.setattr(ann_gpu, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", boom)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", boom, raising=False)
    assert not ann.use_gpu_now("auto")
    built = ann.build_index(small, ann.plan_index(len(small), D, index_type="ivf-flat"))
    assert not built.on_gpu
    with pytest.raises(InputError, match="no GPU"):
        ann.use_gpu_now(True)
    with pytest.raises(InputError, match="no GPU"):
        ann.build_index(small, built.plan, use_gpu=True)


def test_gpu_count_is_zero_with_the_cpu_build() -> None:
    assert ann.faiss_gpu_count() == faiss.get_num_gpus() == 0


def test_public_surface_exists() -> None:
    assert all(hasattr(ann, name) for name in ann.__all__)
