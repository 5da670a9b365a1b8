"""Untrusted image bytes -> a BGR array, or a 4xx status with a one-line reason.

OpenCV decodes a truncated JPEG without complaint (the missing rows come out grey), so the
container is checked for its end marker first: a cut-off upload must not produce detections on
half a picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import require

# 20 MB is a 40-megapixel JPEG; anything larger is not a camera frame.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Decoded size bound: a tiny PNG can claim 60000x60000 pixels (a decompression bomb).
MAX_PIXELS = 64 * 1024 * 1024

_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


class BadImage(Exception):
    """A request the server refuses: ``status`` is the HTTP code, ``str()`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    if len(data) > max_bytes:
        raise BadImage(413, f"body of {len(data)} bytes is over the {max_bytes}-byte limit")
    if not data:
        raise BadImage(400, "empty body; POST the bytes of a JPEG or PNG image")
    if data.startswith(_JPEG):
        # The end-of-image marker, allowing for padding some cameras append after it.
        if b"\xff\xd9" not in data[-64:].rstrip(b"\x00"):
            raise BadImage(400, "truncated JPEG: no end-of-image marker")
        size = _jpeg_size(data)
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            raise BadImage(413, f"JPEG of {size[0]}x{size[1]} pixels is over the pixel limit")
    elif data.startswith(_PNG):
        if b"IEND" not in data[-16:]:
            raise BadImage(400, "truncated PNG: no IEND chunk")
        width = int.from_bytes(data[16:20], "big")
        height = int.from_bytes(data[20:24], "big")
        if width * height > MAX_PIXELS:
            raise BadImage(413, f"PNG of {width}x{height} pixels is over the pixel limit")
    else:
        raise BadImage(415, "not a JPEG or PNG image")
    cv2: Any = require("cv2", "video")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadImage(400, "the image data is corrupt and cannot be decoded")
    return image


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, without decoding."""
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        kind = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None
