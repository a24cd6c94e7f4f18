"""The FastAPI app: `create_app(config)` wires the service, its routes, the page and limits.

Rules kept here:

- The indexes (and their models) are opened when the app is created, so a bad index or a
  missing model fails before the server listens; the lifespan's end stops the workers and
  releases the indexes.
- Middleware, outermost first: metrics and common headers, CORS (only when origins are
  given), then the body limit (`bodies.BodyLimit`): `max_json_bytes` for every route,
  raised to `max_upload_bytes + max_json_bytes` on the two routes that take an image.
- The page is the `static/` folder beside this module: `/` serves its `index.html`
  (a short placeholder until it exists) and `/static` the rest, open without a token.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from xretrieve.serve.api import api_router, open_router
from xretrieve.serve.bodies import BodyLimit
from xretrieve.serve.catalog import ServedIndex
from xretrieve.serve.config import ServeConfig
from xretrieve.serve.errors import install_error_handlers
from xretrieve.serve.metrics import ObserveMiddleware
from xretrieve.serve.models import CaptionRequest, SearchRequest
from xretrieve.serve.service import Service

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).with_name("static")
_DESCRIPTION = (
    "Search indexed media in words or pictures. Every `/api` call needs "
    "`Authorization: Bearer <token>` (or `?token=`) when the server has a token. Errors are "
    '`{"error": {"type", "message"}}` with 400 (bad input, bad WHERE, empty query), 401, '
    "404 (unknown index or item), 413 (body, upload or image too large), 422 (undecodable "
    "image, invalid request) or 503 (busy: retry after Retry-After seconds)."
)
_PLACEHOLDER = """<!doctype html><html lang="en"><meta charset="utf-8"><title>xretrieve</title>
<body><h1>xretrieve</h1><p>The search page is not installed; the API is at
<a href="/docs">/docs</a>.</p></body></html>"""


def _version() -> str:
    # Not `xretrieve.__version__`: importing the package root would pull in the indexer.
    try:
        return importlib.metadata.version("xretrieve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the request models the manually read bodies use."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SearchRequest, CaptionRequest):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(s.pop("$defs", {}))
            comps[model.__name__] = s
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(config: ServeConfig, *, served: dict[str, ServedIndex] | None = None) -> FastAPI:
    """The app serving `config.indexes` (opened now; `served` passes already opened ones)."""
    service = Service(config, served)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="xretrieve",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(api_router(service))
    app.include_router(open_router(service))

    index_html = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        if index_html.is_file():
            return FileResponse(index_html, media_type="text/html; charset=utf-8")
        return HTMLResponse(_PLACEHOLDER)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    upload_cap = config.max_upload_bytes + config.max_json_bytes
    app.add_middleware(
        BodyLimit,
        default=config.max_json_bytes,
        by_path={"/api/search": upload_cap, "/api/caption": upload_cap},
    )
    if config.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(ObserveMiddleware, metrics=service.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
