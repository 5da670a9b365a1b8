"""The ``cuda`` backend: the GPU fast path behind the runtime interface.

Unlike the other backends it takes uint8 frames, not a preprocessed batch: resizing, the network
and NMS all run on the GPU (fastpath.py), and only the top-K rows come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...contract import ModelInfo
from ...errors import SsdTrtError
from ...nms import NmsSettings
from ..base import Backend
from ..ort import available_providers
from .fastpath import FastPathHandle, GpuFastPath


class FastPathBackend(Backend):
    name = "cuda"
    takes_frames = True
    supports_submit = True

    def __init__(
        self,
        model: Path,
        fp16: bool = False,
        max_batch: int = 64,
        engine: Path | None = None,
        nms: NmsSettings | None = None,
    ) -> None:
        """``model``: the ``--nms none`` ONNX (metadata, and the network for ONNX Runtime);
        ``engine``: a TensorRT engine of that network, which then runs it instead; ``nms``:
        the GPU NMS's settings (default: the model's, from its metadata)."""
        self.model_path = engine or model
        if engine is not None:
            self.name = "tensorrt"
        elif "CUDAExecutionProvider" not in available_providers():
            raise SsdTrtError(
                "ONNX Runtime here has no CUDAExecutionProvider (no onnxruntime-gpu); the cuda "
                "backend needs an NVIDIA GPU and: pip install 'ssd-trt[gpu]'"
            )
        self.info = ModelInfo.from_onnx(model)
        if not self.info.raw_outputs:
            raise SsdTrtError(
                f"{model} has NMS in the graph; the cuda backend runs NMS on the GPU itself: "
                "pass the model name, or an ONNX exported with --nms none"
            )
        # Few sizes: each is a network and CUDA graph built once (seconds); smaller batches
        # are padded up to the next one.
        sizes = [b for b in (1, 8, 32) if b < max_batch] + [max_batch]
        self.fast = GpuFastPath(
            model, fp16=fp16, batch_sizes=sizes, engine=engine, info=self.info, nms=nms
        )

    @property
    def last_stage_ms(self) -> dict[str, float]:
        return self.fast.last_stage_ms

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise SsdTrtError("the cuda backend takes uint8 frames: use Detector.detect")

    def detect_frames(self, frames: Sequence[np.ndarray], bgr: bool) -> dict[str, np.ndarray]:
        return self.fast.run(frames, bgr=bgr)

    def warm_up(self, max_batch: int) -> None:
        self.fast.warm_up(max_batch)

    def submit(self, frames: Sequence[np.ndarray], bgr: bool) -> FastPathHandle:
        return self.fast.submit(frames, bgr=bgr)

    def collect(self, handle: FastPathHandle) -> dict[str, np.ndarray]:
        return self.fast.collect(handle)

    @property
    def submit_limit(self) -> int:
        return self.fast.batch_sizes[-1]

    def close(self) -> None:
        if "fast" in self.__dict__:
            self.fast.close()
