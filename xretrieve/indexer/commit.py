"""Committing a run: new rows land as delta shards, a generation per batch; the last one merges.

- Every `commit_every` items (or `commit_seconds`) the pending rows are written as small exact
  (Flat) delta shards, one per modality and partition, and a generation is committed that
  holds the shards so far plus every delta. The same generation marks the stored rows those
  new rows replace as deleted, and the first one also the rows of files gone from the
  folder, so no generation shows a file twice or a deleted file.
- `finish` lands one last generation: it drops the rows of files that are no longer indexed
  and merges the deltas (and small or re-partitioned shards) into shards of at most
  `max_rows_per_shard`, split by modality and by the `shard_by` partition. A big shard (at
  least `IndexOptions.compact_rows` rows) that lost at most `COMPACT_DELETED_FRACTION` of
  its rows keeps its files and a list of deleted rows instead of being rewritten (its ANN
  index is not trained again).
- Nothing is encoded here: a row that reuses a stored vector reads it back from its shard
  (delta and small shards are exact Flat shards, so their vectors come back bit for bit).
- The run's state (`run.Run`, its `Pending` generation and `Item`s) lives in `run`, below
  this module: the passes that fill it and the folder that makes it both sit above.

Each commit is atomic (see `store.writer`): a killed run leaves the last committed generation.

A full rebuild over an existing index (`Pending.publish` False) writes its delta shards at the
same points but lands no generation until `finish`: its intermediate generations would show
only the part rebuilt so far (and may mix two models' vectors), so readers keep the old
generation until the new one is complete, and a killed rebuild leaves the old one live.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from xretrieve import store
from xretrieve._types import Modality, Vectors
from xretrieve.indexer.known import item_key
from xretrieve.indexer.run import Run
from xretrieve.store import ann

__all__ = ["COMPACT_DELETED_FRACTION", "commit", "due", "finish", "shard_order"]

#: A shard at least `IndexOptions.compact_rows` big is rewritten only when more than this
#: fraction of its rows is deleted; below that, its deleted rows are listed and skipped by
#: searches.
COMPACT_DELETED_FRACTION = 0.25


def shard_order(s: store.ShardInfo) -> tuple[int, int]:
    """Shards in a manifest: images, texts, audio, each by number."""
    order = {"image": 0, "text": 1, "audio": 2}
    return order.get(s.modality, 9), store.shard_number(s.name)


def due(run: Run) -> bool:
    """Whether enough rows (or time) have gathered for a commit."""
    p, opts = run.pending, run.options
    return len(p.items) >= opts.commit_every or (
        bool(p.items) and time.monotonic() - p.last_commit >= opts.commit_seconds
    )


def _resolve(run: Run) -> Vectors:
    """The vectors of the pending rows: encoded, or read back from the shard that holds them."""
    p = run.pending
    out = np.empty((len(p.items), run.encoder.dim), np.float32)
    by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
    infos: dict[str, store.ShardInfo] = {}
    for i, item in enumerate(p.items):
        src = item
        while src.same_as is not None:
            src = src.same_as
        if src.vector is not None:
            out[i] = src.vector
        elif src.ref is not None:
            info, row = src.ref
            by_shard[info.name].append((i, row))
            infos[info.name] = info
        else:  # pragma: no cover - every item is encoded before a commit
            raise RuntimeError("an item reached a commit without a vector")
    current = {s.name: s for s in p.shards}
    for name, wanted in by_shard.items():
        built = store.load_shard(run.writer.dir, current.get(name, infos[name])).index
        rows = np.array([r for _, r in wanted], np.int64)
        out[[i for i, _ in wanted]] = ann.reconstruct_vectors(built, rows)
    return out


def _partition_value(key: str | None, row: dict[str, Any]) -> Any:
    return None if key in (None, "none") else row[key]


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    return {c: row[c] for c in store.FACT_COLUMNS if row.get(c) is not None}


def commit(run: Run) -> None:
    """Write the pending rows as delta shards (one per modality and partition), then commit."""
    p, opts = run.pending, run.options
    if not p.items:
        return
    vectors = _resolve(run)
    groups: dict[tuple[Modality, Any], list[int]] = defaultdict(list)
    for i, item in enumerate(p.items):
        groups[(item.row["modality"], _partition_value(opts.shard_by, item.row))].append(i)
    for (modality, value), idx in groups.items():
        payload = store.ShardPayload(
            modality,
            np.ascontiguousarray(vectors[idx]),
            store.metadata_table([p.items[i].row for i in idx]),
            {"key": opts.shard_by, "value": value},
        )
        cap = min(opts.compact_rows, opts.max_rows_per_shard)
        infos = run.writer.write_shard(payload, max_rows=cap, index_type="flat")
        p.deltas += infos
        p.shards += infos
        offset = 0
        for info in infos:
            for j in range(info.rows):
                item = p.items[idx[offset + j]]
                run.known.vectors.setdefault(
                    item.row["content_hash"], ((info, j), _facts(item.row))
                )
            offset += info.rows
    _delete_replaced(run)
    p.shards.sort(key=shard_order)
    if p.publish:
        _land(run, p.shards)
    p.items.clear()
    p.waiting.clear()
    p.gone.clear()
    p.last_commit = time.monotonic()


def _land(run: Run, shards: list[store.ShardInfo]) -> None:
    run.writer.commit(
        shards + run.pending.corpora,
        root=str(run.scan.root),
        model=run.encoder.spec.to_dict(),
        dim=run.encoder.dim,
        stats=run.stats(),
    )
    run.report.commits += 1


def _delete_replaced(run: Run) -> None:
    """Mark deleted the stored rows that the pending rows replace, and those of gone files."""
    p = run.pending
    refs = list(p.gone)
    for item in p.items:
        refs += [s.ref for s in run.known.rows.get(item_key(item.row), [])]
    by_shard: dict[str, list[int]] = defaultdict(list)
    for info, row in refs:
        by_shard[info.name].append(row)
    if by_shard:
        p.shards = [
            run.writer.write_deletions(s, np.array(by_shard[s.name], np.int64))
            if s.name in by_shard
            else s
            for s in p.shards
        ]


# ---------------------------------------------------------------------------------------------
# The final generation: drop stale rows, merge small shards


def _write_merged(run: Run, payload: store.ShardPayload) -> list[store.ShardInfo]:
    """Write one merged shard of the final generation (not yet committed)."""
    opts = run.options
    return run.writer.write_shard(
        payload, max_rows=opts.max_rows_per_shard, index_type=opts.index_type
    )


def finish(run: Run) -> bool:
    """Land the final generation; False when there was nothing to do."""
    opts, writer, p = run.options, run.writer, run.pending
    delta_names = {s.name for s in p.deltas}

    def stale_rows(info: store.ShardInfo) -> list[int]:
        if info.name in delta_names:
            return []
        return [r for r in range(info.rows) if (info.name, r) not in run.keep]

    big = min(opts.compact_rows, opts.max_rows_per_shard)
    groups: dict[tuple[str, Any], list[store.ShardInfo]] = defaultdict(list)
    for s in p.shards:
        groups[(s.modality, s.partition.get("value"))].append(s)
    rework: list[store.ShardInfo] = []
    trimmed: dict[str, store.ShardInfo] = {}  # big shards that only get deleted rows
    for members in groups.values():
        small = [s for s in members if s.rows < big or s.name in delta_names]
        for s in members:
            stale = stale_rows(s)
            if (
                s.partition.get("key") != opts.shard_by
                or (s in small and len(small) > 1)
                or (s.name in delta_names and opts.index_type is not None)
            ):
                rework.append(s)
            elif stale and s.rows >= big and len(stale) <= COMPACT_DELETED_FRACTION * s.rows:
                info = writer.write_deletions(s, np.array(stale, np.int64))
                if info != s:
                    trimmed[s.name] = info
            elif stale:
                rework.append(s)
    if not rework and not trimmed:
        if p.publish:
            return False  # the generation already committed is the final one
        _land(run, sorted(p.shards, key=shard_order))  # the rebuild's one generation
        return True
    rework_names = {s.name for s in rework}
    final = [trimmed.get(s.name, s) for s in p.shards if s.name not in rework_names]
    buffers: dict[tuple[Modality, Any], tuple[list[Vectors], list[pa.Table]]] = defaultdict(
        lambda: ([], [])
    )

    def flush(gk: tuple[Modality, Any], *, force: bool) -> None:
        vecs, metas = buffers[gk]
        n = sum(len(v) for v in vecs)
        cap = opts.max_rows_per_shard
        take = n if force else (n // cap) * cap  # only full shards until the last flush
        if take == 0:
            return
        allv = np.concatenate(vecs)
        allm = pa.concat_tables(metas)
        payload = store.ShardPayload(
            gk[0],
            np.ascontiguousarray(allv[:take]),
            allm.slice(0, take),
            {"key": opts.shard_by, "value": gk[1]},
        )
        final.extend(_write_merged(run, payload))
        buffers[gk] = ([allv[take:]], [allm.slice(take)]) if take < n else ([], [])

    for info in rework:
        shard = store.load_shard(writer.dir, info)
        if info.name in delta_names:
            rows = np.arange(info.rows)
        else:
            rows = np.array([r for r in range(info.rows) if (info.name, r) in run.keep], np.int64)
        if len(rows) == 0:
            continue
        vecs = ann.reconstruct_vectors(shard.index, rows)
        meta = shard.metadata.take(pa.array(rows))
        values = (
            [None] * len(rows)
            if opts.shard_by == "none"
            else meta.column(opts.shard_by).to_pylist()
        )
        by_value: dict[Any, list[int]] = defaultdict(list)
        for i, v in enumerate(values):
            by_value[v].append(i)
        for v, idx in by_value.items():
            gk = (info.modality, v)
            buffers[gk][0].append(vecs[idx])
            buffers[gk][1].append(meta.take(pa.array(idx)))
            flush(gk, force=False)
    for gk in list(buffers):
        flush(gk, force=True)
    final.sort(key=shard_order)
    _land(run, final)
    return True
