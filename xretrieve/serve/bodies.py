"""Request bodies: JSON read under a byte cap, or a multipart form with one image upload.

Rules kept here:

- Sizes are checked while the body streams in, never after reading it all: a declared
  `Content-Length` over the cap is refused before a byte is read, and a body that grows
  past it (chunked, or lying about its length) is refused at the chunk that crosses it.
  `BodyLimit` (ASGI middleware) caps every body at `max_json_bytes`, raised to
  `max_upload_bytes + max_json_bytes` on the routes that take an image; `read_json` holds
  a JSON body to `max_json_bytes` on those routes too. Refusals are `TooLarge` (413) with
  the usual JSON error body.
- An uploaded image's pixels are checked from its header before it is decoded: a
  decompression bomb is refused (413) without allocating its pixels; a file that is not
  an image is a `MediaError` (422).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import TypeVar

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.datastructures import Headers, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xretrieve.errors import InputError, MediaError
from xretrieve.media.image import decode_image
from xretrieve.serve.errors import HttpError, TooLarge

__all__ = ["BodyLimit", "decode_upload", "read_json", "read_request"]

M = TypeVar("M", bound=BaseModel)
_UPLOAD = "uploaded image"


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


class BodyLimit:
    """Refuse (413) a request body over its path's cap: by its declared length, or as it streams."""

    def __init__(self, app: ASGIApp, *, default: int, by_path: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.by_path = dict(by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.by_path.get(scope["path"], self.default)
        declared = _declared_length(Headers(scope=scope))
        got = 0

        async def limited() -> Message:
            nonlocal got
            if declared is not None and declared > cap:
                raise TooLarge(f"the request body has {declared:,} bytes; the limit is {cap:,}")
            message = await receive()
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                if got > cap:
                    raise TooLarge(f"the request body is over the limit of {cap:,} bytes")
            return message

        await self.app(scope, limited, send)


async def read_json(request: Request, model: type[M], *, cap: int) -> M:
    """The body parsed as `model`, refusing it (413) as soon as it passes `cap` bytes."""
    declared = _declared_length(request.headers)
    if declared is not None and declared > cap:
        raise TooLarge(f"the request body has {declared:,} bytes; the limit is {cap:,}")
    chunks, got = [], 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > cap:
            raise TooLarge(f"the request body is over the limit of {cap:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return model()
    return model.model_validate_json(body)


async def read_request(
    request: Request, model: type[M], *, json_cap: int, upload_cap: int
) -> tuple[M, bytes | None]:
    """The request model and the uploaded image's bytes (None when no image was sent).

    JSON bodies hold the model; multipart forms hold it as a JSON field `q` (optional) and
    the image as a file field `image`.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("", "application/json"):
        return await read_json(request, model, cap=json_cap), None
    if ctype != "multipart/form-data":
        raise HttpError(415, f"send JSON or a multipart form, not {ctype}")
    form = await request.form(max_files=1, max_fields=2, max_part_size=json_cap)
    try:
        q = form.get("q")
        if q is not None and not isinstance(q, str):
            raise InputError("the form field q must be JSON text, not a file")
        req = model.model_validate_json(q) if q and q.strip() else model()
        upload = form.get("image")
        if upload is None:
            return req, None
        if not isinstance(upload, UploadFile):
            raise InputError("the form field image must be a file")
        data = await upload.read(upload_cap + 1)
        if len(data) > upload_cap:
            raise TooLarge(f"the uploaded image is over the limit of {upload_cap:,} bytes")
        return req, data
    finally:
        await form.close()


def decode_upload(data: bytes, *, max_pixels: int, target_size: int) -> Image.Image:
    """An uploaded image decoded to RGB (EXIF-rotated), after its pixel count is checked."""
    if not data:
        raise MediaError(_UPLOAD, "empty file")
    with warnings.catch_warnings():
        # Pillow warns past its own limit; ours (lower) is checked just below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
        except Image.DecompressionBombError:
            raise TooLarge(f"the {_UPLOAD} has too many pixels (decompression bomb)") from None
        except UnidentifiedImageError:
            raise MediaError(_UPLOAD, "not a recognised image format") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise MediaError(_UPLOAD, f"cannot decode: {e}") from None
    if width * height > max_pixels:
        raise TooLarge(
            f"the {_UPLOAD} has {width}x{height} pixels; the limit is {max_pixels:,} pixels"
        )
    return decode_image(data, path=_UPLOAD, target_size=target_size).image
