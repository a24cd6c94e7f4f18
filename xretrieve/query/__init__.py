"""Query: open an index and search it (embed, filter, ANN, lexical, fuse, re-rank, metadata)."""

from xretrieve.query.index import AudioTerm, Hit, Hits, Index, SearchOptions, open_index

__all__ = ["AudioTerm", "Hit", "Hits", "Index", "SearchOptions", "open_index"]
