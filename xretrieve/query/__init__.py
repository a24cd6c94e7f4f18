"""Query: open an index and search it (embed, filter, ANN, lexical, fuse, re-rank, metadata).

Modules, in the order a search uses them: `terms` (query terms and the query vector),
`options` (SearchOptions), `filters` (WHERE), `lexical` (BM25), `scoring` (pure ranking
functions), `stages` (the search stages), `hits` (results), `index` (open_index, Index).
"""

from xretrieve.query.hits import Hit, Hits
from xretrieve.query.index import Index, open_index
from xretrieve.query.options import SearchOptions
from xretrieve.query.terms import AudioTerm, ImageTerm

__all__ = ["AudioTerm", "Hit", "Hits", "ImageTerm", "Index", "SearchOptions", "open_index"]
