"""Preprocessing stage: camera/OpenCV images -> the exported model's ``images`` tensor.

Kept separate so a GPU implementation can replace it; the contract is uint8 HWC in,
float32 [N, 3, H, W] out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SsdTrtError, require


@dataclass(frozen=True)
class PreprocessConfig:
    """How the model expects its input; read from the exported ONNX's metadata."""

    height: int = 300
    width: int = 300
    scale: float = 2.0 / 255.0  # model input = pixel * scale + offset
    offset: float = -1.0


def preprocess(
    images: Sequence[np.ndarray], config: PreprocessConfig, *, bgr: bool = True
) -> np.ndarray:
    """Resize (bilinear), convert to RGB, scale, and stack as NCHW float32."""
    cv2 = require("cv2", "video")
    out = np.empty((len(images), 3, config.height, config.width), np.float32)
    for i, image in enumerate(images):
        check_image(i, image)
        resized = cv2.resize(image, (config.width, config.height), interpolation=cv2.INTER_LINEAR)
        if bgr:
            resized = resized[:, :, ::-1]
        out[i] = resized.transpose(2, 0, 1) * np.float32(config.scale) + np.float32(config.offset)
    return out


def check_image(i: int, image: np.ndarray) -> None:
    """One clear error for anything but an HxWx3 uint8 image (``i``: its place in the batch)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SsdTrtError(
            f"image {i} has shape {image.shape} and dtype {image.dtype}; "
            "expected HxWx3 uint8 (as cv2.imread returns)"
        )
