"""The HTTP endpoints: /api/* (token-guarded when a token is set), /healthz, /metrics.

Rules kept here:

- Handlers are thin: they read the request, take the index's current generation once, run
  the work on the worker pool, and shape the answer. Searching is `search.py`'s, files and
  thumbnails `files.py`'s and `thumbs.py`'s, errors `errors.py`'s.
- Items are addressed by id and index name only; no parameter is ever used as a path.
- No `from __future__ import annotations` here: FastAPI reads the parameter annotations at
  run time, and the thumbnail size bounds come from the service's settings (a closure).
- Responses built on the hot path are `JSONResponse`s of plain dicts (no second validation
  pass); the models still document them in /docs.
"""

import hmac
import time
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xretrieve.serve.bodies import decode_upload, read_request
from xretrieve.serve.errors import NotFound, Unauthorized
from xretrieve.serve.files import item_file, open_in_root, read_all, stream
from xretrieve.serve.models import (
    CaptionRequest,
    HealthResponse,
    IndexesResponse,
    ItemResponse,
    SearchRequest,
    SearchResponse,
)
from xretrieve.serve.pool import Gone
from xretrieve.serve.search import find_item, item_json, run_caption, run_search
from xretrieve.serve.service import Service
from xretrieve.serve.thumbs import make_thumbnail, thumb_etag

__all__ = ["api_router", "open_router", "request_body_doc"]

IndexParam = Annotated[
    str | None,
    Query(description="Index name (see /api/indexes); may be omitted when one is served.",
          max_length=64),
]  # fmt: skip
ItemParam = Annotated[
    str, Path(description="An item id (20 hex digits), as hits and items give it.", max_length=64)
]
_THUMB_CACHE = "private, max-age=86400"
_FILE_CACHE = "private, max-age=3600"


def request_body_doc(model: str, what: str) -> dict[str, Any]:
    """OpenAPI text for a body that is JSON, or a form with the JSON in `q` and an image."""
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "q": {"type": "string", "description": f"The {model} as JSON text."},
                            "image": {"type": "string", "format": "binary", "description": what},
                        },
                    }
                },
            },
        }
    }


