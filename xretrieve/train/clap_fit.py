"""Fit a pretrained CLAP audio tower into a model folder's space: the linear map and its report.

Both models have a text tower, so the same sentences embedded by each give paired points of
the two spaces. A linear map from CLAP text vectors to CLIP text vectors is fitted on them;
`xretrieve.encoders.clap` then applies it to CLAP *audio* vectors, which CLAP trained to sit
with its text ones.

The map is ridge least squares, solved in closed form; the ridge strength is picked by
leave-one-out error (closed form too) unless given. Not CCA: CCA projects *both* sides into a
new shared space, which would move the CLIP vectors that indexes already hold; here the CLIP
space is the fixed target and only CLAP vectors move, which is regression. Ridge also stays
well-posed with fewer sentences than dimensions. Both sides are centred first (the intercept b
is not shrunk): text embeddings share one large common direction, and without centring the
ridge penalty shrinks the directions that tell sentences apart before that one. The map file
is written first, the config that names it and its sha256 last, so a reader never sees a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from xretrieve._fs import atomic_write_bytes, fsync_dir
from xretrieve.encoders.audio_tower import AUDIO_CONFIG_FILE
from xretrieve.encoders.clap import (
    CLAP_CONFIG_FORMAT,
    CLAP_MAP_FILE,
    adapter_fingerprint,
    clap_fingerprint,
    load_clap,
)
from xretrieve.errors import InputError, ModelError
from xretrieve.media.scan import read_captions, scan_folder
from xretrieve.train.data import training_split

if TYPE_CHECKING:
    from xretrieve.encoders import Encoder

__all__ = [
    "HELDOUT_FRACTION",
    "MIN_SENTENCES",
    "RIDGE_GRID",
    "ClapFit",
    "ClapReport",
    "add_clap",
    "choose_ridge",
    "collect_sentences",
    "embed_clap_texts",
    "fit_ridge",
    "fit_statistics",
]

#: Ridge strengths tried, relative to the mean eigenvalue of the centred XᵀX (so a value means
#: the same shrinkage for 100 or 10k sentences).
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
HELDOUT_FRACTION = 0.1
MIN_SENTENCES = 10

Matrix = npt.NDArray[np.float32]
#: The fitted map: W (clap_dim, dim) and b (dim,); a CLAP vector x maps to x W + b.
AffineMap = tuple[Matrix, npt.NDArray[np.float32]]


def _pooled(out: Any) -> torch.Tensor:
    # transformers 4.x returns the projected tensor, 5.x a ModelOutput holding it.
    t = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(t.float(), dim=-1)


def embed_clap_texts(model: Any, tokenizer: Any, texts: list[str], batch: int = 64) -> Matrix:
    """CLAP text vectors (n, clap_dim), unit rows."""
    limit = int(model.config.text_config.max_position_embeddings) - 2  # RoBERTa's offset
    max_len = min(int(tokenizer.model_max_length), limit)
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            tok = tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
            out.append(_pooled(model.get_text_features(input_ids=ids, attention_mask=mask)).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def _centred_svd(x: npt.NDArray[np.float64]) -> tuple[Any, Any, Any, float]:
    """SVD of x centred, and the mean eigenvalue of its XᵀX (the unit of `ridge`)."""
    u, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    return u, s, vt, float((s**2).sum()) / x.shape[1]


def fit_ridge(x: Matrix, y: Matrix, *, ridge: float) -> AffineMap:
    """(W, b) minimising ||x W + b - y||² + λ||W||², λ = ridge * mean eigenvalue (closed form)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    u, s, vt, unit = _centred_svd(x64)
    # Through the SVD, ridge 0 is the minimum-norm least-squares solution, not a singular solve.
    keep = s > (s[0] if len(s) else 0.0) * 1e-10
    shrink = np.where(keep, s / np.maximum(s**2 + ridge * unit, 1e-300), 0.0)
    w = (vt.T * shrink) @ (u.T @ (y64 - y64.mean(axis=0)))
    b = y64.mean(axis=0) - x64.mean(axis=0) @ w
    return w.astype(np.float32), b.astype(np.float32)


