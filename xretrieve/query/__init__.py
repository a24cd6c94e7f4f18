"""Query: open an index and search it (embed, filter, ANN, lexical, fuse, re-rank, metadata).

Modules, in the order a search uses them: `terms` (query terms and the query vector),
`options` (SearchOptions), `filters` (WHERE), `lexical` (BM25), `scoring` (pure ranking
functions), `stages` (the search stages), `hits` (results), `index` (open_index, Index).

The names below load on first use, so that `xretrieve.query.options` (which the CLI reads for
its flags) imports without pyarrow, faiss or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xretrieve.query.hits import Hit, Hits
    from xretrieve.query.index import Index, open_index
    from xretrieve.query.options import SearchOptions
    from xretrieve.query.terms import AudioTerm, ImageTerm

_LAZY = {
    "AudioTerm": "xretrieve.query.terms",
    "Hit": "xretrieve.query.hits",
    "Hits": "xretrieve.query.hits",
    "ImageTerm": "xretrieve.query.terms",
    "Index": "xretrieve.query.index",
    "SearchOptions": "xretrieve.query.options",
    "open_index": "xretrieve.query.index",
}

__all__ = ["AudioTerm", "Hit", "Hits", "ImageTerm", "Index", "SearchOptions", "open_index"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xretrieve.query' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
