"""Drawing detections on an image: boxes, labels with scores, one colour per class.

Everything scales with the image: text and lines look the same on a 160x120 thumbnail and a
2560x1440 photo (relative to the picture), and every label is placed whole and visible: above
its box, else inside the box's top, else below the box, clear of other labels (and of ``avoid``
rectangles such as a status banner) where a free spot exists, and always inside the image.

Ground floor: it knows nothing of Detections (which plots through it), only of objects with
``box``, ``score``, ``class_id`` and ``label``, as iterating a Detections yields.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import SsdTrtError, require

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive), pixels

LABEL_FONT_SCALE = 0.5  # at REFERENCE_SIDE; scaled with the image's shorter side
REFERENCE_SIDE = 480
MIN_FONT_SCALE = 0.3  # about 8 px capitals: the smallest size still read at a glance
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX, without importing cv2 at import time


class Boxed(Protocol):
    """One detection as drawn: a Detections yields these (ssd_trt.Detection, a NamedTuple, so
    the members are read-only properties here)."""

    @property
    def box(self) -> Any: ...  # x1, y1, x2, y2 in pixels

    @property
    def score(self) -> float: ...

    @property
    def class_id(self) -> int: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Style:
    """Sizes for one image: the font scale, the text stroke, the box lines and text padding."""

    font_scale: float
    text_thickness: int
    box_thickness: int
    pad: int

    @classmethod
    def for_image(cls, width: int, height: int) -> Style:
        """Sizes proportional to the shorter side (480 px: the classic 0.5 scale, 1 px text)."""
        short = max(1, min(width, height))
        scale = max(MIN_FONT_SCALE, LABEL_FONT_SCALE * short / REFERENCE_SIDE)
        return cls(
            font_scale=scale,
            text_thickness=max(1, round(scale * 2)),
            box_thickness=max(1, round(short / 300)),
            pad=max(1, round(scale * 2)),
        )


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


@dataclass(frozen=True)
class TextBlock:
    """Text at a font scale, with the size of its filled background (padding included)."""

    text: str
    font_scale: float
    thickness: int
    pad: int
    size: tuple[int, int]  # w, h of the background
    baseline: int


def text_block(
    text: str,
    style: Style,
    max_size: tuple[int, int] | None = None,
    pad: int | None = None,
) -> TextBlock:
    """``text`` in ``style`` (``pad``: around the text, default the style's), shrunk where
    needed so its background fits ``max_size`` (w, h): a label wider than a small image gets a
    smaller font rather than being cut off."""
    cv2 = require("cv2", "video")
    scale0 = scale = style.font_scale
    pad0 = style.pad if pad is None else pad
    thickness, pad = style.text_thickness, pad0
    for _ in range(4):  # re-measure after shrinking: sizes do not scale quite linearly
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        w, h = tw + 2 * pad, th + base + 2 * pad
        if max_size is None or (w <= max_size[0] and h <= max_size[1]):
            break
        scale *= min(max_size[0] / w, max_size[1] / h) * 0.97
        thickness = max(1, min(thickness, round(scale * 2)))
        pad = max(1, round(pad0 * scale / scale0))
    return TextBlock(text, scale, thickness, pad, (w, h), base)


def put_text(image: np.ndarray, block: TextBlock, rect: Rect, color: tuple[int, int, int]) -> None:
    """Draw ``block``'s text inside ``rect`` (left-aligned, above the baseline)."""
    cv2 = require("cv2", "video")
    origin = (rect[0] + block.pad, rect[3] - block.baseline - block.pad)
    cv2.putText(
        image, block.text, origin, FONT, block.font_scale, color, block.thickness, cv2.LINE_AA
    )


def _pixel_box(det: Boxed) -> Rect:
    return tuple(int(round(float(v))) for v in det.box)  # type: ignore[return-value]


def _style(image: np.ndarray, style: Style | None) -> Style:
    return style or Style.for_image(image.shape[1], image.shape[0])


def draw_boxes(image: np.ndarray, detections: Iterable[Boxed], style: Style | None = None) -> None:
    """Each detection's box in its class colour, in place on a BGR image."""
    cv2 = require("cv2", "video")
    style = _style(image, style)
    for det in detections:
        box = _pixel_box(det)
        cv2.rectangle(image, box[:2], box[2:], class_color(det.class_id), style.box_thickness)


def draw_labels(
    image: np.ndarray,
    detections: Iterable[Boxed],
    avoid: Sequence[Rect] = (),
    style: Style | None = None,
    ids: Sequence[int] | None = None,
) -> list[Rect]:
    """Labels clear of ``avoid`` and of each other; returns their rectangles in order.
    ``ids``: each detection's track ID, drawn first (``#3 person 0.87``) where > 0."""
    cv2 = require("cv2", "video")
    style = _style(image, style)
    height, width = image.shape[:2]
    taken, placed = list(avoid), []
    for i, det in enumerate(detections):
        tag = f"#{ids[i]} " if ids is not None and ids[i] > 0 else ""
        block = text_block(f"{tag}{det.label} {det.score:.2f}", style, (width, height))
        rect = place_label(_pixel_box(det), block.size, (width, height), taken)
        cv2.rectangle(image, rect[:2], (rect[2] - 1, rect[3] - 1), class_color(det.class_id), -1)
        put_text(image, block, rect, (0, 0, 0))
        taken.append(rect)
        placed.append(rect)
    return placed


def draw_detections(
    image: np.ndarray, detections: Iterable[Boxed], avoid: Sequence[Rect] = ()
) -> list[Rect]:
    """Boxes, then labels clear of ``avoid``, in place on a BGR image; returns label rects."""
    detections = list(detections)
    draw_boxes(image, detections)
    return draw_labels(image, detections, avoid)


def annotate(image: np.ndarray, detections: Iterable[Boxed]) -> np.ndarray:
    """An annotated copy of ``image`` (BGR uint8 [H, W, 3], or grayscale [H, W]): boxes and
    labels scaled to its size. The image passed in is left as it is."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    ):
        raise SsdTrtError(
            f"annotate takes a uint8 BGR image [H, W, 3] or grayscale [H, W], not "
            f"{image.dtype} {list(image.shape)}; load it with cv2.imread"
        )
    if image.ndim == 3 and image.shape[2] == 3:
        out = np.ascontiguousarray(image).copy()
    else:
        out = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    draw_detections(out, detections)
    return out
