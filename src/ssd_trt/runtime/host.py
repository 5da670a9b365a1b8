"""Host stages behind the seam: preprocess -> network -> NMS, on host arrays.

The one place the three stages are composed (ONNX Runtime on any provider, TensorRT with host
arrays). Each stage is public too, for benchmarks and callers that time or overlap them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..detection_batch import HOST_STAGES, DetectionBatch
from ..device_frames import DeviceFrame
from ..errors import SsdTrtError
from ..nms import NmsSettings, batched_nms
from ..preprocess import preprocess
from .base import FrameDetector, Network


class HostStages(FrameDetector):
    """A ``Network`` between host preprocessing and NMS. ``cut``: the top-K to cut a graph's
    own detections to (None: as they are); graphs that end at raw boxes and scores get the
    project's NMS with ``nms_settings``."""

    def __init__(self, network: Network, nms_settings: NmsSettings, cut: int | None,
                 max_batch: int) -> None:  # fmt: skip
        self.network = network
        self.name = network.name
        self.info = network.info
        self.model_path = network.model_path
        self.nms_settings = nms_settings
        self.cut = cut
        self.max_batch = max_batch
        self._stage_ms: dict[str, float] = {}

    # The stages.

    def preprocess(self, images: Sequence[np.ndarray], bgr: bool) -> np.ndarray:
        return preprocess(images, self.info.preprocess, bgr=bgr)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The network alone; batches larger than it takes are split."""
        limit = self.network.max_batch or len(batch)
        if len(batch) <= limit:
            return self.network.infer(batch)
        parts = [self.network.infer(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def nms(self, outputs: dict[str, np.ndarray] | DetectionBatch) -> DetectionBatch:
        """Raw boxes and scores (``--nms none`` graphs): the project's NMS. A graph's own
        detections: cut to ``max_det`` where it is smaller than the graph's (exact: they come
        best first)."""
        if self.info.raw_outputs and not isinstance(outputs, DetectionBatch):
            return batched_nms(outputs["boxes"], outputs["scores"], self.nms_settings)
        return DetectionBatch.of(outputs).cut(self.cut)

    # The seam: everything runs at submit; collect hands it over.

    def submit(self, frames: Sequence[np.ndarray | DeviceFrame], bgr: bool) -> _Done:
        host = [f for f in frames if not isinstance(f, DeviceFrame)]
        if len(host) < len(frames):
            raise SsdTrtError(
                f"frames in GPU memory are read in place only by the GPU fast path (--backend "
                f"cuda or tensorrt), not by {self.name}; pass numpy arrays to this backend"
            )
        t0 = time.perf_counter()
        batch = self.preprocess(host, bgr)
        t1 = time.perf_counter()
        outputs = self.infer(batch)
        t2 = time.perf_counter()
        found = self.nms(outputs)
        t3 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2)
        return _Done(found, {k: v * 1000 for k, v in zip(HOST_STAGES, times, strict=True)})

    def collect(self, handle: _Done) -> DetectionBatch:
        self._stage_ms = handle.stage_ms
        return handle.batch

    @property
    def stage_ms(self) -> dict[str, float]:
        return self._stage_ms

    def close(self) -> None:
        self.network.close()


@dataclass(frozen=True)
class _Done:
    """A batch run at submit, and its stage times."""

    batch: DetectionBatch
    stage_ms: dict[str, float]
