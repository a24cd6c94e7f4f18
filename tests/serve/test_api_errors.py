"""Every error status the API answers, each as a one-line JSON body."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import MakeClient, first_hit

from xretrieve import errors
from xretrieve.serve import STATUS_CODES, status_code


def _err(r: object, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()["error"]  # type: ignore[attr-defined]
    assert set(body) == {"type", "message"}
    assert "\n" not in body["message"] and "Traceback" not in body["message"]
    return body


def _png(width: int, height: int, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def test_status_table_covers_the_error_tree() -> None:
    families = {c for c, _ in STATUS_CODES}
    assert errors.XRetrieveError in families
    assert status_code(errors.EmptyQueryError("x")) == 400
    assert status_code(errors.InputError("x")) == 400
    assert status_code(errors.MediaError("p", "bad")) == 422
    assert status_code(errors.ShardMissingError("x")) == 503
    assert status_code(errors.IndexCorruptError("x")) == 500
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert status_code(cls("p", "r") if cls is errors.MediaError else cls("x")) in (
            400,
            422,
            500,
            503,
        )


def test_400_bad_input(client: TestClient) -> None:
    assert (
        "WHERE"
        in _err(client.post("/api/search", json={"text": "x", "where": "nope >"}), 400)["message"]
    )
    hostile = "width > 0; DROP TABLE x"
    _err(client.post("/api/search", json={"text": "x", "where": hostile}), 400)
    assert _err(client.post("/api/search", json={"text": "  "}), 400)["type"] == "EmptyQueryError"
    assert _err(client.post("/api/search", json={}), 400)["type"] == "EmptyQueryError"
    assert "1000" in _err(client.post("/api/search", json={"text": "x", "k": 1001}), 400)["message"]
    _err(client.post("/api/search", json={"text": "x", "k": 10, "offset": 995}), 400)
    _err(client.post("/api/search", json={"text": "x", "weights": [1, 2, 3]}), 400)
    _err(client.post("/api/caption", json={}), 400)


def test_404_unknown_index_item_or_route(client: TestClient) -> None:
    _err(client.post("/api/search", json={"index": "nope", "text": "x"}), 404)
    _err(client.post("/api/search", json={"id": "0" * 20}), 404)
    _err(client.get("/api/items/" + "f" * 20), 404)
    _err(client.get("/api/items/not-an-id"), 404)
    _err(client.get("/api/thumb/" + "0" * 20), 404)
    _err(client.get("/api/nothing/here"), 404)
    hit = first_hit(client)
    _err(client.get(f"/api/items/{hit['id']}?index=other"), 404)


def test_413_bodies_uploads_and_pixels(make_client: MakeClient) -> None:
    c = make_client(max_upload_bytes=50_000, max_pixels=1_000_000)
    _err(
        c.post("/api/search", content=b" " * 70_000, headers={"content-type": "application/json"}),
        413,
    )
    big = b"\x89PNG" + b"0" * 60_000
    _err(c.post("/api/search", files={"image": ("a.png", big, "image/png")}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it streams
        for _ in range(100):
            yield b"x" * 10_000

    r = c.post(
        "/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    _err(r, 413)
    many = _png(2000, 1000)  # 2 M pixels, a small file
    assert len(many) < 50_000
    msg = _err(c.post("/api/search", files={"image": ("a.png", many, "image/png")}), 413)["message"]
    assert "pixels" in msg
    bomb = _png(20_000, 20_000, "1")  # 400 M pixels in ~50 kB: Pillow's own bomb limit
    _err(make_client().post("/api/search", files={"image": ("b.png", bomb, "image/png")}), 413)


def test_415_and_422(client: TestClient) -> None:
    _err(client.post("/api/search", content=b"a=b", headers={"content-type": "text/plain"}), 415)
    r = client.post("/api/search", files={"image": ("a.png", b"not an image", "image/png")})
    assert _err(r, 422)["type"] == "MediaError"
    _err(client.post("/api/search", files={"image": ("a.png", b"", "image/png")}), 422)
    _err(client.post("/api/search", json={"text": "x", "k": 0}), 422)
    _err(client.post("/api/search", json={"text": "x", "typo": 1}), 422)
    _err(client.post("/api/search", json={"text": "x", "modality": "video"}), 422)
    _err(
        client.post(
            "/api/search", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    _err(client.post("/api/search", data={"q": "{bad"}, files={"image": ("a.png", b"x")}), 422)
    hit = first_hit(client)
    _err(client.get(f"/api/thumb/{hit['id']}?size=5000"), 422)
    _err(client.get(f"/api/thumb/{hit['id']}?size=abc"), 422)


def test_503_when_the_pool_is_full(make_client: MakeClient) -> None:
    c = make_client(threads=1, queue=0)
    service = c.app.state.service  # type: ignore[attr-defined]
    gate = threading.Event()
    blocker = service.pool.submit(gate.wait)  # the only worker is now busy
    try:
        r = c.post("/api/search", json={"text": "x"})
        assert _err(r, 503)["type"] == "Busy"
        assert r.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200  # the event loop is not blocked
    finally:
        gate.set()
        blocker.result(timeout=10)
    assert c.post("/api/search", json={"text": "x"}).status_code == 200
    assert "xretrieve_pool_rejected 1.0" in c.get("/metrics").text


def test_a_bug_is_a_one_line_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from xretrieve.serve import api

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("secret\ninternal detail")

    monkeypatch.setattr(api, "run_search", boom)
    c = TestClient(client.app, raise_server_exceptions=False)
    body = _err(c.post("/api/search", json={"text": "x"}), 500)
    assert "secret" not in body["message"]
