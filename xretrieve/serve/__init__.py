"""Serve: an HTTP search service over one or more indexes, and the page that uses it.

`create_app(ServeConfig(indexes={"demo": Path("indexes/demo")}))` builds a FastAPI app;
`xretrieve serve` runs it with uvicorn. Modules, in the order a request meets them:
`app` (the app, middleware, page), `metrics` (counting), `api` (endpoints), `bodies`
(request bodies and uploads), `service` (state), `catalog` (indexes and their generations),
`ids` (item ids), `search` (the query layer, paging, hits), `files` and `thumbs` (serving
indexed files), `pool` (worker threads), `errors` (status codes), `config` (settings),
`models` (JSON shapes).

The HTTP layer alone turns library errors into status codes (`errors.STATUS_CODES`).
"""

from xretrieve.serve.app import STATIC_DIR, create_app
from xretrieve.serve.config import LOOPBACK_HOSTS, ServeConfig, index_name
from xretrieve.serve.errors import STATUS_CODES, status_code
from xretrieve.serve.ids import item_id

__all__ = [
    "LOOPBACK_HOSTS",
    "STATIC_DIR",
    "STATUS_CODES",
    "ServeConfig",
    "create_app",
    "index_name",
    "item_id",
    "status_code",
]
