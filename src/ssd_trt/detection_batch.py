"""``DetectionBatch``: what every backend hands on for a batch of images, and the stage names.

The four arrays are the exported graph's detection outputs (``contract.DETECTION_OUTPUTS`` is
this class's ``NAMES``): the NMS stage, a graph with NMS inside and the GPU fast path all give
one, and postprocessing turns it into ``Detections``. Nothing else spells the four names.

``STAGES`` is the one vocabulary of stage times, in pipeline order: a backend reports the stages
it has (host backends: preprocess, inference, nms; the GPU fast path: upload, preprocess,
inference, nms, download from CUDA events, plus ``TOTAL``, its whole GPU span), the Detector adds
postprocess, the video engine decode, track (with ``--track``), draw and output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

STAGES = (
    "decode",
    "upload",
    "preprocess",
    "inference",
    "nms",
    "download",
    "postprocess",
    "track",
    "draw",
    "output",
)
# The stages each kind of backend times (subsets of STAGES, same names).
HOST_STAGES = ("preprocess", "inference", "nms")
GPU_STAGES = ("upload", "preprocess", "inference", "nms", "download")
TOTAL = "total"  # a GPU backend's span from upload to download (not a stage: no sum of them)


@dataclass(frozen=True)
class DetectionBatch:
    """Detections of N images, best first per image, at most K each (rows past
    ``num_detections`` are padding). Boxes are normalized [ymin, xmin, ymax, xmax] of the
    network input, which maps linearly onto each original image.

    Reads like the graph's output dict too (``batch["detection_boxes"]``, ``dict(batch)``), so
    code written against the named outputs keeps working.
    """

    num_detections: np.ndarray  # [N, 1] int32
    detection_boxes: np.ndarray  # [N, K, 4] float32
    detection_scores: np.ndarray  # [N, K] float32
    detection_classes: np.ndarray  # [N, K] int32, 1-based label ids

    NAMES: ClassVar[tuple[str, str, str, str]] = (
        "num_detections",
        "detection_boxes",
        "detection_scores",
        "detection_classes",
    )

    @classmethod
    def of(cls, outputs: Mapping[str, np.ndarray] | DetectionBatch) -> DetectionBatch:
        """The batch in a graph's outputs by name (other outputs are left out)."""
        if isinstance(outputs, DetectionBatch):
            return outputs
        return cls(*(outputs[name] for name in cls.NAMES))

    @classmethod
    def empty(cls, n: int, k: int) -> DetectionBatch:
        """N images with no detections yet, room for K each (for a stage to fill in)."""
        return cls(
            np.zeros((n, 1), np.int32),
            np.zeros((n, k, 4), np.float32),
            np.zeros((n, k), np.float32),
            np.zeros((n, k), np.int32),
        )

    @classmethod
    def concat(cls, parts: Sequence[DetectionBatch]) -> DetectionBatch:
        """Batches run one after the other, as one."""
        return cls(*(np.concatenate([p[name] for p in parts]) for name in cls.NAMES))

    def take(self, index: Sequence[int] | np.ndarray) -> DetectionBatch:
        """The images at ``index``, in that order."""
        rows = np.asarray(index, dtype=np.intp)
        return DetectionBatch(*(self[name][rows] for name in self.NAMES))

    @property
    def images(self) -> int:
        return int(self.num_detections.shape[0])

    def cut(self, max_det: int | None) -> DetectionBatch:
        """At most ``max_det`` per image (exact: rows come best first); None: as it is."""
        if max_det is None:
            return self
        counts = np.minimum(self.num_detections, max_det)
        return DetectionBatch(counts, self.detection_boxes, self.detection_scores,
                              self.detection_classes)  # fmt: skip

    # Read access by output name, like the dict a graph run gives.

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def keys(self) -> tuple[str, ...]:
        return self.NAMES

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [(name, getattr(self, name)) for name in self.NAMES]