def _matches(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match")
    if not given:
        return False
    tags = [t.strip().removeprefix("W/") for t in given.split(",")]
    return "*" in tags or etag in tags


def _token_guard(service: Service) -> Any:
    token = service.config.token

    async def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else request.query_params.get("token")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("a valid token is needed: send Authorization: Bearer <token>")

    return require_token


def api_router(service: Service) -> APIRouter:
    """The /api routes of one service."""
    cfg = service.config
    pool = service.pool
    router = APIRouter(prefix="/api", dependencies=[Depends(_token_guard(service))])

    @router.get("/indexes", response_model=IndexesResponse, summary="The served indexes")
    async def indexes() -> JSONResponse:
        return JSONResponse({"indexes": [service.generation(n).describe() for n in service.names]})

    async def ranked(request: Request, model: Any, run: Any) -> JSONResponse:
        """Read a search or caption request, run it on the pool, answer with its timings."""
        t0 = time.perf_counter()
        req, data = await read_request(
            request, model, json_cap=cfg.max_json_bytes, upload_cap=cfg.max_upload_bytes
        )
        gen = service.generation(req.index)

        def work() -> dict[str, Any]:
            image = None
            if data is not None:
                size = gen.index.encoder.spec.image_size
                image = decode_upload(data, max_pixels=cfg.max_pixels, target_size=size)
            out: dict[str, Any] = run(gen, req, image=image, config=cfg)
            return out

        try:  # a superseded search (the page aborts it) gives its place in the queue back
            out, waited = await pool.run(work, gone=request.is_disconnected)
        except Gone:
            return JSONResponse({"error": "the client closed the request"}, status_code=499)
        out["timings"]["queue"] = waited * 1000.0
        out["timings"]["total"] = (time.perf_counter() - t0) * 1000.0
        return JSONResponse(out)

    @router.post(
        "/search",
        response_model=SearchResponse,
        summary="Search an index (text, uploaded image, item id, or a mix)",
        openapi_extra=request_body_doc("SearchRequest", "An image to search with."),
    )
    async def search(request: Request) -> JSONResponse:
        return await ranked(request, SearchRequest, run_search)

    @router.post(
        "/caption",
        response_model=SearchResponse,
        summary="The indexed captions nearest an image (item id or upload)",
        openapi_extra=request_body_doc("CaptionRequest", "An image to caption."),
    )
    async def caption(request: Request) -> JSONResponse:
        return await ranked(request, CaptionRequest, run_caption)

    @router.get("/items/{item_id}", response_model=ItemResponse, summary="One item's metadata")
    async def item(item_id: ItemParam, index: IndexParam = None) -> JSONResponse:
        gen = service.generation(index)
        return JSONResponse(item_json(find_item(gen, item_id).metadata))

    @router.get(
        "/thumb/{item_id}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."},
                   304: {"description": "Not modified (If-None-Match matched the ETag)."}},
        summary="A JPEG thumbnail of an item (EXIF-rotated, cached)",
    )  # fmt: skip
    async def thumb(
        request: Request,
        item_id: ItemParam,
        index: IndexParam = None,
        size: Annotated[
            int,
            Query(ge=cfg.thumb_min, le=cfg.thumb_max,
                  description="Longest side in pixels."),
        ] = 256,
    ) -> Response:  # fmt: skip
        gen = service.generation(index)
        ref = find_item(gen, item_id)
        etag = thumb_etag(gen.name, item_id, size)
        headers = {"ETag": etag, "Cache-Control": _THUMB_CACHE}
        if _matches(request, etag):
            return Response(status_code=304, headers=headers)
        key = (gen.name, item_id, size)
        data = service.thumbs.get(key)
        if data is None:
            rel = item_file(ref.metadata, for_thumbnail=True)
            if rel is None:
                raise NotFound(f"item {item_id} has no picture to show")

            def work() -> bytes:
                f = open_in_root(gen.index.root, rel, max_bytes=cfg.max_file_bytes)
                return make_thumbnail(read_all(f), size=size, name=rel)

            made, _ = await pool.run(work)
            service.thumbs.put(key, made)
            data = made
        return Response(data, media_type="image/jpeg", headers=headers)

    @router.get(
        "/file/{item_id}",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}},
                         "description": "The original file."}},
        summary="The original file of an item",
    )  # fmt: skip
    async def file(request: Request, item_id: ItemParam, index: IndexParam = None) -> Response:
        gen = service.generation(index)
        ref = find_item(gen, item_id)
        rel = item_file(ref.metadata)
        if rel is None:
            raise NotFound(f"item {item_id} has no file")
        f = open_in_root(gen.index.root, rel, max_bytes=cfg.max_file_bytes)
        headers = {"ETag": f.etag, "Cache-Control": _FILE_CACHE}
        if _matches(request, f.etag):
            f.close()
            return Response(status_code=304, headers=headers)
        quoted = urllib.parse.quote(f.name, safe="")
        headers |= {
            "Content-Length": str(f.size),
            "Content-Disposition": f"inline; filename*=UTF-8''{quoted}",
            # Whatever the file holds, a browser never runs it as this site's page.
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        return StreamingResponse(stream(f), media_type=f.media_type, headers=headers)

    return router


def open_router(service: Service) -> APIRouter:
    """/healthz (always open) and /metrics (token-guarded when a token is set)."""
    router = APIRouter()

    @router.get("/healthz", response_model=HealthResponse, summary="Liveness and generations")
    async def healthz() -> JSONResponse:
        gens = {n: service.generation(n).number for n in service.names}
        return JSONResponse({"status": "ok", "indexes": gens})

    @router.get(
        "/metrics",
        response_class=Response,
        dependencies=[Depends(_token_guard(service))],
        summary="Prometheus metrics (text format)",
    )
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
