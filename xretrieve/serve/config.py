"""The service's settings: one frozen dataclass, checked once, read by every part of the app.

Rules kept here: every limit the service enforces (upload bytes and pixels, JSON body bytes,
`k`, worker threads and their queue, thumbnail sizes and cache bytes) has one field and one
default; `validate()` refuses nonsense with `InputError` naming the field (never a CLI flag).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xretrieve._types import PRECISIONS
from xretrieve.errors import InputError

__all__ = ["LOOPBACK_HOSTS", "ServeConfig", "index_name"]

#: Hosts that only this machine can reach: binding to them needs no token.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def index_name(path: str | os.PathLike[str]) -> str:
    """The name an index is served under when none is given: its folder's name."""
    return Path(path).expanduser().resolve().name or "index"


@dataclass(frozen=True)
class ServeConfig:
    """What the service serves and the limits it keeps."""

    #: Served indexes: name -> index folder.
    indexes: Mapping[str, Path]
    #: Bearer token every /api call must carry; None = no authentication (loopback only).
    token: str | None = None
    #: Worker threads for searches and thumbnails.
    threads: int = 4
    #: Requests that may wait for a worker; past that the service answers 503 at once.
    queue: int = 32
    #: Largest uploaded image, in bytes (the whole multipart body may add `max_json_bytes`).
    max_upload_bytes: int = 20 << 20
    #: Largest uploaded image, in pixels (decompression bombs are refused before decoding).
    max_pixels: int = 64_000_000
    #: Largest JSON request body (and JSON form field), in bytes.
    max_json_bytes: int = 64 << 10
    #: Largest `offset + k` of a search (and the pool `sort=mtime` orders).
    max_k: int = 1000
    #: Origins allowed to call the API from a browser page elsewhere; empty = CORS off.
    cors: tuple[str, ...] = ()
    #: Device the query encoders run on: auto, cpu or cuda.
    device: str = "auto"
    #: Precision the query encoders run in (`PRECISIONS`); None = each index's own.
    precision: str | None = None
    #: Bytes of JPEG thumbnails kept in memory (least recently used dropped first).
    thumb_cache_bytes: int = 64 << 20
    #: Thumbnail edge bounds in pixels (the `size` query parameter).
    thumb_min: int = 32
    thumb_max: int = 1024
    #: Seconds between checks for a new generation of an index (0 = before every request).
    refresh_interval: float = 1.0
    #: Seconds a client is told to wait after a 503.
    retry_after: int = 1
    #: Largest indexed file streamed by /api/file or read for a thumbnail.
    max_file_bytes: int = 1 << 30

    def validate(self) -> ServeConfig:
        """Return self, or raise `InputError` naming the bad setting."""
        if not self.indexes:
            raise InputError("no index to serve: give at least one index folder")
        for name in self.indexes:
            if not name or not set(name) <= _NAME_CHARS or len(name) > 64:
                raise InputError(
                    f"index name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.token is not None and len(self.token) < 8:
            raise InputError("the token must be at least 8 characters long")
        for what, value, lo in (
            ("threads", self.threads, 1),
            ("queue", self.queue, 0),
            ("max_upload_bytes", self.max_upload_bytes, 1),
            ("max_pixels", self.max_pixels, 1),
            ("max_json_bytes", self.max_json_bytes, 256),
            ("max_k", self.max_k, 1),
            ("thumb_cache_bytes", self.thumb_cache_bytes, 0),
            ("thumb_min", self.thumb_min, 1),
            ("retry_after", self.retry_after, 0),
            ("max_file_bytes", self.max_file_bytes, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise InputError(f"{what} must be a whole number >= {lo}, got {value!r}")
        if self.thumb_max < self.thumb_min:
            raise InputError(f"thumb_max ({self.thumb_max}) is below thumb_min ({self.thumb_min})")
        if self.refresh_interval < 0:
            raise InputError(f"refresh_interval must be >= 0, got {self.refresh_interval}")
        return self
