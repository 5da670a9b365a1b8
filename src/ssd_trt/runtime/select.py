"""Backend names and the ``auto`` choice.

One scheme: the name says what runs the network. ``cpu`` and ``cuda`` are ONNX Runtime on the
CPU and on an NVIDIA GPU, ``tensorrt`` is a TensorRT engine, and ``onnxruntime-tensorrt`` is
ONNX Runtime's TensorRT execution provider. ``onnxruntime-cpu`` / ``onnxruntime-cuda`` (the names
the backends reported before) are accepted as the same as ``cpu`` / ``cuda``.
"""

from __future__ import annotations

import logging

from ..errors import SsdTrtError
from ..precision.trt_compat import load_trt, local_gpu
from .ort import available_providers

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "onnxruntime-tensorrt")
ALIASES = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}
BACKEND_HELP = (
    "auto (the fastest usable here), cpu (ONNX Runtime), cuda (ONNX Runtime on an NVIDIA GPU), "
    "tensorrt (a TensorRT engine, built once and cached) or onnxruntime-tensorrt (ONNX Runtime's "
    "TensorRT provider)"
)
# ONNX Runtime device per backend name.
ORT_DEVICE = {"cpu": "cpu", "cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}


def canonical_backend(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise SsdTrtError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name


def tensorrt_usable() -> str | None:
    """None when full TensorRT and a GPU are here, else why not. TensorRT-RTX is left to
    explicit use: it has no NMS layer for the default export and does not run on Hopper."""
    try:
        api = load_trt()
    except SsdTrtError as exc:
        return str(exc)
    if api.flavour != "tensorrt":
        return f"only {api.name} is installed, which auto does not pick"
    if local_gpu() is None:
        return "no CUDA GPU (or no cuda-python) here"
    return None


def candidates(requested: str) -> list[str]:
    """The backends to try, in order: the one asked for, or for ``auto`` the fastest first."""
    requested = canonical_backend(requested)
    if requested != "auto":
        return [requested]
    order = []
    why = tensorrt_usable()
    if why is None:
        order.append("tensorrt")
    else:
        log.debug("auto: not tensorrt (%s)", why)
    if "CUDAExecutionProvider" in available_providers():
        order.append("cuda")
    order.append("cpu")
    return order
