"""Helpers of the API tests (a module of their own: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.query import Index
from xretrieve.serve.catalog import ServedIndex

MakeClient = Callable[..., TestClient]


def served(indexes: dict[str, Path], encoder: Encoder) -> dict[str, ServedIndex]:
    """Indexes opened with the session's encoder (no model load per app)."""
    return {
        name: ServedIndex(name, Index(p, store.read_manifest(p), encoder), refresh_interval=0)
        for name, p in indexes.items()
    }


def first_hit(client: TestClient, **body: Any) -> dict[str, Any]:
    """The best hit of a search."""
    r = client.post("/api/search", json={"text": "a red circle", "k": 1, **body})
    assert r.status_code == 200, r.text
    return r.json()["hits"][0]


def add_files(media: Path, source: Path, n: int) -> list[str]:
    """Copy n image files (with their captions) from `source` into `media`; their names."""
    names = []
    for png in sorted(source.glob("*.png"))[:n]:
        shutil.copy2(png, media / f"new_{png.name}")
        txt = png.with_suffix(".txt")
        if txt.exists():
            shutil.copy2(txt, media / f"new_{txt.name}")
        names.append(f"new_{png.name}")
    return names
