"""The ``cuda`` backend: the GPU fast path behind the seam, natively.

It takes uint8 frames, not a preprocessed batch: resizing, the network and NMS all run on the
GPU (fastpath.py), and only the top-K rows come back. There are no host stages to call alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...contract import ModelInfo
from ...detection_batch import DetectionBatch
from ...device_frames import DeviceFrame
from ...errors import SsdTrtError
from ...nms import NmsSettings
from ..base import FrameDetector
from ..ort import provider_missing
from .fastpath import FastPathHandle, GpuFastPath
from .options import FastPathOptions


def graph_sizes(max_batch: int) -> list[int]:
    """The fast path's network batch sizes for ``max_batch``: 1, then one every 8 frames (each
    is a network and a CUDA graph, built once: seconds). A batch runs padded up to the next
    size, and padding is GPU work thrown away: with sizes 1, 8, 32, 64 a batch of 33 ran as 64,
    and at 128 camera streams in 4 processes (H100, Dec 2026) batches of 25-30 frames held the
    GPU 94% busy."""
    return sorted({1, *range(8, max_batch, 8), max_batch})


class FastPathBackend(FrameDetector):
    name = "cuda"
    queues = True

    def __init__(
        self,
        model: Path,
        fp16: bool = False,
        max_batch: int = 32,
        engine: Path | None = None,
        nms: NmsSettings | None = None,
    ) -> None:
        """``model``: the ``--nms none`` ONNX (metadata, and the network for ONNX Runtime);
        ``engine``: a TensorRT engine of that network, which then runs it instead; ``nms``:
        the GPU NMS's settings (default: the model's, from its metadata); ``max_batch``: the
        largest network batch (larger batches are split)."""
        self.model_path = engine or model
        if engine is not None:
            self.name = "tensorrt"
        else:
            why = provider_missing("CUDAExecutionProvider", "cuda")
            if why is not None:
                raise SsdTrtError(why)
        self.info = ModelInfo.from_onnx(model)
        if not self.info.raw_outputs:
            raise SsdTrtError(
                f"{model} has NMS in the graph; the cuda backend runs NMS on the GPU itself: "
                "pass the model name, or an ONNX exported with --nms none"
            )
        self.max_batch = max_batch
        self.nms_settings = nms or self.info.nms_settings
        options = FastPathOptions(fp16=fp16, batch_sizes=tuple(graph_sizes(max_batch)), nms=nms)
        self.fast = GpuFastPath(model, options, engine=engine, info=self.info)
        self._stage_ms: dict[str, float] = {}

    def submit(
        self, frames: Sequence[np.ndarray | DeviceFrame], bgr: bool
    ) -> FastPathHandle | tuple[DetectionBatch, dict[str, float]]:
        is_nv12 = [isinstance(f, DeviceFrame) and f.layout == "nv12" for f in frames]
        if 0 < sum(is_nv12) < len(frames):
            # NV12 surfaces and other frames (sources decoded on the GPU and on the CPU in one
            # engine) use different kernels: a batch each, now, rejoined in order.
            nv12 = [i for i, yes in enumerate(is_nv12) if yes]
            rest = [i for i, yes in enumerate(is_nv12) if not yes]
            parts = [self.fast.run([frames[i] for i in part], bgr=bgr) for part in (nv12, rest)]
            order = np.argsort(np.asarray(nv12 + rest))
            return DetectionBatch.concat(parts).take(order), dict(self.fast.last_stage_ms)
        if len(frames) <= self.fast.batch_sizes[-1]:
            return self.fast.submit(frames, bgr=bgr)
        # More than one network batch: run them now (two in flight), handed over by collect.
        found = self.fast.run(frames, bgr=bgr)
        return found, dict(self.fast.last_stage_ms)

    def collect(
        self, handle: FastPathHandle | tuple[DetectionBatch, dict[str, float]]
    ) -> DetectionBatch:
        if isinstance(handle, tuple):
            found, self._stage_ms = handle
            return found
        found = self.fast.collect(handle)
        self._stage_ms = dict(self.fast.last_stage_ms)
        return found

    @property
    def stage_ms(self) -> dict[str, float]:
        return self._stage_ms

    def warm_up(self, max_batch: int) -> None:
        self.fast.warm_up(max_batch)

    def close(self) -> None:
        if "fast" in self.__dict__:
            self.fast.close()
