"""Converted towers: the image and text towers run by OpenVINO in bf16 or int8, on the CPU.

The weights come from the same source as the torch model (a pretrained tag, a checkpoint or a
model folder). They are converted once, the first time a precision asks for them, and kept in
a folder keyed by the fp32 weights' fingerprint (`sources.converted_dir`: inside a model
folder, else the cache): each tower exported to ONNX (opset 17) as the source of every
precision, NNCF's int8 image tower beside them, the tokenizer (`tokenize`) and the spec. A later
run reads them back without torch: a text query needs only the tokenizer and the text tower.

Precisions: ``bf16`` compiles the fp32 graph with OpenVINO's bf16 inference hint (the CPU's
AVX-512 BF16 or AMX units; a CPU without them computes in fp32); ``int8`` runs the image
tower NNCF quantised, calibrated on synthetic images made here (deterministic), and the text
tower as ``bf16`` does (`INT8_TOWERS` says why). Outputs are
float32 unit rows like every encoder's. Audio, which has no converted tower, is handed to the
torch encoder, loaded when first needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from xretrieve._threads import default_workers
from xretrieve._types import Vectors
from xretrieve.encoders.sources import check_remembered, converted_dir
from xretrieve.encoders.spec import ModelSpec
from xretrieve.encoders.tokenize import TOKENIZER_FILE, TextTokenizer, save_tokenizer
from xretrieve.errors import ModelError

if TYPE_CHECKING:
    from PIL import Image

    from xretrieve.encoders.encoder import Encoder

__all__ = ["INT8_TOWERS", "ConvertedEncoder", "convert_towers", "openvino_threads"]

META_FILE = "converted.json"
#: The towers ``int8`` quantises. The image tower is where indexing time goes; the text
#: tower's int8 version measured top-10 agreement 0.957-0.969 with fp32 on the demo model
#: (bf16: 0.997), so in ``int8`` text queries run in bf16, still without torch.
INT8_TOWERS = ("image",)
_CALIBRATION = 64  # synthetic inputs per tower for int8


def openvino_threads(threads: int | None = None) -> int:
    """Inference threads: what the caller says, else every core this process may run on."""
    if threads:
        return threads
    return default_workers()


def _unit(x: npt.NDArray[Any]) -> Vectors:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --- conversion (torch side: runs once per weights) ------------------------------------------


def _export(encoder: Encoder, out: Path) -> dict[str, Any]:
    import warnings

    import torch

    model = encoder.model
    size = encoder.spec.image_size
    ctx = encoder.spec.context_length

    class Image_(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model  # a submodule: its weights become the graph's initialisers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.encode_image(x, normalize=True)  # type: ignore[operator]

    class Text_(Image_):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.m.encode_text(t, normalize=True)  # type: ignore[operator]

    inputs = {
        "image": (Image_(), torch.zeros(2, 3, size, size)),
        "text": (Text_(), torch.zeros(2, ctx, dtype=torch.long)),
    }
    model.to("cpu")
    with warnings.catch_warnings():  # not no_grad: it picks a fused attention ONNX lacks
        warnings.simplefilter("ignore")
        for tower, (module, example) in inputs.items():
            torch.onnx.export(
                module.eval(),
                (example,),
                str(out / f"{tower}.onnx"),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    return {
        "image_size": size,
        "mean": list(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": list(pre.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "interpolation": pre.get("interpolation", "bicubic"),
        "resize_mode": pre.get("resize_mode", "shortest"),
        "fill_color": pre.get("fill_color", 0),
    }


def _calibration(meta: dict[str, Any]) -> list[Any]:
    """Deterministic synthetic images for int8 calibration: smooth colour fields with noise."""
    rng = np.random.default_rng(0)
    s = int(meta["image_size"])
    mean = np.asarray(meta["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(3, 1, 1)
    out = []
    for _ in range(_CALIBRATION):
        coarse = rng.random((3, 4, 4), dtype=np.float32)
        img = np.kron(coarse, np.ones((1, s // 4 + 1, s // 4 + 1), np.float32))[:, :s, :s]
        img = np.clip(img + 0.1 * rng.standard_normal((3, s, s)).astype(np.float32), 0, 1)
        out.append(((img - mean) / std)[None].astype(np.float32))
    return out


def _quantize(folder: Path, meta: dict[str, Any], *, vit: bool) -> None:
    """NNCF's static int8 version of the image tower, beside its ONNX file."""
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)  # its progress bars and tables are not ours to print
    model = ov.Core().read_model(str(folder / "image.onnx"))
    kind = nncf.ModelType.TRANSFORMER if vit else None
    data = nncf.Dataset(_calibration(meta))
    sink = io.StringIO()  # NNCF draws progress bars on stdout
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        q = nncf.quantize(model, data, model_type=kind, subset_size=_CALIBRATION)
    ov.save_model(q, str(folder / "image-int8.xml"), compress_to_fp16=False)


