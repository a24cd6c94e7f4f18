"""Authentication (token on and off), open routes, CORS, metrics and the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient
from serve_helpers import MakeClient

TOKEN = "s3cret-token-value"


def test_without_a_token_everything_is_open(client: TestClient) -> None:
    assert client.get("/api/indexes").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_with_a_token_every_api_call_needs_it(make_client: MakeClient) -> None:
    c = make_client(token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for method, url in [
        ("GET", "/api/indexes"),
        ("POST", "/api/search"),
        ("POST", "/api/caption"),
        ("GET", "/api/items/" + "0" * 20),
        ("GET", "/api/thumb/" + "0" * 20),
        ("GET", "/api/file/" + "0" * 20),
        ("GET", "/metrics"),
    ]:
        r = c.request(method, url, json={"text": "x"} if method == "POST" else None)
        assert r.status_code == 401, (url, r.text)
        assert r.json()["error"]["type"] == "Unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = c.request(method, url, headers={"Authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 401
    r = c.post("/api/search", json={"text": "a red circle", "k": 1}, headers=bearer)
    assert r.status_code == 200
    hid = r.json()["hits"][0]["id"]
    # <img src> cannot send headers: ?token= works for thumbnails and files
    assert c.get(f"/api/thumb/{hid}?token={TOKEN}").status_code == 200
    assert c.get(f"/api/file/{hid}?token={TOKEN}").status_code == 200
    assert c.get(f"/api/file/{hid}?token=wrong-token").status_code == 401
    assert c.get("/metrics", headers=bearer).status_code == 200
    # open: health, the page, its files, the API docs
    assert c.get("/healthz").status_code == 200
    assert c.get("/").status_code == 200
    assert c.get("/openapi.json").status_code == 200


def test_cors_is_off_unless_an_origin_is_given(make_client: MakeClient) -> None:
    origin = {"Origin": "http://elsewhere.example"}
    r = make_client().get("/api/indexes", headers=origin)
    assert "access-control-allow-origin" not in r.headers
    c = make_client(cors=("http://elsewhere.example",))
    r = c.get("/api/indexes", headers=origin)
    assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"
    r = c.get("/api/indexes", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_security_headers(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_metrics_count_requests_errors_latency_and_generation(client: TestClient) -> None:
    client.post("/api/search", json={"text": "x", "k": 1})
    client.get("/api/items/" + "0" * 20)
    text = client.get("/metrics").text
    assert (
        'xretrieve_http_requests_total{endpoint="/api/search",method="POST",status="200"} 1.0'
        in text
    )
    assert 'xretrieve_http_errors_total{endpoint="/api/items/{item_id}",status="404"} 1.0' in text
    assert 'xretrieve_http_request_duration_seconds_bucket{endpoint="/api/search"' in text
    assert 'xretrieve_index_generation{index="demo"}' in text
    client.get("/no/such/page/" + "x" * 50)
    assert "x" * 50 not in client.get("/metrics").text  # raw paths never become labels


def test_openapi_documents_every_field(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/api/indexes", "/api/search", "/api/caption", "/api/items/{item_id}",
              "/api/thumb/{item_id}", "/api/file/{item_id}", "/healthz", "/metrics"):  # fmt: skip
        assert p in paths, p
    body = paths["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    schemas = doc["components"]["schemas"]
    for name in ("SearchRequest", "CaptionRequest", "SearchResponse", "HitModel", "IndexInfo",
                 "ItemResponse", "HealthResponse"):  # fmt: skip
        for field, spec in schemas[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} is undocumented"
    assert client.get("/docs").status_code == 200
