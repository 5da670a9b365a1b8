"""Drawing stage: boxes, labels and scores, plus an FPS / inference-time banner.

The banner sits in the bottom-left corner, and every label is placed where it is whole and
visible: above its box, else inside the box's top, else below the box, never under the banner
or another label where a free spot exists, and always inside the image.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from ..detections import Detections
from ..errors import require

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive), pixels

LABEL_FONT_SCALE = 0.5
BANNER_FONT_SCALE = 0.5


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class id (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_label(
    box: Rect, size: tuple[int, int], image_size: tuple[int, int], avoid: Sequence[Rect] = ()
) -> Rect:
    """Where a label of ``size`` (w, h) goes for ``box`` in an image of ``image_size`` (w, h).

    Tries above the box, inside its top, below it and inside its bottom; the first spot that
    lies inside the image and clear of ``avoid`` wins. If none is clear, the first one inside
    the image (shifted in where needed) is used: a label may cover another, never leave the image.
    """
    (w, h), (width, height) = size, image_size
    x1, y1, _, y2 = box
    x = min(max(0, x1), max(0, width - w))  # shifted left/right so the text is whole
    tops = (y1 - h, y1, y2, y2 - h)
    spots = [(x, t, x + w, t + h) for t in tops if 0 <= t and t + h <= height]
    for spot in spots:
        if not any(_overlaps(spot, other) for other in avoid):
            return spot
    if spots:
        return spots[0]
    top = min(max(0, y1 - h), max(0, height - h))
    return (x, top, x + w, top + h)


def _label_size(cv2, text: str) -> tuple[tuple[int, int], int]:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_FONT_SCALE, 1)
    return (tw + 2, th + base + 2), base


def _pixel_box(det) -> Rect:
    return tuple(int(round(v)) for v in det.box)  # type: ignore[return-value]


def draw_boxes(image: np.ndarray, detections: Detections) -> None:
    cv2 = require("cv2", "video")
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for det in detections:
        box = _pixel_box(det)
        cv2.rectangle(image, box[:2], box[2:], class_color(det.class_id), thickness)


def draw_labels(
    image: np.ndarray, detections: Detections, avoid: Sequence[Rect] = ()
) -> list[Rect]:
    """Labels clear of ``avoid`` and of each other; returns their rectangles in order."""
    cv2 = require("cv2", "video")
    height, width = image.shape[:2]
    taken, placed = list(avoid), []
    for det in detections:
        text = f"{det.label} {det.score:.2f}"
        size, base = _label_size(cv2, text)
        rect = place_label(_pixel_box(det), size, (width, height), taken)
        cv2.rectangle(image, rect[:2], (rect[2] - 1, rect[3] - 1), class_color(det.class_id), -1)
        cv2.putText(
            image,
            text,
            (rect[0] + 1, rect[3] - base - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            LABEL_FONT_SCALE,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        taken.append(rect)
        placed.append(rect)
    return placed


def draw_detections(
    image: np.ndarray, detections: Detections, avoid: Sequence[Rect] = ()
) -> list[Rect]:
    """Boxes, then labels clear of ``avoid``, in place on a BGR image; returns label rects."""
    draw_boxes(image, detections)
    return draw_labels(image, detections, avoid)


def banner_text(fps: float, inference_ms: float, backend: str = "") -> str:
    text = f"FPS {fps:5.1f}  infer {inference_ms:5.1f} ms"
    return f"{text}  {backend}" if backend else text


def banner_rect(image_size: tuple[int, int], text: str) -> Rect:
    """The banner's place: the bottom-left corner, where labels (drawn at box tops) rarely go."""
    cv2 = require("cv2", "video")
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, BANNER_FONT_SCALE, 1)
    width, height = image_size
    w, h = min(width, tw + 10), min(height, th + base + 8)
    return (0, height - h, w, height)


def draw_banner(image: np.ndarray, fps: float, inference_ms: float, backend: str = "") -> Rect:
    """The status line (FPS and per-frame inference time); returns where it was drawn."""
    cv2 = require("cv2", "video")
    text = banner_text(fps, inference_ms, backend)
    rect = banner_rect((image.shape[1], image.shape[0]), text)
    cv2.rectangle(image, rect[:2], (rect[2] - 1, rect[3] - 1), (0, 0, 0), -1)
    _, base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, BANNER_FONT_SCALE, 1)
    cv2.putText(
        image,
        text,
        (rect[0] + 5, rect[3] - base - 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        BANNER_FONT_SCALE,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return rect


def draw_frame(
    image: np.ndarray,
    detections: Detections,
    fps: float,
    inference_ms: float,
    backend: str = "",
) -> list[Rect]:
    """Boxes, the banner over them, then labels around the banner: every label stays whole."""
    draw_boxes(image, detections)
    banner = draw_banner(image, fps, inference_ms, backend)
    return draw_labels(image, detections, avoid=[banner])
