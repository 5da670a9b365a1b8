"""The runtime interface: a loaded network that runs preprocessed batches.

Backends only run graphs. Preprocessing, NMS (for graphs exported with ``--nms none``) and
postprocessing are the detector's stages, so each is timed as what it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..contract import ModelInfo


class Backend(ABC):
    """A loaded model. ``name`` is the canonical backend name (see runtime.select)."""

    name: str = "backend"
    info: ModelInfo
    model_path: Path  # the file it runs
    max_batch: int | None = None  # the largest batch one infer() takes; None: any

    @abstractmethod
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [N, 3, H, W] -> the graph's outputs by name (detections, or raw
        boxes and scores for ``--nms none`` graphs)."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release sessions, buffers and streams."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