def convert_towers(encoder: Encoder, folder: Path, *, int8: bool) -> None:
    """Export `encoder`'s towers into `folder` (and their int8 versions when asked); atomic.

    The files are made in a temporary folder beside it and moved in whole, so a killed run
    leaves either nothing or a complete conversion.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta_path = folder / META_FILE
    have = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if have is not None and (have.get("int8") or not int8):
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if have is not None:  # add int8 to an existing conversion
            for f in folder.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
            meta = have
        else:
            meta = {"preprocess": _export(encoder, tmp), "spec": encoder.spec.to_dict()}
            meta["tokenizer"] = save_tokenizer(encoder.tokenizer, tmp / TOKENIZER_FILE)
        if int8:
            vit = type(encoder.model.visual).__name__ == "VisionTransformer"
            _quantize(tmp, meta["preprocess"], vit=vit)
        meta["int8"] = int8 or bool(meta.get("int8"))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except OSError as e:
        raise ModelError(f"cannot write converted towers to {folder}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the encoder (OpenVINO side: no torch unless images or sounds need it) ------------------


class ConvertedEncoder:
    """Image and text towers run by OpenVINO in ``bf16`` or ``int8``; same space as fp32 torch.

    Built by `xretrieve.encoders.load_encoder` for those precisions on the CPU. Nothing is
    loaded until a tower is used; a missing conversion is made then, from the torch model that
    `build` makes (a callable, as `LazyEncoder`'s, so that this module needs no factory).
    """

    device = "cpu"
    runtime = "openvino"

    def __init__(
        self,
        *,
        model: str,
        pretrained: str | None,
        spec: ModelSpec,
        batch_size: int = 32,
        threads: int | None = None,
        audio: bool = True,
        torch_encoder: Encoder | None = None,
        build: Callable[[], Encoder] | None = None,
    ) -> None:
        self.spec = spec
        self.precision = spec.precision
        self.batch_size = batch_size
        self.threads = openvino_threads(threads)
        self.folder = converted_dir(model, spec.fingerprint)
        self._source = (model, pretrained, audio)
        self._torch = torch_encoder
        self._build = build
        self._compiled: dict[str, Any] = {}
        self._tokenizer: Callable[[list[str]], Any] | None = None
        self._preprocess: Callable[[Image.Image], Any] | None = None
        self._lock = threading.RLock()  # decode threads may ask for the transform or audio

    @property
    def dim(self) -> int:
        return self.spec.dim

    # The torch model: for converting, and for the audio tower.
    def torch_encoder(self) -> Encoder:
        """The fp32 torch encoder of the same weights (loaded once, checked against the spec)."""
        with self._lock:
            return self._torch_encoder()

    def _torch_encoder(self) -> Encoder:
        if self._torch is None:
            if self._build is None:
                raise ModelError(
                    f"the converted towers of {self._source[0]} need its torch model here, and "
                    "this encoder was made without a way to build it: use load_encoder"
                )
            enc = self._build()
            check_remembered(self.spec, enc.spec, self._source)
            self._torch = enc
        return self._torch

    def _meta(self) -> dict[str, Any]:
        path = self.folder / META_FILE
        want_int8 = self.precision == "int8"
        meta = json.loads(path.read_text()) if path.is_file() else None
        if meta is None or (want_int8 and not meta.get("int8")):
            convert_towers(self.torch_encoder(), self.folder, int8=want_int8)
            meta = json.loads(path.read_text())
        if meta["spec"]["fingerprint"] != self.spec.fingerprint:
            raise ModelError(f"{self.folder} holds towers of other weights: remove it")
        return dict(meta)

    def _tower(self, tower: str) -> Any:
        with self._lock:
            return self._load_tower(tower)

    def _load_tower(self, tower: str) -> Any:
        if tower not in self._compiled:
            import openvino as ov

            meta = self._meta()
            core = ov.Core()
            with contextlib.suppress(RuntimeError, OSError):
                core.set_property({"CACHE_DIR": str(self.folder / "ov-cache")})
            quantised = self.precision == "int8" and tower in INT8_TOWERS
            name = f"{tower}-int8.xml" if quantised else f"{tower}.onnx"
            config = {
                "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": "f32" if quantised else "bf16",
                "PERFORMANCE_HINT": "LATENCY",
            }
            self._compiled[tower] = core.compile_model(str(self.folder / name), "CPU", config)
            if tower == "image":
                self._image_meta = meta["preprocess"]
            if tower == "text" and self._tokenizer is None:
                self._tokenizer = self._make_tokenizer(meta)
        return self._compiled[tower]

    def _make_tokenizer(self, meta: dict[str, Any]) -> Callable[[list[str]], Any]:
        if meta.get("tokenizer") and (self.folder / TOKENIZER_FILE).is_file():
            return TextTokenizer(
                self.folder / TOKENIZER_FILE, context_length=self.spec.context_length
            )
        tok = self.torch_encoder().tokenizer
        return lambda texts: tok(texts).numpy()

    def _run(self, tower: str, x: npt.NDArray[Any], size: int) -> Vectors:
        compiled = self._tower(tower)
        out = np.empty((len(x), self.dim), dtype=np.float32)
        for sl in _batches(len(x), size):
            out[sl] = _unit(compiled([x[sl]])[0])
        return out

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        """Embed texts into unit vectors, batch by batch."""
        self._tower("text")
        assert self._tokenizer is not None  # set with the text tower
        tokens = self._tokenizer(list(texts))
        return self._run("text", np.asarray(tokens, dtype=np.int64), max(self.batch_size, 256))

    @property
    def preprocess(self) -> Callable[[Image.Image], Any]:
        """The model's inference transform (open_clip's, built from the recorded settings)."""
        with self._lock:
            return self._make_preprocess()

    def _make_preprocess(self) -> Callable[[Image.Image], Any]:
        if self._preprocess is None:
            import open_clip

            self._tower("image")
            m = self._image_meta
            self._preprocess = open_clip.image_transform(
                m["image_size"],
                is_train=False,
                mean=tuple(m["mean"]),
                std=tuple(m["std"]),
                resize_mode=m["resize_mode"],
                interpolation=m["interpolation"],
                fill_color=m["fill_color"],
            )
        return self._preprocess

    def preprocess_images(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """Apply the model's own inference transform and stack into one batch array."""
        pre = self.preprocess
        return np.stack([np.asarray(pre(im.convert("RGB")), dtype=np.float32) for im in images])

    def encode_pixels(self, pixels: Any) -> Vectors:
        """Embed an already preprocessed batch (n, 3, H, W), a torch tensor or an array."""
        x = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
        return self._run("image", np.ascontiguousarray(x, dtype=np.float32), self.batch_size)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        """Embed PIL images (any mode) into unit vectors, batch by batch."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for sl in _batches(len(images), self.batch_size):
            out[sl] = self.encode_pixels(self.preprocess_images(images[sl]))
        return out

    # Sounds: no converted audio tower; the torch encoder's, in fp32.
    @property
    def audio_sample_rate(self) -> int:
        return self.torch_encoder().audio_sample_rate

    def prepare_audio(self, waveform: npt.NDArray[Any]) -> Any:
        return self.torch_encoder().prepare_audio(waveform)

    def encode_prepared_audio(self, prepared: Sequence[Any]) -> Vectors:
        return self.torch_encoder().encode_prepared_audio(prepared)

    def encode_waveforms(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> Vectors:
        return self.torch_encoder().encode_waveforms(waveforms)

    def encode_audio(self, items: Sequence[Any]) -> Vectors:
        return self.torch_encoder().encode_audio(items)
