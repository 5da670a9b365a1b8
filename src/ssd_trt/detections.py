"""The Detections data contract: what a detector returns for one image."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .annotate import annotate
from .errors import require


class Detection(NamedTuple):
    box: np.ndarray  # x1, y1, x2, y2 in pixels
    score: float
    class_id: int
    label: str


@dataclass
class Detections:
    """Detections in one image, in pixel coordinates of that image, best first.

    ``boxes`` float32 [M, 4] (x1, y1, x2, y2); ``scores`` float32 [M]; ``class_ids`` int32 [M],
    the model's label ids (1..90 for COCO); ``labels`` the matching names. ``tracker_id`` int
    [M] once a ``tracking.Tracker`` has seen them (-1: not in a confirmed track), else None.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    labels: list[str] = field(default_factory=list)
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or len(self.class_ids) != n or len(self.labels) != n:
            raise ValueError(
                f"Detections fields disagree: boxes {self.boxes.shape}, scores {n}, "
                f"class_ids {len(self.class_ids)}, labels {len(self.labels)}"
            )
        if self.tracker_id is not None:
            ids = np.asarray(self.tracker_id)
            if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(f"tracker_id must be {n} integers, got {ids.dtype} {ids.shape}")
            self.tracker_id = ids.astype(np.int64)

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[Detection]:
        for i in range(len(self)):
            yield Detection(
                self.boxes[i], float(self.scores[i]), int(self.class_ids[i]), self.labels[i]
            )

    def __getitem__(self, index: Any) -> Detections:
        """Select with a slice, an index array or a boolean mask."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(
            self.boxes[idx],
            self.scores[idx],
            self.class_ids[idx],
            [self.labels[i] for i in idx],
            None if self.tracker_id is None else self.tracker_id[idx],
        )

    def filter(
        self, min_score: float = 0.0, classes: Iterable[int | str] | None = None
    ) -> Detections:
        """Keep detections scoring >= ``min_score`` whose class id or label is in ``classes``."""
        keep = self.scores >= min_score
        if classes is not None:
            wanted = set(classes)
            keep &= np.array(
                [
                    c in wanted or lab in wanted
                    for c, lab in zip(self.class_ids, self.labels, strict=True)
                ],
                dtype=bool,
            ).reshape(-1)
        return self[keep]

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results records: bbox is [x, y, width, height] in pixels."""
        return [
            {
                "image_id": int(image_id),
                "category_id": int(d.class_id),
                "bbox": [round(float(v), 2) for v in (*d.box[:2], *(d.box[2:] - d.box[:2]))],
                "score": round(d.score, 5),
            }
            for d in self
        ]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per detection; ``track_id`` only when tracked."""
        records = [
            {
                "box": [round(float(v), 1) for v in d.box],
                "score": round(d.score, 4),
                "class_id": d.class_id,
                "label": d.label,
            }
            for d in self
        ]
        if self.tracker_id is not None:
            for record, tid in zip(records, self.tracker_id.tolist(), strict=True):
                record["track_id"] = tid
        return records

    def plot(self, image: np.ndarray) -> np.ndarray:
        """An annotated copy of ``image`` (BGR, the one detected on): boxes and labels with
        scores, one colour per class, scaled to the image's size; ``image`` is unchanged."""
        return annotate(image, self)

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (pip install 'ssd-trt[supervision]')."""
        sv = require("supervision", "supervision")
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32),
            confidence=self.scores.astype(np.float32),
            class_id=self.class_ids.astype(int),
            data={"class_name": np.array(self.labels, dtype=str)},
            tracker_id=None if self.tracker_id is None else self.tracker_id.astype(int),
        )
