"""Thumbnails and original files: only indexed files, by id, never outside the media folder."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import MakeClient, first_hit

from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, index_folder
from xretrieve.serve.errors import NotFound
from xretrieve.serve.files import open_in_root


def _id_of(client: TestClient, path: str) -> str:
    """The id of the indexed file `path` (found through a WHERE search)."""
    r = client.post("/api/search", json={"text": "x", "k": 5, "where": f"path = '{path}'"})
    (hit,) = r.json()["hits"]
    return str(hit["id"])


@pytest.fixture()
def odd_index(media_dir: Path, tiny_encoder: Encoder, tmp_path: Path) -> Path:
    """An index whose media folder holds an EXIF-rotated JPEG and symlinks in and out."""
    im = Image.new("RGB", (64, 32), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees: 32 wide, 64 high
    im.save(media_dir / "rotated.jpg", exif=exif)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(outside / "secret.png")
    (media_dir / "escape.png").symlink_to(outside / "secret.png")
    first = sorted(media_dir.glob("0*.png"))[0]
    (media_dir / "alias.png").symlink_to(first.name)  # inside the folder: fine
    out = tmp_path / "odd-index"
    index_folder(media_dir, out, encoder=tiny_encoder, options=IndexOptions(progress=False))
    return out


def test_thumbnail_is_a_cached_jpeg_with_etag(client: TestClient) -> None:
    hid = first_hit(client)["id"]
    r = client.get(f"/api/thumb/{hid}?size=48")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and max(im.size) <= 48
    assert "max-age" in r.headers["cache-control"]
    etag = r.headers["etag"]
    again = client.get(f"/api/thumb/{hid}?size=48", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    service = client.app.state.service  # type: ignore[attr-defined]
    hits = service.thumbs.hits
    assert client.get(f"/api/thumb/{hid}?size=48").content == r.content
    assert service.thumbs.hits == hits + 1
    assert client.get(f"/api/thumb/{hid}?size=32").headers["etag"] != etag
    # a caption's thumbnail shows the image it describes
    cap = first_hit(client, modality="text")
    assert client.get(f"/api/thumb/{cap['id']}").status_code == 200


def test_thumbnail_follows_exif_rotation(make_client: MakeClient, odd_index: Path) -> None:
    c = make_client({"odd": odd_index})
    hid = _id_of(c, "rotated.jpg")
    im = Image.open(io.BytesIO(c.get(f"/api/thumb/{hid}?size=64").content))
    assert im.size == (32, 64)


def test_file_streams_the_original_bytes(client: TestClient, built_index: Path) -> None:
    from xretrieve.query import open_index

    hit = first_hit(client)
    r = client.get(f"/api/file/{hit['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    root = Path(open_index(built_index, device="cpu").root)
    assert r.content == (root / hit["path"]).read_bytes()
    assert "sandbox" in r.headers["content-security-policy"]
    assert (
        client.get(
            f"/api/file/{hit['id']}", headers={"If-None-Match": r.headers["etag"]}
        ).status_code
        == 304
    )


@pytest.mark.parametrize(
    "url",
    [
        "/api/file/../../../../etc/passwd",
        "/api/file/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/file/%2Fetc%2Fpasswd",
        "/api/file/%2e%2e%2fmanifest.json",
        "/api/file/etc/passwd",
        "/api/file/000016.png",
        "/api/file/..",
        "/api/file/%00",
        "/api/thumb/..%2F..%2Fetc%2Fpasswd",
        "/api/items/..%2Fmanifest.json",
        "/api/file/" + "0" * 19 + "/",
        "/api/file/" + "../" * 10 + "etc/passwd?index=demo",
    ],
)
def test_traversal_attempts_are_refused(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert r.status_code in (404, 422), (url, r.status_code)
    assert b"root:" not in r.content


def test_a_symlink_out_of_the_media_folder_is_refused(
    make_client: MakeClient, odd_index: Path
) -> None:
    c = make_client({"odd": odd_index})
    out = _id_of(c, "escape.png")
    assert c.get(f"/api/items/{out}").status_code == 200  # indexed (the indexer follows it)...
    assert c.get(f"/api/file/{out}").status_code == 404  # ...but never served
    assert c.get(f"/api/thumb/{out}").status_code == 404
    inside = _id_of(c, "alias.png")
    assert c.get(f"/api/file/{inside}").status_code == 200


def test_a_file_replaced_by_a_symlink_after_indexing_is_refused(
    make_client: MakeClient, private_index: Path, media_dir: Path, tmp_path: Path
) -> None:
    c = make_client({"p": private_index})
    hit = first_hit(c)
    target = media_dir / hit["path"]
    assert c.get(f"/api/file/{hit['id']}").status_code == 200
    shutil.copy2(target, tmp_path / "moved.png")
    target.unlink()
    target.symlink_to(tmp_path / "moved.png")
    assert c.get(f"/api/file/{hit['id']}").status_code == 404
    target.unlink()
    os.mkfifo(target)  # a FIFO never blocks the server
    assert c.get(f"/api/file/{hit['id']}").status_code == 404


@pytest.mark.parametrize(
    "rel", ["../x.png", "/etc/passwd", "a/../../x.png", "", "a\x00b", ".", "sub/../../etc/passwd"]
)
def test_open_in_root_refuses_paths_that_leave_it(tmp_path: Path, rel: str) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "x.png").write_bytes(b"outside")
    with pytest.raises(NotFound):
        open_in_root(str(tmp_path / "media"), rel, max_bytes=1 << 20)


def test_open_in_root_refuses_folders_and_oversized_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    for rel in ("sub", "big.bin"):
        with pytest.raises(NotFound):
            open_in_root(str(tmp_path), rel, max_bytes=10)
    f = open_in_root(str(tmp_path), "big.bin", max_bytes=100)
    assert f.size == 100 and f.media_type == "application/octet-stream"
    f.close()
