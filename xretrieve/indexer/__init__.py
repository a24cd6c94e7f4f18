"""Indexer: a media folder (`folder`) or a caption corpus (`corpus`) into an index."""

from xretrieve.indexer.corpus import CorpusReport, add_captions
from xretrieve.indexer.folder import index_folder
from xretrieve.indexer.run import IndexOptions, IndexReport

__all__ = ["CorpusReport", "IndexOptions", "IndexReport", "add_captions", "index_folder"]
