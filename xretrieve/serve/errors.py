"""The HTTP layer's half of the one error tree: library errors become status codes here only.

Rules kept here:

- `STATUS_CODES` maps each `xretrieve.errors` family to one status, most specific first, as
  the CLI's `EXIT_CODES` maps them to exit codes. User input never yields 500.
- The service's own conditions (no such index or item, body too large, busy, no token) are
  `HttpError`s carrying their status; they are not library errors.
- Every error body is `{"error": {"type": ..., "message": one line}}`; no traceback, no
  stack, no multi-line text ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from xretrieve.errors import (
    EmptyQueryError,
    FolderError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
    MediaError,
    ModelError,
    ShardMissingError,
    XRetrieveError,
)

__all__ = [
    "STATUS_CODES",
    "Busy",
    "HttpError",
    "NotFound",
    "TooLarge",
    "Unauthorized",
    "error_body",
    "install_error_handlers",
    "one_line",
    "status_code",
]

log = logging.getLogger("xretrieve.serve")

#: Status codes by error family, most specific first: the HTTP layer's half of the tree.
STATUS_CODES: tuple[tuple[type[XRetrieveError], int], ...] = (
    (EmptyQueryError, 400),
    (InputError, 400),
    (MediaError, 422),
    (FolderError, 500),
    (ModelError, 500),
    (ShardMissingError, 503),  # a newer generation removed it: the next try reads that one
    (IndexLockedError, 503),
    (IndexCorruptError, 500),
    (IndexNotFoundError, 500),
    (IndexStoreError, 500),
    (XRetrieveError, 500),
)
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    503: "Busy",
}
_MAX_MESSAGE = 500


def status_code(e: XRetrieveError) -> int:
    """The status the service answers an error of this family with."""
    return next(code for cls, code in STATUS_CODES if isinstance(e, cls))


class HttpError(HTTPException):
    """A condition of the service itself (not a library error), with its status."""

    kind = ""  # subclasses name themselves; the rest take the status's name

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)


class NotFound(HttpError):
    """No such index, item or file (never says which of those exist)."""

    kind = "NotFound"

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class TooLarge(HttpError):
    """A body, upload or image over the service's limits."""

    kind = "PayloadTooLarge"

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class Busy(HttpError):
    """Every worker is busy and the queue is full: try again after `retry_after` seconds."""

    kind = "Busy"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(503, message, headers={"Retry-After": str(retry_after)})


class Unauthorized(HttpError):
    """A missing or wrong bearer token."""

    kind = "Unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})


def one_line(text: object) -> str:
    """`text` on one line, bounded: what an error message may look like on the wire."""
    s = " ".join(str(text).split())
    return s if len(s) <= _MAX_MESSAGE else s[: _MAX_MESSAGE - 1] + "…"


def error_body(kind: str, message: object) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"type": kind, "message": one_line(message)}}


def _respond(status: int, kind: str, message: object, headers: Any = None) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


def _validation_message(errors: Any) -> str:
    """The first validation error as `where: what` (pydantic's list, or FastAPI's)."""
    parts = []
    for err in list(errors)[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error a JSON body with the status `STATUS_CODES` or the error gives."""

    @app.exception_handler(XRetrieveError)
    async def _library(request: Request, e: XRetrieveError) -> JSONResponse:
        status = status_code(e)
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        headers = {"Retry-After": "1"} if status == 503 else None
        return _respond(status, type(e).__name__, e, headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        kind = getattr(e, "kind", None) or _REASONS.get(e.status_code, "HttpError")
        return _respond(e.status_code, kind, e.detail, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, e: RequestValidationError) -> JSONResponse:
        return _respond(422, "ValidationError", _validation_message(e.errors()))

    @app.exception_handler(ValidationError)
    async def _model(request: Request, e: ValidationError) -> JSONResponse:
        return _respond(422, "ValidationError", _validation_message(e.errors()))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        # A bug, not a user's mistake: logged in full here, one line to the client.
        log.exception("%s %s failed", request.method, request.url.path)
        return _respond(500, "InternalError", "the server failed to answer; see its log")
