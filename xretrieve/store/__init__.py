"""Store: an index on disk -- a manifest, shards of vectors (FAISS, `ann`) and Parquet metadata.

`manifest` says what the files hold (and whose model made the vectors), `writer` lands
generations (shard files first, the manifest last, atomically), `reader` reads one generation
and pins it while it is read. The store depends on the helpers only: it knows nothing of
models, media or queries.
"""

from xretrieve._fs import atomic_write
from xretrieve.errors import ShardMissingError
from xretrieve.store.manifest import (
    FACT_COLUMNS,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    METADATA_SCHEMA,
    PARTITION_KEYS,
    READERS_DIR,
    SHARDS_DIR,
    STATS_COLUMNS,
    Manifest,
    ShardFile,
    ShardInfo,
    check_model,
    describe_file,
    metadata_columns,
    metadata_row,
    metadata_table,
    partition_stats,
    read_manifest,
    shard_number,
    top_folder,
    upgrade_metadata,
)
from xretrieve.store.reader import (
    MMAP_MIN_BYTES,
    LoadedShard,
    Reader,
    load_shard,
    pinned_files,
    read_deleted,
    read_metadata,
)
from xretrieve.store.writer import ShardPayload, Writer, lock_index, write_generation

__all__ = [
    "FACT_COLUMNS",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "METADATA_SCHEMA",
    "MMAP_MIN_BYTES",
    "PARTITION_KEYS",
    "READERS_DIR",
    "SHARDS_DIR",
    "STATS_COLUMNS",
    "LoadedShard",
    "Manifest",
    "Reader",
    "ShardFile",
    "ShardInfo",
    "ShardMissingError",
    "ShardPayload",
    "Writer",
    "atomic_write",
    "check_model",
    "describe_file",
    "load_shard",
    "lock_index",
    "metadata_columns",
    "metadata_row",
    "metadata_table",
    "partition_stats",
    "pinned_files",
    "read_deleted",
    "read_manifest",
    "read_metadata",
    "shard_number",
    "top_folder",
    "upgrade_metadata",
    "write_generation",
]
