"""Image decoding: bytes into an RGB picture ready for a model's transform.

Decoding is cheap where it can be (JPEG draft mode, integer box reduction), honours EXIF
orientation, converts every Pillow mode to RGB on white, and refuses decompression bombs.
Any failure raises `MediaError(path, reason)`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from xretrieve._fs import display_path
from xretrieve.errors import MediaError
from xretrieve.media.files import read_regular_file

__all__ = [
    "IMAGE_EXTS",
    "MAX_PIXELS",
    "PLUGIN_EXTS",
    "DecodedImage",
    "content_hash",
    "decode_image",
    "load_image",
    "to_rgb",
]

BASE_IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: Formats that need a Pillow plugin (the `heic` extra), and the note shown when it is missing.
PLUGIN_EXTS = {
    ".heic": "HEIC needs pillow-heif: pip install 'xretrieve[heic]'",
    ".heif": "HEIF needs pillow-heif: pip install 'xretrieve[heic]'",
    ".avif": "AVIF needs Pillow with AVIF or pillow-avif-plugin: pip install 'xretrieve[heic]'",
}


def _plugin_exts() -> frozenset[str]:
    """Register optional format plugins; return the extensions that can now be decoded."""
    found: set[str] = set()
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found |= {".heic", ".heif"}
    except ImportError:
        pass
    try:
        avif = bool(features.check("avif"))
    except (ValueError, OSError):
        avif = False
    if not avif:
        try:
            import pillow_avif  # noqa: F401

            avif = True
        except ImportError:
            pass
    if avif:
        found.add(".avif")
    return frozenset(found)


IMAGE_EXTS = BASE_IMAGE_EXTS | _plugin_exts()

#: Images above this many pixels are refused (decompression bombs); Pillow's default is 89M.
MAX_PIXELS = 178_956_970

# A truncated JPEG is an error, not a grey half-image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for preprocessing, with the original file's facts."""

    image: Image.Image
    width: int
    height: int
    sha256: str


def content_hash(data: bytes) -> str:
    """Hex sha256 of a file's bytes: the identity that lets a renamed file keep its vector."""
    return hashlib.sha256(data).hexdigest()


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, alpha, CMYK, 16-bit, 1-bit) to RGB on white."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the used range down to 8 bits instead of clipping.
        extrema = im.getextrema()
        lo, hi = (
            (float(extrema[0]), float(extrema[1]))
            if isinstance(extrema[0], (int, float))
            else (0.0, 65535.0)
        )
        scale = 255.0 / max(1.0, hi - lo)
        im = im.point(lambda v: (v - lo) * scale).convert("L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _open_checked(data: bytes, path: object) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombWarning as e:
            raise MediaError(path, f"too many pixels (decompression bomb limit): {e}") from e
        except Image.DecompressionBombError as e:
            raise MediaError(path, f"too many pixels (decompression bomb limit): {e}") from e
        except UnidentifiedImageError as e:
            raise MediaError(path, "not a recognised image format") from e
        except (OSError, ValueError, SyntaxError) as e:
            raise MediaError(path, f"cannot decode: {e}") from e
    if im.width * im.height > MAX_PIXELS:
        raise MediaError(path, f"too many pixels ({im.width}x{im.height}), limit {MAX_PIXELS}")
    return im


def decode_image(data: bytes, *, path: object = "<bytes>", target_size: int = 224) -> DecodedImage:
    """Decode image bytes to RGB, reduced cheaply towards `target_size` (JPEG draft mode)."""
    if not data:
        raise MediaError(path, "empty file")
    digest = content_hash(data)
    im = _open_checked(data, path)
    width, height = im.size
    try:
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: displayed rotated 90°
            width, height = height, width
        if im.format == "JPEG":
            # Decode at a reduced DCT scale while the short side stays >= target_size.
            im.draft("RGB", (target_size, target_size))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        im = to_rgb(im)
        factor = min(im.size) // (2 * target_size)
        if factor >= 2:
            # Box-reduce by an integer factor first; the model's transform then resizes exactly.
            im = im.reduce(factor)
    except MediaError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MediaError(path, f"cannot decode: {e}") from e
    return DecodedImage(im, width, height, digest)


def load_image(path: str | os.PathLike[str], *, target_size: int = 224) -> DecodedImage:
    """Read and decode one image file; raise `MediaError` naming the path on any failure."""
    p = Path(path).expanduser()
    data = read_regular_file(p)
    return decode_image(data, path=display_path(p), target_size=target_size)
