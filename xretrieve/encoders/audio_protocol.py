"""`AudioTowerLike`: what an `Encoder` needs of an audio tower, whichever kind it is.

The trained tower (`xretrieve.encoders.audio_tower`) and the CLAP tower
(`xretrieve.encoders.clap`) both offer it; `xretrieve.encoders.encoder` depends on this
protocol alone, never on a tower module. No torch is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

__all__ = ["AudioTowerLike"]


class AudioTowerLike(Protocol):
    """What `Encoder` needs of an audio tower, trained (`AudioTower`) or CLAP (`encoders.clap`)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def window_samples(self) -> int: ...

    def windows(self, waveform: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Windows (w, window_samples) that cover a mono waveform at `sample_rate`."""
        ...

    def prepare(self, waveform: npt.NDArray[np.float32]) -> torch.Tensor:
        """The tower's inputs for one clip, a row per window: the per-clip work that decode
        threads can do ahead of the batched forward pass."""
        ...

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit vectors (b, d) of a batch of rows made by `prepare`."""
        ...

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """Unit vectors (b, d) of waveform windows (b, window_samples)."""
        ...
