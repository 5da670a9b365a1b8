"""The runtime seam: every backend is a frame detector.

``FrameDetector`` is what the Detector (and through it the video engine and the benchmarks)
talks to: ``submit(frames) -> handle`` and ``collect(handle) -> DetectionBatch``, plus
``warm_up``, ``stage_ms`` and ``close``. Host-stage backends (ONNX Runtime, TensorRT with host
arrays) implement it once, in runtime/host.py, by composing preprocessing, a ``Network`` and
NMS; the GPU fast path implements it natively (runtime/gpu/backend.py). Which class a backend
name opens is the registry's business (runtime/registry.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ModelInfo
from ..detection_batch import DetectionBatch
from ..device_frames import DeviceFrame
from ..nms import NmsSettings


class Network(ABC):
    """A loaded graph that runs preprocessed batches: float32 [N, 3, H, W] in, the graph's
    outputs by name out (detections, or raw boxes and scores for ``--nms none`` graphs)."""

    name: str = "network"  # the backend name it runs as (see runtime.registry)
    info: ModelInfo
    model_path: Path  # the file it runs
    max_batch: int | None = None  # the largest batch one infer() takes; None: any

    @abstractmethod
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [N, 3, H, W] -> the graph's outputs by name."""

    def close(self) -> None:  # noqa: B027 - optional for networks that hold nothing
        """Release sessions, buffers and streams."""

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The name this interface had when backends only ran graphs.
Backend = Network


class FrameDetector(ABC):
    """uint8 HxWx3 frames in, a ``DetectionBatch`` out: the one interface of every backend.

    ``queues``: submit() returns before the batch is done (work queued on a GPU), so a caller
    can prepare the next batch meanwhile; at most two batches may be in flight. Elsewhere
    submit() runs the batch at once and collect() only hands it over. Submit and collect from
    one thread.
    """

    name: str = "backend"  # the canonical backend name (see runtime.registry)
    info: ModelInfo
    model_path: Path
    nms_settings: NmsSettings  # the NMS settings its detections come from
    max_batch: int  # the batch size it is set up for (engine profile, CUDA graph sizes)
    queues: bool = False

    @abstractmethod
    def submit(self, frames: Sequence[np.ndarray | DeviceFrame], bgr: bool) -> Any:
        """Start a batch of checked uint8 frames (any number: larger ones are split);
        returns a handle for collect(). Frames in GPU memory (``DeviceFrame``) are read in
        place by the GPU fast path; host-stage backends refuse them in one line."""

    @abstractmethod
    def collect(self, handle: Any) -> DetectionBatch:
        """The detections of a submitted batch (waits for it)."""

    @property
    @abstractmethod
    def stage_ms(self) -> dict[str, float]:
        """Milliseconds per stage (``detection_batch.STAGES``) of the last collected batch."""

    def detect(self, frames: Sequence[np.ndarray | DeviceFrame], bgr: bool) -> DetectionBatch:
        return self.collect(self.submit(frames, bgr))

    def warm_up(self, max_batch: int) -> None:  # noqa: B027 - most backends need nothing
        """Get ready for batches of up to ``max_batch`` frames now, not in the middle of a
        video (the GPU fast path builds a network and a CUDA graph per batch size)."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release sessions, buffers and streams."""

    def __enter__(self) -> FrameDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
