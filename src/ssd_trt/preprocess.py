"""Preprocessing stage: camera/OpenCV images -> the exported model's ``images`` tensor.

Kept separate so a GPU implementation can replace it; the contract is uint8 HWC in,
float32 [N, 3, H, W] out.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

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
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise SsdTrtError(f"image {i} is empty (shape {image.shape}); it has no pixels")


# ------------------------------------------------------------------ what people pass as images

IMAGE_FORMS = (
    "a numpy array (HxWx3 uint8 BGR as cv2.imread returns, HxW or HxWx1 grey, HxWx4 BGRA), "
    "a PIL image or an image file path"
)


def as_images(images: object, *, rgb: bool = False) -> tuple[list[np.ndarray], bool]:
    """What people pass to ``Detector.detect`` -> HxWx3 uint8 images in the detector's channel
    order (BGR, or RGB when ``rgb``), and whether it was one image rather than a list.

    One image: a uint8 array (HxWx3 in that order; grey HxW or HxWx1, repeated to 3 channels;
    HxWx4 with alpha last, alpha dropped), an image file path (str or Path, read with OpenCV as
    BGR) or a PIL image (RGB by definition; any mode is converted to RGB first). A batch: a list
    or tuple of those, or an NxHxWxC array. HxWx3 arrays pass through without a copy.
    """
    if isinstance(images, np.ndarray) and images.ndim != 4:
        return [to_image(0, images, rgb)], True
    if _is_single(images):
        return [to_image(0, images, rgb)], True
    if not isinstance(images, Sequence | np.ndarray):
        raise SsdTrtError(
            f"expected an image or a list of images, got {type(images).__name__}; pass "
            f"{IMAGE_FORMS}"
        )
    return [to_image(i, image, rgb) for i, image in enumerate(images)], False


def _is_single(image: object) -> bool:
    return image is None or isinstance(image, str | PathLike) or _is_pil(image)


def _is_pil(image: object) -> bool:
    # PIL is not a dependency: an object can only be a PIL image when PIL is already imported.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(image, pil.Image)


def to_image(i: int, image: object, rgb: bool) -> np.ndarray:
    """One image (see as_images) -> HxWx3 uint8 in the detector's channel order, or one clear
    error naming its place ``i`` in the batch."""
    if image is None:
        raise SsdTrtError(
            f"image {i} is NoneType, not an image; cv2.imread returns None when it cannot read "
            "a file: check the path"
        )
    if isinstance(image, str | PathLike):
        return _read_file(i, Path(image), rgb)
    if _is_pil(image):
        array = np.asarray(image.convert("RGB"))  # type: ignore[attr-defined]
        return array if rgb else np.ascontiguousarray(array[:, :, ::-1])
    if not isinstance(image, np.ndarray):
        raise SsdTrtError(f"image {i} is {type(image).__name__}, not an image; pass {IMAGE_FORMS}")
    if image.dtype != np.uint8:
        raise SsdTrtError(
            f"image {i} has shape {image.shape} and dtype {image.dtype}; expected HxWx3 uint8 "
            "(as cv2.imread returns); for floats in 0..1 pass (image * 255).astype(np.uint8)"
        )
    if image.ndim in (2, 3) and min(image.shape[:2]) < 1:
        raise SsdTrtError(f"image {i} is empty (shape {image.shape}); it has no pixels")
    if image.ndim == 3 and image.shape[2] == 4:  # BGRA (or RGBA with rgb): alpha dropped
        image = np.ascontiguousarray(image[:, :, :3])
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:  # grey: the same value in every channel, for BGR and RGB alike
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise SsdTrtError(
            f"image {i} has shape {image.shape}; expected HxWx3 uint8 (as cv2.imread returns), "
            "HxW or HxWx1 grey, or HxWx4 with alpha (a CxHxW tensor: transpose it to HxWxC)"
        )
    check_image(i, image)
    return image


def _read_file(i: int, path: Path, rgb: bool) -> np.ndarray:
    cv2 = require("cv2", "video")
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SsdTrtError(f"image {i}: {path} {what}; pass an image file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SsdTrtError(f"image {i}: OpenCV cannot read {path} as an image")
    return image[:, :, ::-1].copy() if rgb else image
