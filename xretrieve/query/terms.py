"""Query terms: what a query is made of, each term's kind, and the one query vector they make.

Rules this module keeps:

- A term's kind follows the keyword it came in under: `image=` terms are images (a str is a
  path), `audio=` terms are sounds (path, file bytes or (samples, sample_rate)).
- In the positional query and in `negative`, a str is text; a PIL image is an image; a
  path object is a sound when its extension is an audio one, else an image. `ImageTerm`
  and `AudioTerm` mark a term's kind explicitly wherever it appears.
- Terms are embedded one batch per kind, and composed as
  q = normalise(sum_i w_i p_i - sum_j v_j n_j) (`scoring.compose`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from PIL import Image

from xretrieve._types import Vectors
from xretrieve.encoders import EncoderLike
from xretrieve.errors import EmptyQueryError, InputError
from xretrieve.media.audio import AUDIO_EXTS
from xretrieve.media.image import load_image, to_rgb
from xretrieve.query import scoring

__all__ = [
    "AudioTerm",
    "ImageQuery",
    "ImageTerm",
    "Kind",
    "QueryTerm",
    "Term",
    "compose_query",
    "embed_images",
    "embed_sounds",
    "embed_terms",
    "embed_texts",
    "lexical_text",
    "terms_of",
]

#: What can stand for an image in a query: a path or an already opened PIL image.
ImageQuery = str | os.PathLike[str] | Image.Image
#: One term of a composed query (see the module docstring for how its kind is decided).
QueryTerm = Union[str, os.PathLike[str], Image.Image, "ImageTerm", "AudioTerm"]
Kind = Literal["text", "image", "audio"]


@dataclass(frozen=True)
class ImageTerm:
    """An image as a query term: a file path (str or path object) or a PIL image."""

    source: ImageQuery


@dataclass(frozen=True)
class AudioTerm:
    """A sound as a query term: a file path, the file's bytes, or (samples, sample_rate)."""

    source: Any


#: A term whose kind is settled: a str is text.
Term = str | ImageTerm | AudioTerm

_SINGLE: dict[Kind, tuple[type, ...]] = {
    "text": (str, os.PathLike, Image.Image, ImageTerm, AudioTerm),
    "image": (str, os.PathLike, Image.Image, ImageTerm, AudioTerm),
    # (samples, sample_rate) is one sound, not two terms.
    "audio": (str, os.PathLike, bytes, tuple, ImageTerm, AudioTerm),
}


def _settle(x: Any, kind: Kind) -> Term:
    if isinstance(x, (ImageTerm, AudioTerm)):
        return x
    if kind == "audio":
        return AudioTerm(x)
    if isinstance(x, Image.Image):
        return ImageTerm(x)
    if kind == "image" and isinstance(x, (str, os.PathLike)):
        return ImageTerm(x)
    if isinstance(x, str):
        return x
    if isinstance(x, os.PathLike):
        return AudioTerm(x) if Path(x).suffix.lower() in AUDIO_EXTS else ImageTerm(x)
    raise InputError(
        f"query term {x!r} is neither text, an image nor a sound: give a str, a path, "
        "a PIL image, ImageTerm or AudioTerm"
    )


def terms_of(x: Any, kind: Kind) -> list[Term]:
    """The terms passed under one keyword (one term or a sequence), each with its kind settled.

    `kind` is the keyword's: "text" for the positional query and negatives, "image" for
    `image=`, "audio" for `audio=`.
    """
    if x is None:
        return []
    items = [x] if isinstance(x, _SINGLE[kind]) else list(x)
    return [_settle(t, kind) for t in items]


def embed_texts(encoder: EncoderLike, texts: Sequence[str]) -> Vectors:
    """Unit vectors of text terms, (n, d); an empty or blank term raises `EmptyQueryError`."""
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise EmptyQueryError(
                "the query is empty: give some words, an image, or both"
                if len(texts) == 1
                else f"query term {t!r} is empty: every text term needs some words"
            )
    return encoder.encode_texts([t.strip() for t in texts])


def embed_images(encoder: EncoderLike, images: Sequence[ImageQuery]) -> Vectors:
    """Unit vectors of images (paths are read and decoded, PIL images converted), (n, d)."""
    pils = [
        to_rgb(im)
        if isinstance(im, Image.Image)
        else load_image(im, target_size=encoder.spec.image_size).image
        for im in images
    ]
    return encoder.encode_images(pils)


def embed_sounds(encoder: EncoderLike, sounds: Sequence[Any]) -> Vectors:
    """Unit vectors of sounds (paths, file bytes, (samples, rate) or `AudioTerm`s), (n, d)."""
    return encoder.encode_audio([t.source if isinstance(t, AudioTerm) else t for t in sounds])


def embed_terms(encoder: EncoderLike, terms: Sequence[Term]) -> Vectors:
    """Unit vectors of settled terms, in order: one batch per kind (text, image, audio)."""
    out = np.empty((len(terms), encoder.dim), np.float32)
    texts = [i for i, t in enumerate(terms) if isinstance(t, str)]
    images = [i for i, t in enumerate(terms) if isinstance(t, ImageTerm)]
    sounds = [i for i, t in enumerate(terms) if isinstance(t, AudioTerm)]
    if texts:
        out[texts] = embed_texts(encoder, [terms[i] for i in texts])  # type: ignore[misc]
    if images:
        out[images] = embed_images(encoder, [terms[i].source for i in images])  # type: ignore[union-attr]
    if sounds:
        out[sounds] = embed_sounds(encoder, [terms[i] for i in sounds])
    return out


def compose_query(
    encoder: EncoderLike,
    positive: Sequence[Term],
    negative: Sequence[Term] = (),
    *,
    weights: Sequence[float] | None = None,
    negative_weights: Sequence[float] | None = None,
) -> Vectors:
    """The unit query vector (1, d): normalise(sum_i w_i p_i - sum_j v_j n_j)."""
    if not positive:
        raise EmptyQueryError(
            "only negative terms: give something to search for as well as what to avoid"
            if negative
            else "the query is empty: give some words, an image, or both"
        )
    if len(positive) == 1 and not negative and weights is None:
        return embed_terms(encoder, positive)
    vecs = embed_terms(encoder, [*positive, *negative])
    return scoring.compose(
        vecs[: len(positive)],
        vecs[len(positive) :],
        weights=weights,
        negative_weights=negative_weights,
    )


def lexical_text(terms: Sequence[Term]) -> str | None:
    """What BM25 reads: the text terms joined by spaces, or None when there are none."""
    texts = [t for t in terms if isinstance(t, str)]
    return " ".join(texts) if texts else None
