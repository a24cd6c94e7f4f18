"""Fixtures of the API tests: apps over the shared tiny index, or over a private copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_helpers import MakeClient, served

from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.serve import ServeConfig, create_app


@pytest.fixture()
def make_client(built_index: Path, tiny_encoder: Encoder) -> Iterator[MakeClient]:
    """`make_client(**ServeConfig fields)`: a started TestClient over the shared tiny index."""
    clients: list[TestClient] = []

    def make(indexes: dict[str, Path] | None = None, **kw: Any) -> TestClient:
        paths = indexes or {"demo": built_index}
        cfg = ServeConfig(indexes=paths, device="cpu", refresh_interval=0, **kw)
        client = TestClient(create_app(cfg, served=served(paths, tiny_encoder)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: MakeClient) -> TestClient:
    """A client of an app over the shared tiny index, no token."""
    return make_client()


@pytest.fixture()
def private_index(media_dir: Path, tiny_encoder: Encoder, tmp_path: Path) -> Path:
    """A writable index over a private copy of the test split (for refresh and file tests)."""
    out = tmp_path / "index"
    index_folder(media_dir, out, encoder=tiny_encoder, options=IndexOptions(progress=False))
    return out
