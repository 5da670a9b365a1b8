"""Drawing stage: boxes, labels and scores, plus an FPS / inference-time banner."""

from __future__ import annotations

import colorsys

import numpy as np

from ..detections import Detections
from ..errors import require


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class id (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, detections: Detections) -> np.ndarray:
    """Draw in place on a BGR image and return it."""
    cv2 = require("cv2", "video")
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for det in detections:
        color = class_color(det.class_id)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        text = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1, th + base + 2)
        cv2.rectangle(image, (x1, top - th - base - 2), (x1 + tw + 2, top), color, -1)
        cv2.putText(
            image,
            text,
            (x1 + 1, top - base - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return image


def draw_banner(
    image: np.ndarray, fps: float, inference_ms: float, backend: str = ""
) -> np.ndarray:
    """The seed's top-left status line: FPS and per-frame inference time."""
    cv2 = require("cv2", "video")
    text = f"FPS {fps:5.1f}  infer {inference_ms:5.1f} ms"
    if backend:
        text += f"  {backend}"
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    cv2.rectangle(image, (0, 0), (tw + 10, th + base + 10), (0, 0, 0), -1)
    cv2.putText(
        image, text, (5, th + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA
    )
    return image
