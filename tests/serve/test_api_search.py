"""API searches: every search form, paging, more-like-this, captions, items, several indexes."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient
from serve_helpers import MakeClient, first_hit

from xretrieve.query import SearchOptions, open_index
from xretrieve.serve import item_id


def test_indexes_lists_model_rows_generation_and_facets(client: TestClient) -> None:
    r = client.get("/api/indexes")
    assert r.status_code == 200
    (info,) = r.json()["indexes"]
    assert info["name"] == "demo"
    assert info["model"]["name"] == "xr-tiny"
    assert info["rows"]["image"] > 0 and info["rows"]["text"] > 0 and info["rows"]["audio"] == 0
    assert info["generation"] >= 1
    assert info["partition"]["key"] in ("none", "folder", "year")
    facets = info["facets"]
    assert facets["width"][0] <= facets["width"][1] and facets["year"]
    assert isinstance(facets["mtime"][0], str)


def test_text_search_matches_the_library(client: TestClient, built_index: Path) -> None:
    r = client.post("/api/search", json={"text": "a red circle", "k": 5})
    assert r.status_code == 200
    body = r.json()
    lib = open_index(built_index, device="cpu").search("a red circle", k=5)
    assert [h["path"] for h in body["hits"]] == lib.paths
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    h = body["hits"][0]
    assert h["id"] == item_id(h["path"], h["metadata"]["content_hash"])
    assert h["thumb"] == f"/api/thumb/{h['id']}" and h["file"] == f"/api/file/{h['id']}"
    assert abs(h["score"] - lib[0].score) < 1e-5 and h["components"]["dense"] == h["score"]
    assert "row" not in h["metadata"] and isinstance(h["metadata"]["mtime"], str)
    assert body["index"] == "demo" and body["total"] == 5 and body["k"] == 5
    assert {"encode", "ann", "search", "queue", "total"} <= set(body["timings"])


def test_pages_concatenate_to_the_unpaged_list(client: TestClient) -> None:
    whole = client.post("/api/search", json={"text": "a star", "k": 50}).json()["hits"]
    n = len(whole)
    assert n >= 6
    pages = []
    for offset in range(0, n + 3, 3):
        r = client.post("/api/search", json={"text": "a star", "k": 3, "offset": offset})
        assert r.json()["offset"] == offset
        pages += r.json()["hits"]
    assert [h["id"] for h in pages] == [h["id"] for h in whole]
    assert [h["rank"] for h in pages] == list(range(1, n + 1))


def test_more_like_this_returns_the_item_itself_first(client: TestClient) -> None:
    hit = first_hit(client, text="a blue square")
    r = client.post("/api/search", json={"id": hit["id"], "k": 4})
    hits = r.json()["hits"]
    assert hits[0]["id"] == hit["id"] and hits[0]["score"] > 0.999
    assert len({h["id"] for h in hits}) == 4
    # text items by id too, and mixed with text under weights
    cap = first_hit(client, text="a blue square", modality="text")
    r = client.post("/api/search", json={"id": cap["id"], "modality": "text", "k": 1})
    assert r.json()["hits"][0]["id"] == cap["id"]
    r = client.post(
        "/api/search", json={"id": hit["id"], "text": "red", "weights": [0.01, 1.0], "k": 1}
    )
    assert r.json()["hits"][0]["id"] == hit["id"]


def test_sort_by_mtime_and_min_score(client: TestClient) -> None:
    r = client.post("/api/search", json={"text": "a star", "k": 6, "sort": "mtime"})
    times = [h["metadata"]["mtime"] for h in r.json()["hits"]]
    assert times == sorted(times, reverse=True) and len(times) == 6
    page2 = client.post(
        "/api/search", json={"text": "a star", "k": 3, "offset": 3, "sort": "mtime"}
    )
    assert [h["id"] for h in page2.json()["hits"]] == [h["id"] for h in r.json()["hits"][3:6]]
    r = client.post("/api/search", json={"text": "a star", "k": 8})
    scores = [h["score"] for h in r.json()["hits"]]
    floor = scores[3]
    r = client.post("/api/search", json={"text": "a star", "k": 8, "min_score": floor})
    assert r.json()["total"] == sum(s >= floor for s in scores)
    assert all(h["score"] >= floor for h in r.json()["hits"])


def test_hybrid_where_negative_rerank_mmr_dedup(client: TestClient) -> None:
    body = {"text": "red circle", "k": 3, "hybrid": True, "fusion": "convex", "alpha": 0.3}
    hits = client.post("/api/search", json=body).json()["hits"]
    assert set(hits[0]["components"]) == {"dense", "lexical"}
    r = client.post("/api/search", json={"text": "a star", "k": 3, "where": "width >= 1000000"})
    assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["total"] == 0
    full = {"text": "a star", "negative": ["red"], "rerank": True, "mmr": 0.5, "dedup": 0.99}
    r = client.post("/api/search", json={**full, "k": 4})
    # the random tiny model's vectors are near-duplicates: dedup may collapse some
    assert r.status_code == 200 and 1 <= len(r.json()["hits"]) <= 4
    r = client.post("/api/search", json={**full, "dedup": None, "k": 4})
    assert r.status_code == 200 and len(r.json()["hits"]) == 4


def test_search_by_uploaded_image_finds_that_image(client: TestClient, built_index: Path) -> None:
    hit = first_hit(client)
    root = Path(open_index(built_index, device="cpu").root)
    data = (root / hit["path"]).read_bytes()
    r = client.post(
        "/api/search",
        files={"image": ("q.png", io.BytesIO(data), "image/png")},
        data={"q": '{"k": 2}'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["path"] == hit["path"]
    # no q field: defaults
    r = client.post("/api/search", files={"image": ("q.png", io.BytesIO(data), "image/png")})
    assert r.status_code == 200 and r.json()["k"] == SearchOptions().k  # one default everywhere


def test_caption_by_id_and_by_upload(client: TestClient, built_index: Path) -> None:
    hit = first_hit(client)
    r = client.post("/api/caption", json={"id": hit["id"], "k": 3})
    assert r.status_code == 200
    caps = r.json()["hits"]
    assert len(caps) == 3 and all(c["modality"] == "text" and c["caption"] for c in caps)
    root = Path(open_index(built_index, device="cpu").root)
    data = (root / hit["path"]).read_bytes()
    r = client.post("/api/caption", files={"image": ("q.png", data, "image/png")})
    assert r.status_code == 200 and len(r.json()["hits"]) == 5
    assert [c["id"] for c in r.json()["hits"][:3]] == [c["id"] for c in caps]


def test_item_metadata(client: TestClient) -> None:
    hit = first_hit(client)
    r = client.get(f"/api/items/{hit['id']}")
    assert r.status_code == 200
    item = r.json()
    assert {k: item[k] for k in ("id", "path", "modality", "caption")} == {
        k: hit[k] for k in ("id", "path", "modality", "caption")
    }
    assert item["metadata"] == hit["metadata"]


def test_several_indexes_by_name(make_client: MakeClient, built_index: Path) -> None:
    c = make_client({"demo": built_index, "again": built_index})
    names = [i["name"] for i in c.get("/api/indexes").json()["indexes"]]
    assert names == ["demo", "again"]
    r = c.post("/api/search", json={"text": "red", "k": 1})
    assert r.status_code == 400 and "demo" in r.json()["error"]["message"]
    r = c.post("/api/search", json={"index": "again", "text": "red", "k": 1})
    assert r.status_code == 200 and r.json()["index"] == "again"
    hid = r.json()["hits"][0]["id"]
    assert c.get(f"/api/items/{hid}?index=demo").status_code == 200
    assert c.get("/healthz").json()["indexes"].keys() == {"demo", "again"}
