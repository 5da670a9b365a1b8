"""Postprocessing stage: the graph's normalized outputs -> Detections in image pixels."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from .detections import Detections


def to_detections(
    outputs: dict[str, np.ndarray],
    image_sizes: Sequence[tuple[int, int]],
    labels: dict[int, str],
    *,
    min_score: float = 0.0,
    classes: Collection[int] | None = None,
) -> list[Detections]:
    """One Detections per image; ``image_sizes`` are (height, width) of the original images.

    Boxes come out of the graph as normalized [ymin, xmin, ymax, xmax] of the resized input,
    which maps linearly onto the original image because preprocessing stretches it.
    """
    result = []
    for i, (height, width) in enumerate(image_sizes):
        n = int(outputs["num_detections"][i, 0])
        scores = outputs["detection_scores"][i, :n]
        class_ids = outputs["detection_classes"][i, :n].astype(np.int32)
        keep = scores >= min_score
        if classes is not None:
            keep &= np.isin(class_ids, list(classes))
        norm = outputs["detection_boxes"][i, :n][keep]
        scale = np.array([width, height, width, height], np.float32)
        boxes = norm[:, [1, 0, 3, 2]].astype(np.float32) * scale
        ids = class_ids[keep]
        result.append(
            Detections(
                boxes=boxes,
                scores=scores[keep].astype(np.float32),
                class_ids=ids,
                labels=[labels.get(int(c), f"class_{c}") for c in ids],
            )
        )
    return result
