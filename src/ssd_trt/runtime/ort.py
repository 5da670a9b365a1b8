"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers of onnxruntime-gpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import INPUT_NAME, ModelInfo
from ..errors import SsdTrtError, first_line, require
from .base import Network

# Execution providers per device, best first; ONNX Runtime falls back along the list.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# The backend name (runtime.select) of the provider a session really uses.
_NAME_OF_PROVIDER = {
    "TensorrtExecutionProvider": "onnxruntime-tensorrt",
    "CUDAExecutionProvider": "onnxruntime-cuda",
    "CPUExecutionProvider": "cpu",
}


def available_providers() -> list[str]:
    return list(require("onnxruntime", "ort").get_available_providers())


def provider_missing(provider: str, backend: str) -> str | None:
    """Why ONNX Runtime here cannot run ``backend`` for want of ``provider``, or None: the one
    "is the CUDA provider here" check."""
    if provider in available_providers():
        return None
    return (
        f"ONNX Runtime here has no {provider} (no onnxruntime-gpu); the {backend} backend "
        "needs an NVIDIA GPU and: pip install 'ssd-trt[gpu]'"
    )


class OnnxRuntimeBackend(Network):
    """Runs an exported (or FP16/INT8-converted) ONNX in ONNX Runtime."""

    def __init__(self, model: Path, device: str = "cpu", threads: int | None = None) -> None:
        ort = require("onnxruntime", "ort")
        if device not in PROVIDERS:
            raise SsdTrtError(f"unknown ONNX Runtime device {device!r}; use cpu, cuda or tensorrt")
        wanted = PROVIDERS[device]
        why = provider_missing(wanted[0], _NAME_OF_PROVIDER[wanted[0]])
        if why is not None:
            raise SsdTrtError(why)
        self.model_path = model
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model), options, providers=wanted)
        except Exception as exc:
            raise SsdTrtError(f"ONNX Runtime cannot load {model}: {first_line(exc, 200)}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(model))
        # onnxruntime-gpu lists its TensorRT provider even without TensorRT installed and then
        # falls back to CUDA: name the backend after the provider the session really uses.
        used = self.session.get_providers()[0]
        self.name = _NAME_OF_PROVIDER.get(used, "cpu")
        self.outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {INPUT_NAME: images})
        return dict(zip(self.outputs, values, strict=True))

    def close(self) -> None:
        self.__dict__.pop("session", None)
