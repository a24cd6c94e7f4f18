"""Thumbnails: a JPEG of an indexed image, EXIF-rotated, kept in a byte-bounded LRU cache.

Rules kept here: a thumbnail is made from the indexed file (decoded by `media.decode_image`,
which honours EXIF orientation and refuses decompression bombs), fits in a `size` x `size`
box and is cached under (index, item id, size). Ids name content, so the cache never serves
another file's picture; its ETag is the same key, so a revalidation costs no file access.
The cache holds at most `max_bytes` of JPEG data, least recently used dropped first.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from xretrieve.media.image import decode_image

__all__ = ["ThumbCache", "make_thumbnail", "thumb_etag"]

_QUALITY = 85


def thumb_etag(index: str, item: str, size: int) -> str:
    """The ETag of a thumbnail: it names the item's content and the size."""
    return f'"t-{index}-{item}-{size}"'


def make_thumbnail(data: bytes, *, size: int, name: str) -> bytes:
    """A JPEG at most `size` pixels on its longer side from an image file's bytes."""
    decoded = decode_image(data, path=name, target_size=size)
    im = decoded.image
    im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=_QUALITY)
    return out.getvalue()


class ThumbCache:
    """JPEG bytes by key, least recently used dropped once over `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        """The cached thumbnail, or None."""
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple[str, str, int], data: bytes) -> None:
        """Keep a thumbnail (unless it alone exceeds the cache)."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)
