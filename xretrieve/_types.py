"""Array aliases shared across the package."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

#: float32 matrix of shape (n, d); rows are L2-normalised embeddings unless stated otherwise.
Vectors = npt.NDArray[np.float32]
#: int64 vector of row ids.
Ids = npt.NDArray[np.int64]

Modality = Literal["image", "text", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "text", "audio")

#: How an encoder computes vectors (`xretrieve.encoders.spec`); ``fp32`` is the reference.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
