"""``ssd_trt.Detector``: images in, Detections out, on any backend.

The detector composes the stages: preprocess -> network (a runtime backend) -> NMS (for graphs
that end at raw boxes and scores) -> postprocess. Files come from the artifact store.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from .contract import ModelInfo, check_precision, is_engine
from .detections import Detections
from .errors import SsdTrtError
from .nms import batched_nms
from .postprocess import to_detections
from .precision.cpu import cpu_has_fast_fp16
from .precision.engine import BuildOptions
from .precision.quantize import Flavour
from .precision.trt_compat import load_trt
from .preprocess import preprocess
from .runtime.base import Backend
from .runtime.gpu.backend import FastPathBackend
from .runtime.ort import OnnxRuntimeBackend
from .runtime.select import ORT_DEVICE, candidates, canonical_backend, has_module
from .runtime.tensorrt import TensorRTBackend
from .store import ArtifactStore, Calibration

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ssdlite_mobilenet_v2_coco"


class Detector:
    """Detect objects in BGR (or RGB) uint8 images.

    ``model`` is a registry name (fetched and exported on first use), an exported .onnx or a
    TensorRT engine from ``ssd-trt build``. ``backend`` is ``auto`` (the fastest usable here,
    logged), ``cpu``, ``cuda``, ``tensorrt`` (builds an engine once and caches it) or
    ``onnxruntime-tensorrt``. ``precision`` (fp32, fp16, int8) converts the ONNX first; INT8
    calibrates on ``calib_images`` (a folder, glob or video of real images). An engine runs in
    the precision it was built with. ``max_batch`` bounds the batch of engines built here;
    larger lists are split.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        backend: str = "auto",
        *,
        score_threshold: float = 0.5,
        classes: Collection[int | str] | None = None,
        rgb: bool = False,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        precision: str | None = None,
        calib_images: str | None = None,
        max_batch: int = 8,
        progress: bool | None = None,
    ) -> None:
        if progress is not None:
            warnings.warn(
                "Detector(progress=...) is deprecated and ignored: progress goes to the "
                "'ssd_trt' logger at INFO level (logging.basicConfig(level=logging.INFO))",
                DeprecationWarning,
                stacklevel=2,
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise SsdTrtError(f"score threshold {score_threshold} must be between 0 and 1")
        self.store = ArtifactStore(cache_dir)
        self.calibration = Calibration(images=calib_images)
        self.max_batch = max_batch
        self.threads = threads
        self.backend = self._open(model, backend, precision)
        self.info: ModelInfo = self.backend.info
        self.precision = self.info.precision
        self.score_threshold = score_threshold
        self.rgb = rgb
        self.class_ids = self._class_ids(classes)

    # ------------------------------------------------------------------------------ loading

    def _open(self, model: str | Path, backend: str, precision: str | None) -> Backend:
        if is_engine(Path(model)):
            if canonical_backend(backend) not in ("auto", "tensorrt"):
                raise SsdTrtError(f"{model} is a TensorRT engine; use backend tensorrt or auto")
            engine = TensorRTBackend(Path(model))
            if precision not in (None, engine.precision):
                raise SsdTrtError(
                    f"{model} was built for {engine.precision}, not {precision}; build an engine "
                    "for that precision or pass the .onnx"
                )
            return engine
        precision = check_precision(precision or "fp32")
        order = candidates(backend)
        for i, name in enumerate(order):
            try:
                chosen = self._open_onnx(model, name, precision)
            except SsdTrtError as exc:
                if i + 1 == len(order):
                    raise
                log.warning("backend %s unusable here (%s); trying %s", name, exc, order[i + 1])
                continue
            log.info("backend %s -> %s", backend, chosen.name)
            return chosen
        raise AssertionError("candidates() is never empty")

    def _open_onnx(self, model: str | Path, name: str, precision: str) -> Backend:
        if name == "cuda":  # NMS runs on the GPU after the network: the --nms none export
            onnx = self.store.onnx(model, nms="none")
            if precision == "fp16":  # the fast path converts the network itself
                return FastPathBackend(onnx, fp16=True, max_batch=max(self.max_batch, 64))
            return FastPathBackend(
                self._prepared(onnx, precision), max_batch=max(self.max_batch, 64)
            )
        if name == "cpu" and precision == "fp16" and not cpu_has_fast_fp16():
            log.warning(
                "FP16 is for GPUs: ONNX Runtime's CPU kernels have no fast float16 path on this "
                "CPU, so FP16 runs slower than FP32 here; use fp32 or int8 on the CPU"
            )
        if name == "tensorrt":
            return self._open_tensorrt(model, precision)
        prepared = self._prepared(self.store.onnx(model), precision, flavour_for(name))
        return OnnxRuntimeBackend(prepared, ORT_DEVICE[name], self.threads)

    def _open_tensorrt(self, model: str | Path, precision: str) -> Backend:
        """With the fast path's kernels (cuda.core) here: an engine of the ``--nms none``
        network between the GPU resize and NMS kernels. Without: the engine of the default
        export (TensorRT's NMS layer), host arrays in and out."""
        api = load_trt()
        options = BuildOptions(precision=precision, max_batch=self.max_batch)
        if has_module("cuda.core"):
            raw = self.store.onnx(model, nms="none")
            if ModelInfo.from_onnx(raw).raw_outputs:
                raw = self._prepared(raw, precision)
                engine = self.store.engine(raw, options, api)
                return FastPathBackend(raw, max_batch=self.max_batch, engine=engine)
        prepared = self._prepared(self.store.onnx(model), precision)
        return TensorRTBackend(self.store.engine(prepared, options, api))

    def _prepared(self, onnx: Path, precision: str, flavour: Flavour = "tensorrt") -> Path:
        return self.store.prepared(onnx, precision, self.calibration, flavour=flavour)

    def _class_ids(self, classes: Collection[int | str] | None) -> set[int] | None:
        if classes is None:
            return None
        labels = self.info.labels
        by_name = {name: i for i, name in labels.items()}
        ids = set()
        for c in classes:
            i = by_name.get(c) if isinstance(c, str) and not c.isdigit() else int(c)
            if i not in labels:
                raise SsdTrtError(f"unknown class {c!r}; {_class_choices(labels)}")
            ids.add(i)
        return ids

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def model_path(self) -> Path | None:
        return getattr(self.backend, "model_path", None)

    # ----------------------------------------------------------------------------- running

    @overload
    def detect(self, images: np.ndarray) -> Detections: ...
    @overload
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

    def detect(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """One image -> Detections; a list of images -> a list, run as one batch."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else _image_list(images)
        if not batch:
            return []
        result, _ = self.detect_timed(batch)
        return result[0] if single else result

    def detect_timed(
        self, images: Sequence[np.ndarray]
    ) -> tuple[list[Detections], dict[str, float]]:
        """A batch -> its Detections and the milliseconds of each stage (GPU stages from CUDA
        events where the backend does them on the GPU)."""
        t0 = time.perf_counter()
        if self.backend.takes_frames:  # it checks the frames itself
            outputs = self.backend.detect_frames(images, bgr=not self.rgb)
            stages = dict(self.backend.last_stage_ms)
            t3 = time.perf_counter()
        else:
            batch = self.preprocess(images)
            t1 = time.perf_counter()
            outputs = self.infer(batch)
            t2 = time.perf_counter()
            outputs = self.nms(outputs)
            t3 = time.perf_counter()
            stages = {"preprocess": t1 - t0, "inference": t2 - t1, "nms": t3 - t2}
            stages = {k: v * 1000 for k, v in stages.items()}
        result = self.postprocess(outputs, [im.shape[:2] for im in images])
        stages["postprocess"] = (time.perf_counter() - t3) * 1000
        return result, stages

    def warm_up(self, max_batch: int) -> None:
        """Prepare the backend for batches of up to ``max_batch`` images before a run."""
        self.backend.warm_up(max_batch)

    @property
    def supports_submit(self) -> bool:
        """Whether submit() returns before the batch is done (the GPU fast path); elsewhere
        submit() runs the batch at once and collect() only hands the result over."""
        return self.backend.supports_submit

    def submit(self, images: Sequence[np.ndarray]) -> PendingBatch:
        """Start a batch; collect() gives its Detections and stage times. Where the backend
        queues work (``supports_submit``), the caller can prepare the next batch meanwhile; at
        most two batches may be in flight. Submit and collect from one thread."""
        limit = self.backend.submit_limit
        if not self.backend.supports_submit or (limit is not None and len(images) > limit):
            return PendingBatch([], result=self.detect_timed(images))
        sizes = [im.shape[:2] for im in images]
        return PendingBatch(sizes, handle=self.backend.submit(images, bgr=not self.rgb))

    def collect(self, pending: PendingBatch) -> tuple[list[Detections], dict[str, float]]:
        """The Detections and stage milliseconds of a submitted batch (waits for it)."""
        if pending.result is None:
            outputs = self.backend.collect(pending.handle)
            stages = dict(self.backend.last_stage_ms)
            t0 = time.perf_counter()
            detections = self.postprocess(outputs, pending.sizes)
            stages["postprocess"] = (time.perf_counter() - t0) * 1000
            pending.result, pending.handle = (detections, stages), None
        return pending.result

    # The stages, separately, for benchmarks and callers that time or overlap them.

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(images, self.info.preprocess, bgr=not self.rgb)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The network alone; batches larger than the backend takes are split."""
        limit = self.backend.max_batch or len(batch)
        if len(batch) <= limit:
            return self.backend.infer(batch)
        parts = [self.backend.infer(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def nms(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graphs exported with ``--nms none`` end at boxes and scores: run the project's NMS."""
        if not self.info.raw_outputs:
            return outputs
        return batched_nms(outputs["boxes"], outputs["scores"], self.info.nms_settings)

    def postprocess(
        self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        return to_detections(
            outputs, sizes, self.info.labels, min_score=self.score_threshold, classes=self.class_ids
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PendingBatch:
    """A batch from Detector.submit: a backend handle until collected, then the result."""

    sizes: list[tuple[int, int]]
    handle: Any = None
    result: tuple[list[Detections], dict[str, float]] | None = None


def flavour_for(backend: str) -> Flavour:
    """The INT8 form a concrete backend runs fastest: ONNX Runtime's CPU kernels want their own
    (QLinearConv-ready) form; TensorRT and ONNX Runtime's CUDA/TensorRT providers the Q/DQ one.
    ``auto`` resolves to a concrete backend first, so it never gets a form slower there."""
    return "cpu" if backend == "cpu" else "tensorrt"


def _class_choices(labels: dict[int, str]) -> str:
    """The valid ``classes`` of a model, in one line."""
    if not labels:
        return "this model has no labels"
    lo, hi = min(labels), max(labels)
    ids = f"id {lo}" if lo == hi else f"ids {lo}-{hi}"
    names = [n for n in labels.values() if not n.startswith("class_")]  # not generic fill-ins
    return f"this model's classes are {ids}" + (f" or {', '.join(names)}" if names else "")


def _image_list(images: object) -> list[np.ndarray]:
    """A list of HxWx3 uint8 arrays, or one clear error (cv2.imread gives None for a bad path)."""
    if images is None:
        raise SsdTrtError(
            "got None instead of an image; cv2.imread returns None when it cannot read a file: "
            "check the path"
        )
    if not isinstance(images, Sequence | np.ndarray):
        raise SsdTrtError(
            f"expected an HxWx3 uint8 image or a list of them, got {type(images).__name__}"
        )
    batch = list(images)
    for i, image in enumerate(batch):
        if not isinstance(image, np.ndarray):
            raise SsdTrtError(
                f"image {i} is {type(image).__name__}, not an array; cv2.imread returns None "
                "when it cannot read a file: check the path"
            )
    return batch
