"""Row selectors: search one shard's FAISS index among some of its rows only.

Rules this module keeps:

- A `RowSelector` owns the bitmap its FAISS selector points into, so the two live and die
  together; it can be cached and reused across queries.
- Only `fraction` of the rows can match, so the tuned nprobe / efSearch would reach about
  that fraction of the candidates they were tuned for: both are scaled up by 1 / fraction
  (capped), which keeps the expected number of matching candidates visited.
- Scores come back as the index computes them (approximate for compressed plans): callers
  that need exact scores re-score the returned rows. CPU indexes only: GPU indexes take no
  per-call selector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from xretrieve._types import Ids, Vectors
from xretrieve.errors import InputError
from xretrieve.store import ann

__all__ = ["RowSelector", "row_selector", "search_selected", "selector_params"]

# The most efSearch a selective filter may raise an HNSW search to.
_MAX_EF_SEARCH = 4096


@dataclass(frozen=True, eq=False)
class RowSelector:
    """The rows of a shard a search may return, as a FAISS bitmap selector."""

    n_rows: int
    n_allowed: int
    bits: npt.NDArray[np.uint8]
    selector: Any  # faiss.IDSelectorBitmap pointing into `bits`

    @property
    def fraction(self) -> float:
        """Share of the shard's rows let through."""
        return self.n_allowed / max(1, self.n_rows)


def row_selector(n_rows: int, rows: Ids) -> RowSelector:
    """A selector letting through `rows` (distinct ids in 0..n_rows-1) of an n_rows shard."""
    mask = np.zeros(n_rows, bool)
    mask[rows] = True
    bits = np.packbits(mask, bitorder="little")
    sel = faiss.IDSelectorBitmap(n_rows, faiss.swig_ptr(bits))
    return RowSelector(n_rows, int(mask.sum()), bits, sel)


def selector_params(
    built: ann.BuiltIndex, sel: RowSelector, params: ann.TunedParams, k: int
) -> Any:
    """FAISS search parameters restricted to `sel`, with nprobe / efSearch scaled for it."""
    ivf = faiss.try_extract_index_ivf(built.index)
    boost = 1.0 / max(sel.fraction, 1e-3)
    sp: Any
    if ivf is not None:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(min(ivf.nlist, max(1, math.ceil((params.nprobe or 1) * boost))))
    elif built.plan.hnsw_m:
        sp = getattr(faiss, "SearchParametersHNSW")()  # noqa: B009 - missing from faiss' stubs
        sp.efSearch = int(min(_MAX_EF_SEARCH, max(k, math.ceil((params.ef_search or 16) * boost))))
    else:
        sp = faiss.SearchParameters()
    sp.sel = sel.selector
    return sp


def search_selected(
    built: ann.BuiltIndex,
    q: Vectors,
    k: int,
    sel: RowSelector,
    *,
    params: ann.TunedParams | None = None,
) -> tuple[npt.NDArray[np.float32], Ids]:
    """Top k (index scores, ids) among the selected rows; -inf / -1 where fewer are found."""
    if built.on_gpu:
        raise InputError("row selectors need a CPU index; GPU indexes take no selector")
    if sel.n_rows != built.ntotal:
        raise InputError(f"the selector covers {sel.n_rows} rows, the index has {built.ntotal}")
    p = params or built.params or ann.default_params(built.plan)
    scores, ids = built.index.search(q, k, params=selector_params(built, sel, p, k))
    scores[ids < 0] = -np.inf
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)
