"""xretrieve: cross-modal retrieval over a media folder.

    import xretrieve
    idx = xretrieve.open_index("indexes/demo")
    hits = idx.search("a large red circle", k=10)
    hits.to_arrow()

The public surface is `__all__`; modules whose names start with an underscore, and names
not listed here, may change without notice. Heavy modules (torch, open_clip, faiss) load on
first use, so `import xretrieve` and `xretrieve --help` stay quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xretrieve._process import configure_process, shutdown
from xretrieve.errors import (
    EmptyQueryError,
    FolderError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
    MediaError,
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    NotAnIndexError,
    ShardMissingError,
    XRetrieveError,
)

if TYPE_CHECKING:
    from xretrieve.encoders import (
        Encoder,
        ModelSpec,
        list_models,
        load_encoder,
        register_model_config,
    )
    from xretrieve.indexer import (
        CorpusReport,
        IndexOptions,
        IndexReport,
        add_captions,
        index_folder,
    )
    from xretrieve.query import Hit, Hits, Index, SearchOptions, open_index

__version__ = "0.1.0"

_LAZY = {
    "Encoder": "xretrieve.encoders",
    "ModelSpec": "xretrieve.encoders",
    "list_models": "xretrieve.encoders",
    "load_encoder": "xretrieve.encoders",
    "register_model_config": "xretrieve.encoders",
    "IndexOptions": "xretrieve.indexer",
    "IndexReport": "xretrieve.indexer",
    "index_folder": "xretrieve.indexer",
    "Hit": "xretrieve.query",
    "Hits": "xretrieve.query",
    "Index": "xretrieve.query",
    "open_index": "xretrieve.query",
    "SearchOptions": "xretrieve.query",
    "add_captions": "xretrieve.indexer",
    "CorpusReport": "xretrieve.indexer",
}

__all__ = [
    "CorpusReport",
    "EmptyQueryError",
    "Encoder",
    "FolderError",
    "Hit",
    "Hits",
    "Index",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexOptions",
    "IndexReport",
    "IndexStoreError",
    "InputError",
    "MediaError",
    "ModelError",
    "ModelMismatchError",
    "ModelSpec",
    "ModelUnavailableError",
    "NotAnIndexError",
    "SearchOptions",
    "ShardMissingError",
    "XRetrieveError",
    "__version__",
    "add_captions",
    "configure_process",
    "index_folder",
    "list_models",
    "load_encoder",
    "open_index",
    "register_model_config",
    "shutdown",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xretrieve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
