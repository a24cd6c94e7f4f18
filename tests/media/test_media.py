"""Walking a folder and decoding every kind of image into RGB."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xretrieve import _fs, media
from xretrieve.errors import FolderError, MediaError
from xretrieve.media import image


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_scan_classifies_recursively_and_sorts(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "c" / "x.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "notes.md").write_text("ignored")
    scan = media.scan_folder(tmp_path)
    assert [m.rel for m in scan.images] == ["a.jpg", "b/c/x.PNG"]
    assert [m.rel for m in scan.captions] == ["a.txt"]
    pairs = list(media.iter_sidecar_pairs(scan))
    assert pairs[0][1] is not None and pairs[0][1].rel == "a.jpg"


def test_scan_survives_symlink_loops_and_odd_names(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    odd = os.fsencode(tmp_path / "d") + b"/caf\xe9 \xff.png"
    with open(odd, "wb") as f:
        f.write(_png(Image.new("RGB", (3, 3))))
    scan = media.scan_folder(tmp_path)
    assert len(scan.images) == 1
    assert "\\xff" in _fs.display_path(scan.images[0].path)


def test_scan_missing_or_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="not found"):
        media.scan_folder(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FolderError, match="not a folder"):
        media.scan_folder(tmp_path / "f")


@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I"],
)
def test_every_mode_becomes_rgb(mode: str) -> None:
    src = Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I") else "PNG"
    buf = io.BytesIO()
    src.save(buf, format=fmt)
    dec = media.decode_image(buf.getvalue(), target_size=8)
    assert dec.image.mode == "RGB" and (dec.width, dec.height) == (20, 10)


def test_alpha_is_composited_on_white() -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    dec = media.decode_image(_png(im), target_size=4)
    assert dec.image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 0
    dec = media.decode_image(_png(im), target_size=4)
    assert dec.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    dec = media.decode_image(_jpeg(im, exif=exif), target_size=8)
    assert (dec.width, dec.height) == (20, 40)
    assert dec.image.size[0] < dec.image.size[1]


def test_jpeg_draft_and_reduce_shrink_large_images_but_keep_short_side() -> None:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    dec = media.decode_image(_jpeg(im), target_size=64)
    assert (dec.width, dec.height) == (1600, 1200)
    assert 64 <= min(dec.image.size) < 300


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    dec = media.decode_image(buf.getvalue(), target_size=8)
    r, g, _ = dec.image.getpixel((2, 2))
    assert r > 200 and g < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a recognised image format"),
        (_jpeg(Image.new("RGB", (64, 64)))[:200], "cannot decode"),
    ],
)
def test_bad_bytes_raise_media_error(data: bytes, reason: str) -> None:
    with pytest.raises(MediaError, match=reason):
        media.decode_image(data, path="x.jpg", target_size=8)


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "MAX_PIXELS", 100)
    with pytest.raises(MediaError, match="too many pixels"):
        media.decode_image(_png(Image.new("RGB", (20, 20))), target_size=8)


def test_load_image_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no such file"):
        media.load_image(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="is a folder"):
        media.load_image(tmp_path)


def test_read_captions() -> None:
    assert media.read_captions("\ufeffone\n\n  two  \r\n".encode()) == ["one", "two"]
    with pytest.raises(MediaError, match="not UTF-8"):
        media.read_captions(b"caf\xe9", path="c.txt")


def test_content_hash_is_sha256() -> None:
    assert image.content_hash(b"abc").startswith("ba7816bf")
