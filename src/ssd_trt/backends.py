"""Inference backends behind one small interface: preprocessed batch in, the graph's outputs out.

Every backend takes ``images`` float32 [N, 3, H, W] and returns the exported graph's outputs by
name. Graphs exported with ``--nms none`` get the project's NMS here, so callers always see
num_detections / detection_boxes / detection_scores / detection_classes.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SsdTrtError, require
from .export import RAW_OUTPUTS
from .nms import NmsSettings, batched_nms
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the exported ONNX's ``ssd_trt.*`` metadata says about the model."""

    preprocess: PreprocessConfig
    labels: dict[int, str]
    nms: str
    nms_settings: NmsSettings
    name: str = ""

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> ModelInfo:
        try:
            height, width = json.loads(meta["ssd_trt.input_size"])
            return cls(
                preprocess=PreprocessConfig(
                    height=int(height),
                    width=int(width),
                    scale=float(meta["ssd_trt.input_scale"]),
                    offset=float(meta["ssd_trt.input_offset"]),
                ),
                labels={int(k): v for k, v in json.loads(meta["ssd_trt.labels"]).items()},
                nms=meta.get("ssd_trt.nms", "onnx"),
                nms_settings=NmsSettings(**json.loads(meta["ssd_trt.nms_settings"])),
                name=meta.get("ssd_trt.model", ""),
            )
        except (KeyError, ValueError, TypeError):
            raise SsdTrtError(
                f"{where} has no ssd_trt metadata; export it with 'ssd-trt export' first"
            ) from None


def detection_outputs(out: dict[str, np.ndarray], info: ModelInfo) -> dict[str, np.ndarray]:
    """Graphs exported with --nms none end at boxes and scores: run the project's NMS."""
    if set(out) == set(RAW_OUTPUTS):
        return batched_nms(out["boxes"], out["scores"], info.nms_settings)
    return out


class Backend(ABC):
    """A loaded model that runs preprocessed batches."""

    name: str = "backend"
    info: ModelInfo

    @abstractmethod
    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [N, 3, H, W] -> the four detection outputs."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release sessions, buffers and streams."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ort_providers_available() -> list[str]:
    ort = require("onnxruntime", "ort")
    return list(ort.get_available_providers())


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CPU by default; CUDA or TensorRT execution providers when installed."""

    PROVIDERS = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    }

    def __init__(self, model: Path, device: str = "cpu", threads: int | None = None) -> None:
        ort = require("onnxruntime", "ort")
        if device not in self.PROVIDERS:
            raise SsdTrtError(f"unknown ONNX Runtime device {device!r}; use cpu, cuda or tensorrt")
        wanted = self.PROVIDERS[device]
        if wanted[0] not in ort.get_available_providers():
            raise SsdTrtError(
                f"ONNX Runtime here has no {wanted[0]}; install onnxruntime-gpu "
                "(pip install 'ssd-trt[gpu]') or use the cpu backend"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model), options, providers=wanted)
        except Exception as exc:
            raise SsdTrtError(
                f"ONNX Runtime cannot load {model}: {str(exc).splitlines()[0][:200]}"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(model))
        # onnxruntime-gpu lists its TensorRT provider even without TensorRT installed and then
        # falls back to CUDA: name the backend after the provider the session really uses.
        used = self.session.get_providers()[0]
        self.name = "onnxruntime-" + {
            "TensorrtExecutionProvider": "tensorrt",
            "CUDAExecutionProvider": "cuda",
        }.get(used, "cpu")
        self.outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(zip(self.outputs, self.session.run(None, {"images": images}), strict=True))
        return detection_outputs(out, self.info)

    def close(self) -> None:
        self.__dict__.pop("session", None)


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "cpu", "cuda", "onnxruntime-tensorrt", "tensorrt")


def _tensorrt_usable() -> bool:
    """Full TensorRT and a GPU. TensorRT-RTX is left to explicit use: it has no NMS layer for the
    default export and does not run on every GPU (not on Hopper)."""
    from .trt_compat import load_trt, local_gpu

    try:
        api = load_trt()
    except SsdTrtError:
        return False
    return api.flavour == "tensorrt" and local_gpu() is not None


def select_backend(
    model: Path,
    backend: str = "auto",
    threads: int | None = None,
    *,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Backend:
    """Open ``model`` (an .onnx, or an engine) with the named backend.

    ``auto`` picks TensorRT when TensorRT and a GPU are present, else ONNX Runtime's TensorRT
    or CUDA execution provider when onnxruntime-gpu is installed, else the CPU; it logs its pick.
    """
    if backend not in BACKENDS:
        raise SsdTrtError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if model.suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise SsdTrtError(f"{model} is a TensorRT engine; use backend tensorrt or auto")
        from .trt_runtime import TensorRTBackend

        return TensorRTBackend(model)
    chosen: Backend | None = None
    if backend == "tensorrt" or (backend == "auto" and _tensorrt_usable()):
        from .fetch import default_cache_dir
        from .trt_runtime import engine_for_onnx

        try:
            chosen = engine_for_onnx(
                model, precision, cache_dir or default_cache_dir(), progress=progress
            )
        except SsdTrtError as exc:
            if backend != "auto":
                raise
            log.warning("TensorRT unusable here (%s); falling back to ONNX Runtime", exc)
    if chosen is None:
        device = {"cpu": "cpu", "cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}.get(backend)
        if device is None:  # auto: the best execution provider onnxruntime offers here
            available = ort_providers_available()
            device = next(
                (
                    d
                    for d, p in (
                        ("tensorrt", "TensorrtExecutionProvider"),
                        ("cuda", "CUDAExecutionProvider"),
                    )
                    if p in available
                ),
                "cpu",
            )
        chosen = OnnxRuntimeBackend(model, device, threads)
    log.info("backend %s -> %s", backend, chosen.name)
    return chosen
