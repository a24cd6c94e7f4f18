"""The one exception tree of xretrieve.

Library code raises these and nothing else on purpose; only the CLI (exit codes) and the
HTTP layer (status codes) turn them into messages for a person. No class here carries an
exit code, and no message names a command-line flag: the CLI adds its own hints, keyed by the
type and, where one type covers situations with different remedies, by the error's `code`.
A code is a stable string declared on the class it belongs to (`InputError.NO_CUDA`) and passed
where the error is raised: ``raise InputError("...", code=InputError.NO_CUDA)``. A message can
be reworded freely; a code cannot. An error raised ``from`` another is read with its cause.

    XRetrieveError
    ├── InputError                  bad argument from the caller
    │   └── EmptyQueryError         a query with nothing to search for
    ├── MediaError                  a file that cannot be read or decoded (named by the caller,
    │                               or met while indexing, where it is reported and skipped)
    ├── FolderError                 a media folder that is missing or holds nothing to index
    ├── ModelError
    │   ├── ModelUnavailableError   weights cannot be found or fetched (offline)
    │   └── ModelMismatchError      an index opened with another model than built it
    └── IndexStoreError
        ├── IndexNotFoundError      no index at that path
        ├── IndexCorruptError       manifest or shard files damaged or inconsistent
        │   └── ShardMissingError   a file the manifest lists is gone (a reader may retry)
        ├── IndexLockedError        another writer holds the index
        └── NotAnIndexError         a folder holding other files, which no index is written into
"""

from __future__ import annotations

from typing import Final

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
    "NotAnIndexError",
    "ShardMissingError",
    "XRetrieveError",
]


class XRetrieveError(Exception):
    """Root of every error xretrieve raises on purpose."""

    #: Which situation of its type this is (one of the class's upper-case constants), or None.
    code: str | None = None

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code


class InputError(XRetrieveError, ValueError):
    """A caller passed an argument that cannot be used (k <= 0, unknown option...)."""

    UNKNOWN_MODEL: Final = "unknown-model"  # no architecture or config of that name
    NO_CUDA: Final = "no-cuda"  # a CUDA device asked for where torch sees none
    GPU_ONLY_PRECISION: Final = "gpu-only-precision"  # fp16 asked for on the CPU
    CPU_ONLY_PRECISION: Final = "cpu-only-precision"  # int8 asked for on a GPU
    PRECISION_MISMATCH: Final = "precision-mismatch"  # adding to an index of another precision
    CAPTION_COLUMN: Final = "caption-column"  # a caption file whose caption field is not found
    SPLIT_UNCHOSEN: Final = "split-unchosen"  # a data set that names splits, none chosen


class EmptyQueryError(InputError):
    """The query has nothing to search for (empty or blank text, no terms)."""


class MediaError(XRetrieveError):
    """A media file cannot be read or decoded; the message names the path and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FolderError(XRetrieveError):
    """The media folder does not exist, is not a folder, or holds nothing to index."""

    NO_SOUNDS: Final = "no-sounds"  # a world's images without their sounds
    SPLIT_UNCHOSEN: Final = "split-unchosen"  # a folder of annotation files, no split chosen


class ModelError(XRetrieveError):
    """The model cannot be built or used."""


class ModelUnavailableError(ModelError):
    """Weights cannot be found locally nor fetched (for instance with no network)."""

    OFFLINE: Final = "offline"  # the weights are not here and the hub cannot be reached


class ModelMismatchError(ModelError):
    """An index was opened with a model other than the one that built it."""


class IndexStoreError(XRetrieveError):
    """Something is wrong with an index on disk."""


class IndexNotFoundError(IndexStoreError):
    """No index exists at the given path."""


class IndexCorruptError(IndexStoreError):
    """The manifest or a shard file is damaged or inconsistent with the manifest."""


class IndexLockedError(IndexStoreError):
    """Another process is writing to this index."""


class NotAnIndexError(IndexStoreError):
    """A folder to write an index into holds files but no index: nothing is written there."""


class ShardMissingError(IndexCorruptError):
    """A shard file listed by the manifest is missing (a newer generation may have removed it)."""
