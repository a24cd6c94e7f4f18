"""The one exception tree of xretrieve.

Library code raises these; only the CLI turns them into messages and exit codes.

    XRetrieveError
    ├── InputError                  bad argument from the caller
    │   ├── EmptyQueryError         a query with nothing to search for
    │   └── MediaError              a file that cannot be read or decoded
    ├── FolderError                 a media folder that is missing or holds nothing to index
    ├── ModelError
    │   ├── ModelUnavailableError   weights cannot be found or fetched (offline)
    │   └── ModelMismatchError      an index opened with another model than built it
    └── IndexStoreError
        ├── IndexNotFoundError      no index at that path
        ├── IndexCorruptError       manifest or shard files damaged or inconsistent
        └── IndexLockedError        another writer holds the index
"""

from __future__ import annotations

__all__ = [
    "EmptyQueryError",
    "FolderError",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexStoreError",
    "InputError",
    "MediaError",
    "ModelError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "XRetrieveError",
]


class XRetrieveError(Exception):
    """Root of every error xretrieve raises on purpose."""

    exit_code = 1


class InputError(XRetrieveError, ValueError):
    """A caller passed an argument that cannot be used (k <= 0, unknown option...)."""

    exit_code = 2


class EmptyQueryError(InputError):
    """The query has nothing to search for (empty or blank text, no terms)."""


class MediaError(InputError):
    """A media file cannot be read or decoded; the message names the path and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FolderError(XRetrieveError):
    """The media folder does not exist, is not a folder, or holds nothing to index."""

    exit_code = 3


class ModelError(XRetrieveError):
    """The model cannot be built or used."""

    exit_code = 4


class ModelUnavailableError(ModelError):
    """Weights cannot be found locally nor fetched (for instance with no network)."""


class ModelMismatchError(ModelError):
    """An index was opened with a model other than the one that built it."""


class IndexStoreError(XRetrieveError):
    """Something is wrong with an index on disk."""

    exit_code = 5


class IndexNotFoundError(IndexStoreError):
    """No index exists at the given path."""


class IndexCorruptError(IndexStoreError):
    """The manifest or a shard file is damaged or inconsistent with the manifest."""


class IndexLockedError(IndexStoreError):
    """Another process is writing to this index."""
