"""Per-class NMS after the engine, for graphs exported with ``--nms none``.

It reproduces what the ONNX graph's NonMaxSuppression + top-K does (and what the TF OD API's
batch_multiclass_non_max_suppression does): per class, drop scores <= the threshold, greedily
suppress boxes whose IoU with a kept box exceeds the IoU threshold, keep at most ``max_per_class``;
then take the best ``max_total`` over all classes, zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NmsSettings:
    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    max_per_class: int = 100
    max_total: int = 100


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``others``: corners as [y1, x1, y2, x2] or [x1, y1, x2, y2],
    the same order for both (IoU does not care which axis comes first)."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_single_class(boxes: np.ndarray, scores: np.ndarray, s: NmsSettings) -> np.ndarray:
    """Indices of the boxes kept for one class, best first."""
    candidates = np.flatnonzero(scores > s.score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    keep: list[int] = []
    while order.size and len(keep) < s.max_per_class:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= s.iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, s: NmsSettings) -> dict[str, np.ndarray]:
    """boxes [N, A, 4], scores [N, A, C] -> the four detection outputs of the exported graph."""
    n = boxes.shape[0]
    k = s.max_total
    out = {
        "num_detections": np.zeros((n, 1), np.int32),
        "detection_boxes": np.zeros((n, k, 4), np.float32),
        "detection_scores": np.zeros((n, k), np.float32),
        "detection_classes": np.zeros((n, k), np.int32),
    }
    for b in range(n):
        picked: list[tuple[float, int, int]] = []
        for c in range(scores.shape[2]):
            col = scores[b, :, c]
            picked += [(float(col[i]), c, int(i)) for i in nms_single_class(boxes[b], col, s)]
        picked.sort(key=lambda t: -t[0])
        picked = picked[:k]
        out["num_detections"][b, 0] = len(picked)
        for j, (score, c, i) in enumerate(picked):
            out["detection_boxes"][b, j] = boxes[b, i]
            out["detection_scores"][b, j] = score
            out["detection_classes"][b, j] = c + 1
    return out
