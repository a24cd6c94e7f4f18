"""Fault injection for crash tests: kill (or watch) an indexing run at each commit point.

A commit point is a moment of a run at which a crash must leave a usable index. Each is a
real function of the library, wrapped here from the test side (the library has no hooks):

    encoded-batch    after an encoder batch of images or sounds   indexer.passes._encode_batch
    shard-parquet    after a shard's Parquet file, before FAISS    store.writer._write_parquet
    shard-written    after all of a shard's files                  store.writer._write_shard
    before-manifest  before a generation's manifest is renamed in  store.writer._write_manifest
    after-manifest   after it                                      store.writer._write_manifest
    merged-shard     after a merged shard of the final generation  indexer.commit._write_merged

`install(callback)` calls `callback(point)` at each; `kill_at("point:n")` SIGKILLs the
process the n-th time it reaches `point`. Pass `patch=monkeypatch.setattr` inside a test so
the wrappers are undone; a forked child or a subprocess just installs them for good.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Any

from xretrieve.indexer import commit, passes
from xretrieve.store import writer

#: (module, function, point before the call, point after it)
HOOKS: list[tuple[Any, str, str | None, str | None]] = [
    (passes, "_encode_batch", None, "encoded-batch"),
    (writer, "_write_parquet", None, "shard-parquet"),
    (writer, "_write_shard", None, "shard-written"),
    (writer, "_write_manifest", "before-manifest", "after-manifest"),
    (commit, "_write_merged", None, "merged-shard"),
]
POINTS = tuple(p for _, _, before, after in HOOKS for p in (before, after) if p)

Patch = Callable[[Any, str, Any], None]


def _wrap(
    real: Callable[..., Any],
    before: str | None,
    after: str | None,
    callback: Callable[[str], None],
) -> Callable[..., Any]:
    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            callback(before)
        out = real(*args, **kwargs)
        if after:
            callback(after)
        return out

    return wrapper


def install(callback: Callable[[str], None], *, patch: Patch = setattr) -> None:
    """Call `callback(point)` at every commit point of every later run in this process."""
    for module, name, before, after in HOOKS:
        real = getattr(module, name)
        if not callable(real):  # pragma: no cover - the library renamed a commit point
            raise AttributeError(f"{module.__name__}.{name} is not a function")
        patch(module, name, _wrap(real, before, after, callback))


def kill_at(spec: str, *, patch: Patch = setattr) -> None:
    """SIGKILL this process the n-th time it reaches a point; `spec` is "point[:n]"."""
    point, _, nth = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"unknown commit point {point!r}; known: {', '.join(POINTS)}")
    seen = 0

    def maybe_kill(reached: str) -> None:
        nonlocal seen
        if reached == point:
            seen += 1
            if seen >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    install(maybe_kill, patch=patch)


def counter(*, patch: Patch = setattr) -> dict[str, int]:
    """How many times each point has been reached (a live dict, updated as the run goes)."""
    counts = dict.fromkeys(POINTS, 0)

    def count(point: str) -> None:
        counts[point] += 1

    install(count, patch=patch)
    return counts
