"""Audio retrieval evaluation on a world with sound: R@K four ways, chance beside each.

Directions, all on one split with set-of-concepts relevance (see `xretrieve.train.evaluate`):
audio->image, image->audio (each sound against every image), text->audio and audio->text
(every caption against every sound).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xretrieve.errors import FolderError
from xretrieve.train.evaluate import (
    DEFAULT_KS,
    chance_recall_at_k,
    keyed_recall,
    recall_at_k,
    recall_table,
    relevance_matrix,
    world_split,
)

if TYPE_CHECKING:
    from xretrieve.encoders import Encoder

__all__ = ["DIRECTIONS", "AudioEvalReport", "evaluate_audio"]

DIRECTIONS = ("audio->image", "image->audio", "text->audio", "audio->text")


@dataclass(frozen=True)
class AudioEvalReport:
    """Recall@K per direction on one split, with the chance level of each."""

    split: str
    n_sounds: int
    n_captions: int
    recall: dict[str, dict[int, float]]
    chance: dict[str, dict[int, float]]
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "model": self.model,
            "n_sounds": self.n_sounds,
            "n_captions": self.n_captions,
            "recall": {d: keyed_recall(r) for d, r in self.recall.items()},
            "chance": {d: keyed_recall(r) for d, r in self.chance.items()},
        }

    def format_table(self) -> str:
        return recall_table(
            f"split={self.split} sounds={self.n_sounds} captions={self.n_captions}",
            {name: (self.recall[name], self.chance[name]) for name in self.recall},
        )


def evaluate_audio(
    encoder: Encoder,
    world_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
) -> AudioEvalReport:
    """Recall@K of `encoder` on the sounds of one split of a world (see `add_audio_to_world`)."""
    ws = world_split(world_dir, split)
    root = ws.root
    sounds = [(root / lab.path).with_suffix(".wav") for lab in ws.labels]
    missing = [s for s in sounds if not s.is_file()]
    if missing:
        raise FolderError(
            f"{len(missing)} image(s) of {root} have no sound (e.g. {missing[0]}): "
            "give the world its sounds with add_audio_to_world()",
            code=FolderError.NO_SOUNDS,
        )
    aud = encoder.encode_audio(sounds)
    img = encoder.encode_images(ws.load_images())
    txt = encoder.encode_texts(ws.captions)
    sim_ai = aud @ img.T
    rel_ai = relevance_matrix(ws.keys, ws.keys)
    sim_ta = txt @ aud.T
    rel_ta = relevance_matrix(ws.caption_keys, ws.keys)
    pairs = {
        "audio->image": (sim_ai, rel_ai),
        "image->audio": (sim_ai.T, rel_ai.T),
        "text->audio": (sim_ta, rel_ta),
        "audio->text": (sim_ta.T, rel_ta.T),
    }
    return AudioEvalReport(
        split=split,
        n_sounds=len(ws.labels),
        n_captions=len(ws.captions),
        recall={d: recall_at_k(s, r, ks) for d, (s, r) in pairs.items()},
        chance={d: chance_recall_at_k(r, ks) for d, (s, r) in pairs.items()},
        model=encoder.spec.name,
    )
