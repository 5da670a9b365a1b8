"""Postprocessing stage: the graph's normalized outputs -> Detections in image pixels."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from .detection_batch import DetectionBatch
from .detections import Detections


def to_detections(
    outputs: DetectionBatch | Mapping[str, np.ndarray],
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
    batch = DetectionBatch.of(outputs)  # a graph's outputs by name are one too
    # Whole-batch array work first (a video batch holds up to 64 frames), then one slice each.
    scores_all = batch.detection_scores
    count = batch.num_detections[:, 0].astype(np.int64)
    keep_all = (np.arange(scores_all.shape[1]) < count[:, None]) & (scores_all >= min_score)
    class_all = batch.detection_classes.astype(np.int32)
    if classes is not None:
        keep_all &= np.isin(class_all, list(classes))
    sizes = np.asarray(image_sizes, np.float32).reshape(-1, 2)  # (height, width)
    scale = sizes[:, [1, 0, 1, 0]][:, None, :]
    boxes_all = batch.detection_boxes[:, :, [1, 0, 3, 2]].astype(np.float32) * scale
    result = []
    for i, keep in enumerate(keep_all[: len(sizes)]):
        ids = class_all[i][keep]
        result.append(
            Detections(
                boxes=boxes_all[i][keep],
                scores=scores_all[i][keep].astype(np.float32),
                class_ids=ids,
                labels=[labels.get(int(c), f"class_{c}") for c in ids],
            )
        )
    return result