def choose_ridge(x: Matrix, y: Matrix, grid: tuple[float, ...] = RIDGE_GRID) -> float:
    """The ridge of `grid` with the least leave-one-out squared error (closed form, as RidgeCV).

    A left-out pair's residual is its in-sample residual / (1 - its leverage), exactly, so
    every leave-one-out fit comes from one SVD.
    """
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    u, s, _, unit = _centred_svd(x64)
    yc = y64 - y64.mean(axis=0)
    best, best_err = grid[0], np.inf
    for ridge in grid:
        f = s**2 / (s**2 + ridge * unit)
        leverage = (u**2 * f).sum(axis=1) + 1.0 / len(x)  # + the intercept's
        resid = yc - u @ (f[:, None] * (u.T @ yc))
        err = float(((resid / np.maximum(1.0 - leverage, 1e-6)[:, None]) ** 2).sum())
        if err < best_err:
            best, best_err = ridge, err
    return best


def _unit(m: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class ClapFit:
    """How well the map carries CLAP text vectors onto CLIP text vectors of the same sentences.

    R² is against predicting the mean CLIP vector of the fitting sentences (0 = no better than
    that, 1 = exact). Cosines are between mapped-and-normalised and true CLIP vectors;
    `cosine_baseline` is what the normalised mean vector alone scores on the held-out sentences.
    `recall_at_1` is the share of held-out sentences whose mapped vector is nearest its own CLIP
    vector among the held-out ones (chance: 1 / n_heldout).
    """

    n_sentences: int
    n_fit: int
    n_heldout: int
    ridge: float
    #: True when `ridge` was chosen by leave-one-out error on the fitting sentences.
    ridge_chosen: bool
    r2_fit: float
    r2_heldout: float
    cosine_fit: float
    cosine_heldout: float
    cosine_baseline: float
    recall_at_1: float


def _r2(y: Matrix, pred: Matrix, mean: npt.NDArray[Any]) -> float:
    total = float(((y - mean) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / max(total, 1e-12)


def _cosine(y: Matrix, pred: Matrix) -> float:
    return float((_unit(y) * _unit(pred)).sum(axis=1).mean())


def _require_sentences(n: int) -> None:
    if n < MIN_SENTENCES:
        raise InputError(
            f"the CLAP map needs at least {MIN_SENTENCES} distinct sentences, got {n}: give more "
            "(a texts file, one sentence per line, and/or a world folder's caption sidecars)"
        )


def fit_statistics(
    x: Matrix,
    y: Matrix,
    *,
    ridge: float | None = None,
    heldout: float = HELDOUT_FRACTION,
    seed: int = 0,
) -> tuple[AffineMap, ClapFit]:
    """Fit the map on all but a random `heldout` share of the pairs; score it on both parts.

    The map returned is the one scored: its held-out numbers describe exactly the saved map.
    `ridge=None` chooses it with `choose_ridge` on the fitting pairs alone.
    """
    n = len(x)
    _require_sentences(n)
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(heldout * n))
    held, fit = order[:n_held], order[n_held:]
    chosen = ridge is None
    ridge = choose_ridge(x[fit], y[fit]) if ridge is None else ridge
    w, b = fit_ridge(x[fit], y[fit], ridge=ridge)
    mean = y[fit].mean(axis=0)
    pred_fit, pred_held = x[fit] @ w + b, x[held] @ w + b
    sims = _unit(pred_held) @ _unit(y[held]).T
    stats = ClapFit(
        n_sentences=n,
        n_fit=len(fit),
        n_heldout=n_held,
        ridge=ridge,
        ridge_chosen=chosen,
        r2_fit=round(_r2(y[fit], pred_fit, mean), 4),
        r2_heldout=round(_r2(y[held], pred_held, mean), 4),
        cosine_fit=round(_cosine(y[fit], pred_fit), 4),
        cosine_heldout=round(_cosine(y[held], pred_held), 4),
        cosine_baseline=round(_cosine(y[held], np.broadcast_to(mean, y[held].shape)), 4),
        recall_at_1=round(float((sims.argmax(axis=1) == np.arange(n_held)).mean()), 4),
    )
    return (w, b), stats


def collect_sentences(
    *, texts: str | os.PathLike[str] | None = None, world: str | os.PathLike[str] | None = None
) -> list[str]:
    """Distinct sentences, in order: lines of `texts`, then the caption sidecars under `world`.

    A world folder (with ``world.json``) means its ``train/`` split, so evaluation stays fair.
    """
    if texts is None and world is None:
        raise InputError(
            "give the sentences to fit the map on: texts (a file, one per line) and/or world "
            "(a folder of caption sidecars)"
        )
    found: list[str] = []
    if texts is not None:
        try:
            lines = Path(texts).read_text(encoding="utf-8-sig").splitlines()
        except OSError as e:
            raise InputError(f"cannot read the sentences file {texts}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise InputError(f"{texts} is not UTF-8 text ({e.reason})") from e
        found += [s.strip() for s in lines if s.strip()]
    if world is not None:
        for cap in scan_folder(training_split(world)).captions:
            found += read_captions(cap.path.read_bytes(), path=cap.rel)
    return list(dict.fromkeys(found))


def _save_adapter(root: Path, m: AffineMap, config: dict[str, Any]) -> dict[str, Any]:
    """Write the map, then the config naming it and its sha256 (a reader never sees a mix)."""
    from safetensors.torch import save

    blob = save({"w": torch.from_numpy(np.ascontiguousarray(m[0])), "b": torch.from_numpy(m[1])})
    map_sha = hashlib.sha256(blob).hexdigest()
    config = {
        **config,
        "map_file": CLAP_MAP_FILE,
        "map_sha256": map_sha,
        "fingerprint": adapter_fingerprint(config["clap_fingerprint"], map_sha),
    }
    atomic_write_bytes(root / CLAP_MAP_FILE, blob)
    atomic_write_bytes(
        root / AUDIO_CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8")
    )
    fsync_dir(root)
    return config


@dataclass(frozen=True)
class ClapReport:
    """What `add_clap` did."""

    model_dir: Path
    clap_dir: Path
    clap_dim: int
    dim: int
    fit: ClapFit
    seconds: float
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_dir"], d["clap_dir"] = str(self.model_dir), str(self.clap_dir)
        return d


def add_clap(
    model_dir: str | os.PathLike[str],
    clap_dir: str | os.PathLike[str],
    *,
    texts: str | os.PathLike[str] | None = None,
    world: str | os.PathLike[str] | None = None,
    ridge: float | None = None,
    device: str = "cpu",
) -> ClapReport:
    """Fit the CLAP -> CLIP map on sentences and write the adapter into `model_dir`.

    `ridge=None` picks the ridge strength by leave-one-out error. The adapter replaces any
    audio tower the folder had; image and text files are left untouched.
    """
    from xretrieve.encoders import load_encoder

    t_start = time.perf_counter()
    if ridge is not None and (not np.isfinite(ridge) or ridge < 0):
        raise InputError(f"ridge must be a finite number >= 0, got {ridge}")
    root = Path(model_dir)
    # Without the audio tower: the one being replaced may be the broken one.
    encoder: Encoder = load_encoder(str(root), pretrained=None, device=device, audio=False)
    if not root.is_dir():
        raise InputError(
            f"{model_dir} is not a model folder: the adapter is written into the folder, "
            "so pass one (made by `xretrieve train`)"
        )
    sentences = collect_sentences(texts=texts, world=world)
    _require_sentences(len(sentences))
    clap_path = Path(clap_dir).expanduser().resolve()
    clap, tokenizer, _ = load_clap(clap_path, device=encoder.device)
    try:
        x = embed_clap_texts(clap, tokenizer, sentences)
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the CLAP text tower of {clap_path} failed: {first}") from e
    y = encoder.encode_texts(sentences)
    affine, stats = fit_statistics(x, y, ridge=ridge)
    config = {
        "format": CLAP_CONFIG_FORMAT,
        "kind": "clap",
        "clap_dir": str(clap_path),
        "clap_fingerprint": clap_fingerprint(clap_path),
        "clap_dim": int(x.shape[1]),
        "dim": encoder.dim,
        "trained_against": encoder.spec.fingerprint,
        "fit": asdict(stats),
    }
    saved = _save_adapter(root, affine, config)
    return ClapReport(
        model_dir=root,
        clap_dir=clap_path,
        clap_dim=int(x.shape[1]),
        dim=encoder.dim,
        fit=stats,
        seconds=round(time.perf_counter() - t_start, 2),
        fingerprint=saved["fingerprint"],
    )
