"""Media: find the files of a folder and decode them into what the encoders take.

Walking never stops on a bad entry: unreadable folders, symlink loops and undecodable
files are returned as `Problem`s beside the files that are fine.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from xretrieve.audio import AUDIO_EXTS
from xretrieve.errors import FolderError, MediaError
from xretrieve.types import Modality

__all__ = [
    "CAPTION_EXTS",
    "IMAGE_EXTS",
    "PLUGIN_EXTS",
    "DecodedImage",
    "MediaFile",
    "Problem",
    "Scan",
    "content_hash",
    "decode_image",
    "display_path",
    "load_image",
    "path_bytes",
    "read_captions",
    "scan_folder",
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
CAPTION_EXTS = frozenset({".txt"})
_MODALITY_OF: dict[str, Modality] = {
    **dict.fromkeys(AUDIO_EXTS, "audio"),
    **dict.fromkeys(CAPTION_EXTS, "text"),
    **dict.fromkeys(IMAGE_EXTS, "image"),
}
#: Images above this many pixels are refused (decompression bombs); Pillow's default is 89M.
MAX_PIXELS = 178_956_970
#: Caption sidecars above this size are not caption files.
MAX_CAPTION_BYTES = 1 << 20

# A truncated JPEG is an error, not a grey half-image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A file found in the media folder, with what `stat` said of it."""

    fspath: str  # absolute path (a plain string: building 100k Path objects costs seconds)
    rel: str
    modality: Modality
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        """The absolute path as a `Path`."""
        return Path(self.fspath)


@dataclass(frozen=True)
class Problem:
    """A file or folder that was skipped, and why."""

    path: str
    reason: str


@dataclass
class Scan:
    """What a walk of the media folder found."""

    root: Path
    images: list[MediaFile] = field(default_factory=list)
    captions: list[MediaFile] = field(default_factory=list)
    audio: list[MediaFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for preprocessing, with the original file's facts."""

    image: Image.Image
    width: int
    height: int
    sha256: str


def display_path(p: str | os.PathLike[str]) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes shown as \\xNN)."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def path_bytes(p: str) -> bytes | None:
    """The raw bytes of a path when `display_path` cannot give it back exactly, else None."""
    raw = os.fsencode(p)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    return None


def scan_folder(root: str | os.PathLike[str]) -> Scan:
    """Walk `root` recursively and classify its files, in sorted order, stat-ing each once.

    Symlinked folders are not followed (so loops cannot happen); symlinked files are.
    Unreadable folders, broken links and formats whose plugin is missing become `Problem`s.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise FolderError(f"media folder not found: {base}")
    if not base.is_dir():
        raise FolderError(f"not a folder: {base}")
    scan = Scan(root=base.resolve())
    stack: list[tuple[str, str]] = [(str(scan.root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            scan.problems.append(Problem(display_path(folder), f"cannot read folder: {e.strerror}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, f"{prefix}{name}/"))
                    continue
            except OSError:
                pass
            ext = os.path.splitext(name)[1].lower()
            modality = _MODALITY_OF.get(ext)
            if modality is None:
                if ext in PLUGIN_EXTS:
                    scan.problems.append(Problem(display_path(entry.path), PLUGIN_EXTS[ext]))
                continue
            try:
                st = entry.stat()  # follows a symlinked file
            except OSError as e:
                scan.problems.append(
                    Problem(display_path(entry.path), f"cannot stat: {e.strerror}")
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                if not stat.S_ISDIR(st.st_mode):
                    scan.problems.append(Problem(display_path(entry.path), "not a regular file"))
                continue
            item = MediaFile(entry.path, prefix + name, modality, st.st_size, st.st_mtime_ns)
            {"image": scan.images, "text": scan.captions, "audio": scan.audio}[modality].append(
                item
            )
        stack.extend(reversed(subdirs))
    return scan


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
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise MediaError(display_path(p), "no such file") from e
    except IsADirectoryError as e:
        raise MediaError(display_path(p), "is a folder, not an image") from e
    except OSError as e:
        raise MediaError(display_path(p), f"cannot read: {e.strerror}") from e
    return decode_image(data, path=display_path(p), target_size=target_size)


def read_captions(data: bytes, *, path: object = "<bytes>") -> list[str]:
    """Captions of a sidecar file: its non-blank lines, stripped (UTF-8, BOM allowed)."""
    if len(data) > MAX_CAPTION_BYTES:
        raise MediaError(path, f"caption file larger than {MAX_CAPTION_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MediaError(path, f"caption file is not UTF-8 ({e.reason} at byte {e.start})") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def iter_sidecar_pairs(scan: Scan) -> Iterator[tuple[MediaFile, MediaFile | None]]:
    """Each caption file with the image it describes (same folder and stem), or None."""
    by_stem = {os.path.splitext(m.rel)[0]: m for m in scan.images}
    for cap in scan.captions:
        yield cap, by_stem.get(os.path.splitext(cap.rel)[0])
