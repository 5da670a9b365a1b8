"""Per-class NMS after the engine, for graphs exported with ``--nms none``.

It reproduces what the ONNX graph's NonMaxSuppression + top-K does (and what the TF OD API's
batch_multiclass_non_max_suppression does): per class, drop scores <= the threshold, greedily
suppress boxes whose IoU with a kept box exceeds the IoU threshold, keep at most ``max_per_class``;
then take the best ``max_total`` over all classes, zero-padded. Like the graph, it first keeps only
the best ``max_candidates`` (anchor, class) pairs by score.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .detection_batch import DetectionBatch


@dataclass(frozen=True)
class NmsSettings:
    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    max_per_class: int = 100
    max_total: int = 100
    # NMS only looks at the best max_candidates (anchor, class) pairs; 0 looks at every pair
    # above the threshold (1917 x 90 = 172k for COCO SSDs at TF's 1e-8). Sorting and walking
    # that many is what NMS cost; the best 1000 hold every detection that matters.
    max_candidates: int = 1000


@dataclass(frozen=True)
class NmsChange:
    """NMS settings asked for at detect time; None keeps the model's own."""

    iou_threshold: float | None = None
    max_total: int | None = None
    max_per_class: int | None = None

    def applied_to(self, s: NmsSettings) -> NmsSettings:
        return replace(
            s,
            iou_threshold=s.iou_threshold if self.iou_threshold is None else self.iou_threshold,
            max_total=s.max_total if self.max_total is None else self.max_total,
            max_per_class=s.max_per_class if self.max_per_class is None else self.max_per_class,
        )

    def not_exact_after(self, s: NmsSettings) -> list[str]:
        """The fields (``iou_threshold``, ``max_per_class``, ``max_total``) that cutting the
        output of NMS done with ``s`` cannot give exactly, so NMS must run again with them.

        NMS keeps detections best first and stops at ``max_total``, so a smaller ``max_total``
        is a prefix of its output. Another IoU changes which boxes suppress which; another
        per-class limit changes which boxes compete for the ``max_total`` places (a smaller one
        frees places that boxes NMS never returned would take); a larger ``max_total`` wants
        boxes NMS never returned. (A higher score threshold is exact too: the Detector's
        ``score_threshold`` filters after NMS.)
        """
        wanted = self.applied_to(s)
        changed = []
        if wanted.iou_threshold != s.iou_threshold:
            changed.append("iou_threshold")
        if wanted.max_per_class != s.max_per_class:
            changed.append("max_per_class")
        if wanted.max_total > s.max_total:
            changed.append("max_total")
        return changed


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


def nms_image(
    boxes: np.ndarray, scores: np.ndarray, s: NmsSettings
) -> list[tuple[float, int, int]]:
    """(score, class index, anchor) of the kept detections of one image, best first.

    Walks all (anchor, class) pairs in descending score order, keeping a pair when its class has
    room and its box overlaps no box already kept for that class. That is per-class greedy NMS
    exactly (a pair is only ever judged against higher-scoring boxes of its class), and it can
    stop at ``max_total`` kept pairs because every later pair scores lower. Only the best
    ``s.max_candidates`` pairs are sorted and walked (see ``top_candidates``).
    """
    anchors, classes = scores.shape
    flat = scores.ravel()  # index = anchor * classes + class
    candidates = top_candidates(flat, s.score_threshold, candidate_cap(s))
    order = candidates[np.argsort(-flat[candidates], kind="stable")]
    kept_boxes = np.zeros((classes, s.max_per_class, 4), boxes.dtype)
    kept_count = np.zeros(classes, np.int64)
    out: list[tuple[float, int, int]] = []
    for index in order:
        anchor, cls = divmod(int(index), classes)
        n = kept_count[cls]
        if n >= s.max_per_class:
            continue
        if n and (box_iou(boxes[anchor], kept_boxes[cls, :n]) > s.iou_threshold).any():
            continue
        kept_boxes[cls, n] = boxes[anchor]
        kept_count[cls] = n + 1
        out.append((float(flat[index]), cls, anchor))
        if len(out) == s.max_total:
            break
    return out


def candidate_cap(s: NmsSettings) -> int:
    """How many candidates NMS looks at (0: all); never fewer than ``max_total``."""
    return max(s.max_candidates, s.max_total) if s.max_candidates > 0 else 0


def top_candidates(flat: np.ndarray, score_threshold: float, cap: int) -> np.ndarray:
    """Ascending flat indices of the ``cap`` best scores above the threshold (all when cap is 0).

    Equal scores at the cut go to the lower index, as the graph's TopK does, so both keep the
    same candidates.
    """
    candidates = np.flatnonzero(flat > score_threshold)
    if cap <= 0 or len(candidates) <= cap:
        return candidates
    values = flat[candidates]
    kth = values[np.argpartition(-values, cap - 1)[cap - 1]]  # the cap-th best score
    above = candidates[values > kth]
    ties = candidates[values == kth][: cap - len(above)]
    return np.sort(np.concatenate([above, ties]))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, s: NmsSettings) -> DetectionBatch:
    """boxes [N, A, 4], scores [N, A, C] -> the detections the exported graph's NMS gives."""
    out = DetectionBatch.empty(boxes.shape[0], s.max_total)
    for b in range(out.images):
        picked = nms_image(boxes[b], scores[b], s)
        out.num_detections[b, 0] = len(picked)
        for j, (score, c, i) in enumerate(picked):
            out.detection_boxes[b, j] = boxes[b, i]
            out.detection_scores[b, j] = score
            out.detection_classes[b, j] = c + 1
    return out
