"""Backend names and the ``auto`` choice.

One scheme, by where the work runs: ``cpu`` is ONNX Runtime on the CPU; ``cuda`` is the GPU
fast path (resize, network and NMS on an NVIDIA GPU; the network in ONNX Runtime's CUDA
provider); ``tensorrt`` is a TensorRT engine. Two ONNX Runtime providers can be asked for by name:
``onnxruntime-cuda`` (the plain CUDA provider, host arrays in and out, NMS in the graph) and
``onnxruntime-tensorrt``. ``onnxruntime-cpu``, the name ``cpu`` reported before, still works.
"""

from __future__ import annotations

import importlib.util
import logging

from ..errors import SsdTrtError
from ..precision.trt_compat import load_trt, local_gpu
from .ort import available_providers

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt")
ALIASES = {"onnxruntime-cpu": "cpu"}
BACKEND_HELP = (
    "auto (the fastest usable here), cpu (ONNX Runtime), cuda (the GPU fast path), tensorrt (a "
    "TensorRT engine, built once and cached), onnxruntime-cuda or onnxruntime-tensorrt (ONNX "
    "Runtime's GPU providers, NMS in the graph)"
)
# ONNX Runtime device per backend name.
ORT_DEVICE = {"cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}


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


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package is missing
        return False


def unusable(name: str) -> str | None:
    """Why the backend ``name`` cannot run here, in one line, or None. Cheap (no model is
    loaded), so a backend asked for by name fails before any export or conversion."""
    name = canonical_backend(name)
    provider = {
        "cuda": "CUDAExecutionProvider",
        "onnxruntime-cuda": "CUDAExecutionProvider",
        "onnxruntime-tensorrt": "TensorrtExecutionProvider",
    }.get(name)
    if provider is not None and provider not in available_providers():
        return (
            f"ONNX Runtime here has no {provider} (no onnxruntime-gpu); the {name} backend "
            "needs an NVIDIA GPU and: pip install 'ssd-trt[gpu]'"
        )
    if name == "cuda" and not has_module("cuda.core"):
        return "the cuda backend needs cuda.core and an NVIDIA GPU: pip install 'ssd-trt[gpu]'"
    if name == "tensorrt":
        try:
            load_trt()
        except SsdTrtError as exc:
            return str(exc)
        if local_gpu() is None:
            return (
                "the tensorrt backend needs a CUDA GPU (and cuda-python) here; use backend cpu, "
                "or build ahead of time with 'ssd-trt build --trt tensorrt-rtx "
                "--compute-capability SM'"
            )
    return None


def candidates(requested: str) -> list[str]:
    """The backends to try, in order: the one asked for (an error where it cannot run here),
    or for ``auto`` the fastest first."""
    requested = canonical_backend(requested)
    if requested != "auto":
        why = unusable(requested)
        if why is not None:
            raise SsdTrtError(why)
        return [requested]
    order = []
    why = tensorrt_usable()
    if why is None:
        order.append("tensorrt")
    else:
        log.debug("auto: not tensorrt (%s)", why)
    if "CUDAExecutionProvider" in available_providers():
        if has_module("cuda.core"):
            order.append("cuda")
        order.append("onnxruntime-cuda")
    order.append("cpu")
    return order
