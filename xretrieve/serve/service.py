"""The service's state: settings, served indexes, worker pool, thumbnail cache, metrics.

One `Service` per app; handlers reach everything through it. Rules kept here: an index is
named by the request (or implied when only one is served); an unknown name is 404 and an
omitted one with several served is 400 — the message lists the names, which
/api/indexes shows anyway.
"""

from __future__ import annotations

from typing import Any

from xretrieve.errors import InputError
from xretrieve.serve.catalog import Generation, ServedIndex, open_served
from xretrieve.serve.config import ServeConfig
from xretrieve.serve.errors import NotFound
from xretrieve.serve.metrics import Metrics
from xretrieve.serve.pool import WorkerPool
from xretrieve.serve.thumbs import ThumbCache

__all__ = ["Service"]


class Service:
    """Everything a request handler needs, built once per app."""

    def __init__(self, config: ServeConfig, served: dict[str, ServedIndex] | None = None):
        self.config = config.validate()
        self.served = served or open_served(
            config.indexes,
            device=config.device,
            precision=config.precision,
            refresh_interval=config.refresh_interval,
        )
        self.names = list(self.served)
        self.pool = WorkerPool(
            threads=config.threads, queue=config.queue, retry_after=config.retry_after
        )
        self.thumbs = ThumbCache(config.thumb_cache_bytes)
        self.metrics = Metrics(self._state)

    def generation(self, name: str | None) -> Generation:
        """The current generation of the index a request names."""
        if name is None:
            if len(self.served) != 1:
                raise InputError(
                    f"{len(self.served)} indexes are served: name one as index "
                    f"({', '.join(self.names)})"
                )
            return next(iter(self.served.values())).current()
        served = self.served.get(name)
        if served is None:
            raise NotFound(f"no index named {name[:64]!r} is served")
        return served.current()

    def close(self) -> None:
        """Stop the workers and release the indexes' pins."""
        self.pool.shutdown()
        for s in self.served.values():
            s.close()

    def _state(self) -> dict[str, tuple[str, list[str], list[Any]]]:
        gens = {n: s.latest for n, s in self.served.items()}
        rows = [
            ([n, m], v)
            for n, g in gens.items()
            for m, v in g.index.manifest.rows_by_modality().items()
        ]
        return {
            "xretrieve_index_generation": (
                "Generation served, by index.",
                ["index"],
                [([n], g.number) for n, g in gens.items()],
            ),
            "xretrieve_index_rows": (
                "Items served, by index and modality.",
                ["index", "modality"],
                rows,
            ),
            "xretrieve_pool_pending": (
                "Requests running on or waiting for a worker.",
                [],
                [([], self.pool.pending)],
            ),
            "xretrieve_pool_rejected": (
                "Requests refused with 503 since start (pool full).",
                [],
                [([], self.pool.rejected)],
            ),
            "xretrieve_thumb_cache_bytes": (
                "Bytes of thumbnails cached.",
                [],
                [([], self.thumbs.bytes)],
            ),
            "xretrieve_thumb_cache_hits": (
                "Thumbnails answered from the cache since start.",
                [],
                [([], self.thumbs.hits)],
            ),
            "xretrieve_thumb_cache_misses": (
                "Thumbnails made since start (not in the cache).",
                [],
                [([], self.thumbs.misses)],
            ),
        }
