"""Scoring: small pure functions on arrays that turn candidate lists into a ranking.

Formulas (all vectors are float32 rows, L2-normalised unless stated):

- query composition:  q = normalise( sum_i w_i * p_i  -  sum_j v_j * n_j )
  with p_i the unit embeddings of the positive terms (texts or images, weights w_i, default
  1.0) and n_j those of the negative terms (weights v_j, default 0.5).
- min-max normalisation:  s' = (s - min s) / (max s - min s), all 1.0 when max == min.
- reciprocal rank fusion:  RRF(d) = sum over lists L containing d of 1 / (k + rank_L(d)),
  ranks starting at 1, k = 60 by default (Cormack et al., 2009).
- convex combination:  C(d) = alpha * minmax(dense)(d) + (1 - alpha) * minmax(lexical)(d)
  over the union of candidates, both scores known for every candidate.
- MMR:  pick argmax_d  lambda * rel(d) - (1 - lambda) * max_{s in picked} cos(d, s),
  rel = min-max-normalised relevance, greedily until k are picked.
- near-duplicate collapse: walk in rank order and drop an item whose cosine to an item
  already kept is >= threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from xretrieve._types import Vectors
from xretrieve.errors import EmptyQueryError, InputError

__all__ = [
    "DEFAULT_NEGATIVE_WEIGHT",
    "DEFAULT_RRF_K",
    "collapse_duplicates",
    "compose",
    "convex_fusion",
    "minmax",
    "mmr",
    "rrf",
    "top_k",
]

Scores = npt.NDArray[np.float32]
Order = npt.NDArray[np.int64]

DEFAULT_RRF_K = 60
DEFAULT_NEGATIVE_WEIGHT = 0.5


def _unit(v: npt.NDArray[np.floating]) -> Vectors:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InputError(
            "the composed query vector is zero: the negative terms cancel the positive ones; "
            "lower the negative weights"
        )
    return (v / norm).astype(np.float32).reshape(1, -1)


def compose(
    positive: Vectors,
    negative: Vectors | None = None,
    *,
    weights: Sequence[float] | None = None,
    negative_weights: Sequence[float] | None = None,
) -> Vectors:
    """One unit query vector (1, d) from weighted positive and negative term vectors.

    q = normalise(sum_i w_i p_i - sum_j v_j n_j); weights default to 1.0 (positive) and
    DEFAULT_NEGATIVE_WEIGHT (negative). Positive weights must be > 0, negative ones >= 0.
    """
    pos = np.asarray(positive, dtype=np.float32)
    if pos.ndim != 2 or len(pos) == 0:
        raise EmptyQueryError(
            "the query has no positive term: give at least one text or image to search for "
            "(negative terms only say what to avoid)"
        )
    w = _weights(weights, len(pos), 1.0, what="weights", strict=True)
    v = (w[:, None] * pos).sum(axis=0)
    if negative is not None and len(negative):
        neg = np.asarray(negative, dtype=np.float32)
        if neg.shape[1] != pos.shape[1]:
            raise InputError(f"negative terms have {neg.shape[1]} dims, positive {pos.shape[1]}")
        nw = _weights(negative_weights, len(neg), DEFAULT_NEGATIVE_WEIGHT, what="negative weights")
        v = v - (nw[:, None] * neg).sum(axis=0)
    return _unit(v)


def _weights(
    given: Sequence[float] | None, n: int, default: float, *, what: str, strict: bool = False
) -> npt.NDArray[np.float32]:
    if given is None:
        return np.full(n, default, np.float32)
    w = np.asarray(list(given), dtype=np.float64)
    if w.shape != (n,):
        raise InputError(f"{len(w)} {what} for {n} terms: give one weight per term")
    bad = (w <= 0) if strict else (w < 0)
    if not np.isfinite(w).all() or bad.any():
        raise InputError(
            f"{what} must be {'> 0' if strict else '>= 0'} and finite, got {list(given)}"
        )
    return w.astype(np.float32)


def minmax(scores: npt.ArrayLike) -> Scores:
    """Scores rescaled to [0, 1]; a constant (or single) list maps to all 1.0."""
    s = np.asarray(scores, dtype=np.float32)
    if s.size == 0:
        return s
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-12:
        return np.ones_like(s)
    return ((s - lo) / (hi - lo)).astype(np.float32)


def top_k(scores: npt.ArrayLike, k: int) -> Order:
    """Positions of the k largest scores, best first (partial sort; ties keep input order)."""
    s = np.asarray(scores)
    k = min(k, s.size)
    if k <= 0:
        return np.empty(0, np.int64)
    if k < s.size:
        part = np.argpartition(-s, k - 1)[:k]
        part.sort()  # input order first, so the stable sort below breaks ties by position
        return part[np.argsort(-s[part], kind="stable")].astype(np.int64)
    return np.argsort(-s, kind="stable").astype(np.int64)


def rrf(rankings: Sequence[npt.ArrayLike], n: int, *, k: int = DEFAULT_RRF_K) -> Scores:
    """Reciprocal rank fusion of ranked lists of candidate positions (each in 0..n-1).

    Returns one score per candidate: sum over lists of 1 / (k + rank), rank from 1; a
    candidate absent from a list gets nothing from it.
    """
    if k < 0:
        raise InputError(f"the RRF constant k must be >= 0, got {k}")
    out = np.zeros(n, np.float32)
    for ranking in rankings:
        r = np.asarray(ranking, dtype=np.int64)
        out[r] += 1.0 / (k + np.arange(1, len(r) + 1, dtype=np.float32))
    return out


def convex_fusion(dense: npt.ArrayLike, lexical: npt.ArrayLike, *, alpha: float = 0.5) -> Scores:
    """alpha * minmax(dense) + (1 - alpha) * minmax(lexical), candidate by candidate."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    return (alpha * minmax(dense) + (1.0 - alpha) * minmax(lexical)).astype(np.float32)


def mmr(relevance: npt.ArrayLike, vectors: Vectors, k: int, *, lam: float = 0.5) -> Order:
    """Maximal marginal relevance: k positions trading relevance against redundancy.

    `relevance` is min-max normalised first so that `lam` weighs comparable quantities;
    lam = 1 gives the relevance order, lam = 0 the most diverse set.
    """
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"the MMR lambda must be in [0, 1], got {lam}")
    rel = minmax(relevance)
    n = len(rel)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, np.int64)
    v = np.asarray(vectors, dtype=np.float32)
    picked = [int(np.argmax(rel))]
    # Running max similarity to the picked set: one matrix-vector product per pick.
    max_sim = v @ v[picked[0]]
    taken = np.zeros(n, bool)
    taken[picked[0]] = True
    while len(picked) < k:
        gain = lam * rel - (1.0 - lam) * max_sim
        gain[taken] = -np.inf
        nxt = int(np.argmax(gain))
        picked.append(nxt)
        taken[nxt] = True
        np.maximum(max_sim, v @ v[nxt], out=max_sim)
    return np.asarray(picked, np.int64)


def collapse_duplicates(vectors: Vectors, *, threshold: float) -> Order:
    """Positions to keep, in input (rank) order, dropping near-duplicates of kept items."""
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"the duplicate threshold is a cosine in [-1, 1], got {threshold}")
    v = np.asarray(vectors, dtype=np.float32)
    kept: list[int] = []
    for i in range(len(v)):
        if kept and float(np.max(v[kept] @ v[i])) >= threshold:
            continue
        kept.append(i)
    return np.asarray(kept, np.int64)
