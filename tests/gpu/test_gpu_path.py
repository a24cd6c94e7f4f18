"""The GPU path: half-precision towers under CUDA autocast, and FAISS building/searching on GPUs.

The first tests run everywhere: fp32 stays bit-identical to the model's own forward pass, a
half precision is refused (never silently autocast) off a CUDA device, and the towers' rows
come back float32 and unit when they run under an autocast (a CPU bf16 one stands in for
CUDA's). The rest need a real GPU (torch, or FAISS's GPU build) and are skipped without one;
scripts/gpu_check.sh runs them where a GPU is lent.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from faiss.contrib.datasets import SyntheticDataset
from PIL import Image

from xretrieve.encoders.audio_tower import AudioTower, AudioTowerConfig
from xretrieve.encoders.encoder import Encoder
from xretrieve.encoders.factory import load_encoder
from xretrieve.errors import InputError
from xretrieve.store import ann
from xretrieve.store.ann.gpu import faiss_gpu_problem

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU that torch can see")
_FAISS_GPU_PROBLEM = faiss_gpu_problem()
needs_faiss_gpu = pytest.mark.skipif(
    _FAISS_GPU_PROBLEM is not None, reason=_FAISS_GPU_PROBLEM or ""
)
TEXTS = [
    f"a photo of a {w}"
    for w in [
        "cat",
        "dog",
        "car",
        "tree",
        "house",
        "boat",
        "plane",
        "bird",
        "fish",
        "horse",
        "chair",
        "table",
        "cup",
        "lamp",
        "door",
        "road",
    ]
]


def _images(n: int, size: tuple[int, int] = (96, 72), seed: int = 0) -> list[Image.Image]:
    """Distinct images: stripes of different frequency, phase and colour, plus noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        f = rng.uniform(1, 20, 2)
        img = rng.uniform(0, 255, 3) + 100 * np.sin(
            xx[..., None] / f[0] + rng.uniform(0, 6, 3)
        ) * np.cos(yy[..., None] / f[1])
        img += rng.normal(0, 30, (h, w, 3))
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def _like(enc: Encoder, **kw: object) -> Encoder:
    """Another Encoder over the same model, preprocessing, tokenizer and audio tower."""
    args: dict[str, object] = {
        "device": enc.device,
        "batch_size": enc.batch_size,
        "audio_tower": enc.audio_tower,
    }
    args.update(kw)
    return Encoder(enc.model, enc.preprocess, enc.tokenizer, enc.spec, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return load_encoder("xr-tiny", pretrained=None, device="cpu", batch_size=4)


# --- everywhere: the autocast switch ---------------------------------------------------------


def test_fp32_is_bit_identical_to_the_model_and_runs_without_autocast(tiny: Encoder) -> None:
    assert tiny.precision == "fp32" and tiny.autocast_dtype is None
    assert isinstance(tiny.tower_context(), contextlib.nullcontext)
    pixels = tiny.preprocess_images(_images(6))
    tokens = tiny.tokenizer(TEXTS[:6])
    with torch.inference_mode():
        want_img = tiny.model.encode_image(pixels, normalize=True).float().numpy()  # type: ignore[operator]
        want_txt = tiny.model.encode_text(tokens, normalize=True).float().numpy()  # type: ignore[operator]
    got_img, got_txt = tiny.encode_pixels(pixels), tiny.encode_texts(TEXTS[:6])
    assert got_img.dtype == got_txt.dtype == np.float32
    assert got_img.tobytes() == want_img.tobytes()
    assert got_txt.tobytes() == want_txt.tobytes()


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_a_lower_precision_off_cuda_is_refused_not_silently_run(
    tiny: Encoder, precision: str
) -> None:
    with pytest.raises(InputError, match=precision):
        _like(tiny, precision=precision)


def test_an_unknown_precision_is_refused(tiny: Encoder) -> None:
    with pytest.raises(InputError, match="unknown precision"):
        _like(tiny, precision="fp8")


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_half_precision_on_a_cuda_device_autocasts_there(
    tiny: Encoder, precision: str, dtype: torch.dtype
) -> None:
    # A torch.device("cuda") is only a name: nothing is moved, so no GPU is needed to build it.
    enc = _like(tiny, device=torch.device("cuda"), precision=precision)
    assert enc.precision == precision and enc.autocast_dtype == dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that CUDA autocast is off without CUDA
        ctx = enc.tower_context()
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == dtype
    with pytest.raises(InputError, match="int8"):
        _like(tiny, device=torch.device("cuda:0"), precision="int8")


def test_half_precision_rows_come_back_float32_and_unit(tiny: Encoder) -> None:
    """Under an autocast (CPU bf16 stands in for CUDA's), every tower's rows are float32, unit."""
    torch.manual_seed(0)
    cfg = AudioTowerConfig(embed_dim=tiny.dim, channels=(16, 16), pooled_time=2, hidden=32)
    fp32 = _like(tiny, audio_tower=AudioTower(cfg).eval())
    half = _like(fp32)
    half.autocast_dtype = torch.bfloat16  # what a CUDA bf16 encoder holds, run on the CPU here
    pixels = tiny.preprocess_images(_images(6))
    rng = np.random.default_rng(1)
    clips = [fp32.prepare_audio(rng.normal(0, 0.1, n).astype(np.float32)) for n in (8000, 40000)]
    for a, b in [
        (fp32.encode_pixels(pixels), half.encode_pixels(pixels)),
        (fp32.encode_texts(TEXTS[:6]), half.encode_texts(TEXTS[:6])),
        (fp32.encode_prepared_audio(clips), half.encode_prepared_audio(clips)),
    ]:
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
        cos = (a * b).sum(axis=1)
        assert cos.min() >= 0.99
        # The autocast was entered: bf16 moves values by ~1e-3 (re-normalising alone, by ~1e-7).
        assert np.abs(a - b).max() > 1e-4


# --- a CUDA GPU: the towers in fp16 and bf16 against the CPU's fp32 ---------------------------


@pytest.fixture(scope="module")
def cpu_vit() -> Encoder:
    return load_encoder("ViT-B-32", pretrained=None, device="cpu", batch_size=16)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_towers_match_cpu_fp32(cpu_vit: Encoder, precision: str) -> None:
    gpu = load_encoder(
        "ViT-B-32", pretrained=None, device="cuda", batch_size=16, precision=precision
    )
    assert gpu.device.type == "cuda" and gpu.precision == precision
    assert gpu.spec.fingerprint == cpu_vit.spec.fingerprint  # same (seeded) weights
    images = _images(16, size=(320, 240))
    for want, got in [
        (cpu_vit.encode_images(images), gpu.encode_images(images)),
        (cpu_vit.encode_texts(TEXTS), gpu.encode_texts(TEXTS)),
    ]:
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cos = (want * got).sum(axis=1)
        assert cos.min() >= (0.999 if precision == "fp32" else 0.99), cos.min()
        # A small retrieval: each GPU row finds the same top-1 among the CPU rows as the CPU's.
        np.testing.assert_array_equal((got @ want.T).argmax(axis=1), (want @ want.T).argmax(axis=1))


@needs_cuda
def test_cuda_refuses_int8() -> None:
    with pytest.raises(InputError, match="int8"):
        load_encoder("xr-tiny", pretrained=None, device="cuda", precision="int8")


# --- FAISS's GPU build: the project's switch (store/ann/gpu.py) against the CPU ---------------

D, K = 64, 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ds = SyntheticDataset(D, 5000, 20000, 100, metric="IP")
    xb, xq = ds.get_database(), ds.get_queries()
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xb.astype(np.float32), xq.astype(np.float32), ds.get_groundtruth(K)


@needs_faiss_gpu
def test_flat_on_gpu_equals_cpu(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    xb, xq, _ = data
    plan = ann.plan_index(len(xb), D, index_type="flat")
    gpu = ann.build_index(xb, plan, use_gpu="auto")  # "auto" takes the GPU when FAISS has one
    cpu = ann.build_index(xb, plan, use_gpu=False)
    assert gpu.on_gpu and not cpu.on_gpu
    gs, gi = ann.search(gpu, xq, K)
    cs, ci = ann.search(cpu, xq, K)
    np.testing.assert_allclose(gs, cs, atol=1e-4)
    assert (gi == ci).mean() >= 0.99  # only near-ties may swap
    np.testing.assert_array_equal(gi[:, 0], ci[:, 0])


@needs_faiss_gpu
def test_ivf_on_gpu_recalls_like_cpu_and_round_trips(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    xb, xq, truth = data
    plan = ann.plan_index(len(xb), D, index_type="ivf-flat")
    params = ann.TunedParams(nprobe=64)
    gpu = ann.build_index(xb, plan, use_gpu=True)  # k-means and the add on the GPU
    cpu = ann.build_index(xb, plan, use_gpu=False)
    assert gpu.on_gpu
    gs, gi = ann.search(gpu, xq, K, params=params)
    _, ci = ann.search(cpu, xq, K, params=params)

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth, strict=True)]))

    assert recall(gi) >= 0.9 and recall(ci) >= 0.9
    assert abs(recall(gi) - recall(ci)) <= 0.03
    # Written from a CPU copy; read back on the CPU it answers as it did on the GPU.
    ann.write_index(gpu, tmp_path / "g.faiss", params=params)
    back = ann.read_index(tmp_path / "g.faiss")
    assert not back.on_gpu and ann.on_device(back).on_gpu
    bs, bi = ann.search(back, xq, K, params=params)
    np.testing.assert_allclose(bs, gs, atol=1e-4)
    assert (bi == gi).mean() >= 0.99
