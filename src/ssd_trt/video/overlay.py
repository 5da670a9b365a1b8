"""Drawing stage: boxes, labels and scores (ssd_trt.annotate), plus an FPS / inference-time
banner.

With tracking, each label starts with its track ID (``#3 person 0.87``) and each recent track
has a short trail of its box's bottom-centre (where it stood) in its class colour.

The banner sits in the bottom-left corner, and every label is placed where it is whole and
visible: above its box, else inside the box's top, else below the box, never under the banner
or another label where a free spot exists, and always inside the image. Text and lines scale
with the image; still images (named frames) get no FPS, which means nothing for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..annotate import (
    Rect,
    Style,
    TextBlock,
    class_color,
    draw_boxes,
    draw_detections,
    draw_labels,
    place_label,
    put_text,
    text_block,
)
from ..detections import Detections
from ..errors import require

__all__ = [
    "Rect",
    "banner_rect",
    "banner_text",
    "class_color",
    "draw_banner",
    "draw_boxes",
    "draw_detections",
    "draw_frame",
    "draw_labels",
    "draw_trails",
    "place_label",
]

LABEL_FONT_SCALE = 0.5
BANNER_FONT_SCALE = 0.5  # at 480 px on the shorter side, like labels; scaled with the image
MIN_BANNER_SCALE = 0.2  # below this the banner is unreadable: tiny images go without one


def banner_text(fps: float | None, inference_ms: float, backend: str = "") -> str:
    """``FPS  24.3  infer  38.1 ms  cpu``; without the FPS part when ``fps`` is None."""
    parts = [] if fps is None else [f"FPS {fps:5.1f}"]
    parts.append(f"infer {inference_ms:5.1f} ms")
    if backend:
        parts.append(backend)
    return "  ".join(parts)


def _banner_style(image_size: tuple[int, int]) -> Style:
    label = Style.for_image(*image_size)
    scale = label.font_scale * BANNER_FONT_SCALE / LABEL_FONT_SCALE
    return Style(scale, label.text_thickness, label.box_thickness, max(2, round(scale * 10)))


def _banner_block(image_size: tuple[int, int], text: str) -> TextBlock:
    width, height = image_size
    return text_block(text, _banner_style(image_size), (width, height // 4))


def banner_rect(image_size: tuple[int, int], text: str) -> Rect:
    """The banner's place: the bottom-left corner, where labels (drawn at box tops) rarely go.
    Its text shrinks to fit the image's width (and a quarter of its height)."""
    width, height = image_size
    w, h = _banner_block(image_size, text).size
    return (0, height - h, w, height)


def draw_banner(
    image: np.ndarray, fps: float | None, inference_ms: float, backend: str = ""
) -> Rect:
    """The status line (FPS and per-frame inference time); returns where it was drawn (an
    empty rectangle where the image is too small for readable text)."""
    cv2 = require("cv2", "video")
    size = (image.shape[1], image.shape[0])
    text = banner_text(fps, inference_ms, backend)
    block = _banner_block(size, text)
    if backend and block.font_scale < _banner_style(size).font_scale:
        # It had to shrink: the backend name is the part to spare on a small image.
        text = banner_text(fps, inference_ms)
        block = _banner_block(size, text)
    if block.font_scale < MIN_BANNER_SCALE:
        return (0, size[1], 0, size[1])
    rect = banner_rect(size, text)
    cv2.rectangle(image, rect[:2], (rect[2] - 1, rect[3] - 1), (0, 0, 0), -1)
    put_text(image, block, rect, (255, 255, 255))
    return rect


def draw_trails(
    image: np.ndarray, trails: Sequence[tuple[int, np.ndarray]], style: Style | None = None
) -> None:
    """Polylines through each track's recent points ((class id, [P, 2] int points))."""
    cv2 = require("cv2", "video")
    style = style or Style.for_image(image.shape[1], image.shape[0])
    for class_id, points in trails:
        cv2.polylines(
            image, [points.reshape(-1, 1, 2)], False, class_color(class_id),
            max(1, style.box_thickness), cv2.LINE_AA,
        )  # fmt: skip


def draw_frame(
    image: np.ndarray,
    detections: Detections,
    fps: float | None,
    inference_ms: float,
    backend: str = "",
    trails: Sequence[tuple[int, np.ndarray]] = (),
) -> list[Rect]:
    """Trails, boxes, the banner over them, then labels around the banner: every label stays
    whole. ``fps`` None (a still image) leaves the FPS out of the banner. Tracked detections
    (``tracker_id``) get their ID in the label."""
    style = Style.for_image(image.shape[1], image.shape[0])
    draw_trails(image, trails, style)
    draw_boxes(image, detections, style)
    banner = draw_banner(image, fps, inference_ms, backend)
    ids = None if detections.tracker_id is None else detections.tracker_id.tolist()
    return draw_labels(image, detections, avoid=[banner], style=style, ids=ids)
