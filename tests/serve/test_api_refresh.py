"""A new generation written while the app runs is served without a restart; ids stay."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import MakeClient, add_files

from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, index_folder


def _ids(c: object, n: int = 100) -> dict[str, str]:
    r = c.post("/api/search", json={"text": "a shape", "k": n})  # type: ignore[attr-defined]
    return {h["path"]: h["id"] for h in r.json()["hits"]}


def test_new_generation_is_picked_up_and_old_ids_stay(
    make_client: MakeClient,
    private_index: Path,
    media_dir: Path,
    world_dir: Path,
    tiny_encoder: Encoder,
) -> None:
    c = make_client({"p": private_index})
    before = _ids(c)
    gen = c.get("/healthz").json()["indexes"]["p"]
    service = c.app.state.service  # type: ignore[attr-defined]
    in_flight = service.generation("p")  # what a request that started now holds

    added = add_files(media_dir, world_dir / "train", 3)
    index_folder(
        media_dir, private_index, encoder=tiny_encoder, options=IndexOptions(progress=False)
    )

    after = _ids(c)
    assert c.get("/healthz").json()["indexes"]["p"] > gen  # (a run may land several)
    assert set(added) <= set(after)
    assert {p: after[p] for p in before} == before  # same file, same id
    for path in added:  # the new items are found by id, thumbnails and files included
        assert c.get(f"/api/items/{after[path]}").json()["path"] == path
        assert c.get(f"/api/thumb/{after[path]}").status_code == 200
    rows = c.get("/api/indexes").json()["indexes"][0]["rows"]["image"]
    assert rows == len(before) + 3
    # the request in flight finishes on its own generation, files still readable
    assert in_flight.number == gen
    hits = in_flight.index.search("a shape", k=100)
    assert len(hits) == len(before)
    assert in_flight.find(after[added[0]]) is None
    assert in_flight.find(before[next(iter(before))]) is not None


def test_deleted_file_disappears_from_ids(
    make_client: MakeClient, private_index: Path, media_dir: Path, tiny_encoder: Encoder
) -> None:
    c = make_client({"p": private_index})
    before = _ids(c)
    gone = sorted(before)[0]
    (media_dir / gone).unlink()
    index_folder(
        media_dir, private_index, encoder=tiny_encoder, options=IndexOptions(progress=False)
    )
    after = _ids(c)
    assert gone not in after and len(after) == len(before) - 1
    assert c.get(f"/api/items/{before[gone]}").status_code == 404
    assert c.get(f"/api/file/{before[gone]}").status_code == 404
