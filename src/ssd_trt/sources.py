"""Video sources: webcam, file, network stream, images. (Being written.)"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One decoded frame. ``timestamp`` is seconds: the media time for files, else since start."""

    index: int
    timestamp: float
    image: np.ndarray  # BGR uint8 [H, W, 3]
    name: str = ""  # file name for image sources
