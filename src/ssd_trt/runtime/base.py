"""The runtime interface: a loaded network that runs preprocessed batches.

Backends only run graphs. Preprocessing, NMS (for graphs exported with ``--nms none``) and
postprocessing are the detector's stages, so each is timed as what it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ModelInfo


class Backend(ABC):
    """A loaded model. ``name`` is the canonical backend name (see runtime.select)."""

    name: str = "backend"
    info: ModelInfo
    model_path: Path  # the file it runs
    max_batch: int | None = None  # the largest batch one infer() takes; None: any
    # Backends that take uint8 frames and do every stage themselves (the GPU fast path) set
    # this and implement detect_frames(); infer() is then not used.
    takes_frames: bool = False
    # takes_frames backends that can queue a batch and return before it is done set this and
    # implement submit()/collect(), so a caller can prepare the next batch meanwhile.
    supports_submit: bool = False

    @abstractmethod
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [N, 3, H, W] -> the graph's outputs by name (detections, or raw
        boxes and scores for ``--nms none`` graphs)."""

    def detect_frames(self, frames: Sequence[np.ndarray], bgr: bool) -> dict[str, np.ndarray]:
        """uint8 HxWx3 frames -> the four detection outputs (``takes_frames`` backends)."""
        raise NotImplementedError

    def submit(self, frames: Sequence[np.ndarray], bgr: bool) -> Any:
        """Queue uint8 frames (``supports_submit`` backends); returns a handle for collect()."""
        raise NotImplementedError

    def collect(self, handle: Any) -> dict[str, np.ndarray]:
        """Wait for a submitted batch: the four detection outputs, as detect_frames() gives."""
        raise NotImplementedError

    def warm_up(self, max_batch: int) -> None:  # noqa: B027 - most backends need nothing
        """Get ready for batches of up to ``max_batch`` images now, not in the middle of a
        video (the GPU fast path builds a network and a CUDA graph per batch size)."""

    @property
    def submit_limit(self) -> int | None:
        """The most frames one submit() takes; None: any."""
        return None

    @property
    def last_stage_ms(self) -> dict[str, float]:
        """Per-stage times of the last call, where the backend measures them (GPU events)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release sessions, buffers and streams."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
