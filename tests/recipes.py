"""Tiny training recipes shared by the fixtures and the tests (importable: not a conftest)."""

from __future__ import annotations

from xretrieve.train.audio import AudioTrainConfig

# Small enough to train in a few seconds; the recipe's architecture is tested in the slow test.
QUICK_AUDIO = AudioTrainConfig(
    max_seconds=None, max_steps=3, batch_size=16, channels=(32, 32), hidden=64, pooled_time=4
)
