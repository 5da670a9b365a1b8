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

from .contract import ONNX_SUFFIX, ModelInfo, check_precision, is_engine
from .detections import Detections
from .errors import SsdTrtError
from .model.registry import MODELS
from .nms import NmsChange, NmsSettings, batched_nms
from .postprocess import to_detections
from .precision.cpu import cpu_has_fast_fp16
from .precision.engine import BuildOptions
from .precision.quantize import Flavour
from .precision.trt_compat import load_trt
from .preprocess import as_images, preprocess
from .runtime.base import Backend
from .runtime.gpu.backend import FastPathBackend
from .runtime.ort import OnnxRuntimeBackend
from .runtime.select import ORT_DEVICE, candidates, canonical_backend, has_module
from .runtime.tensorrt import TensorRTBackend
from .store import ArtifactStore, Calibration

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ssdlite_mobilenet_v2_coco"

# What detect() takes as one image (see preprocess.as_images): a numpy array, a file path or a
# PIL image (Any: PIL is not a dependency).
Image = np.ndarray | str | Path | Any


class Detector:
    """Detect objects in images: ``det.detect(image)`` or ``det(image)``.

    ``model`` is a registry name (fetched and exported on first use), an exported .onnx or a
    TensorRT engine from ``ssd-trt build``. ``backend`` is ``auto`` (the fastest usable here,
    logged), ``cpu``, ``cuda``, ``tensorrt`` (builds an engine once and caches it) or
    ``onnxruntime-tensorrt``. ``precision`` (fp32, fp16, int8) converts the ONNX first; INT8
    calibrates on ``calib_images`` (a folder, glob or video of real images). An engine runs in
    the precision it was built with. ``max_batch`` bounds the batch of engines built here;
    larger lists are split.

    Images: a numpy uint8 array is HxWx3 BGR as OpenCV gives it (RGB with ``rgb=True``), HxW or
    HxWx1 grey (repeated to 3 channels) or HxWx4 BGRA (alpha dropped); a str or Path is an image
    file, read with OpenCV; a PIL image is RGB and converted (any mode). A list or tuple of
    those (or an NxHxWxC array) is one batch and gives a list of Detections. Anything else is
    one ``SsdTrtError`` naming the image and what was wrong.

    NMS: ``iou`` (IoU threshold), ``max_det`` (detections per image) and ``max_per_class``
    override the model's own settings (None keeps them; ``nms_settings`` holds the ones in
    use). Where NMS runs after the network (``--nms none`` exports, the cuda backend) any
    value applies. Where it is in the graph, a smaller ``max_det`` is cut from its output
    exactly; another ``iou`` or ``max_per_class``, or a larger ``max_det``, needs a re-export:
    done once into the cache for a registry name, refused with one clear error for a given
    .onnx or engine.
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
        iou: float | None = None,
        max_det: int | None = None,
        max_per_class: int | None = None,
    ) -> None:
        self._closed = True  # until a backend is open: close() has nothing to release
        if progress is not None:
            warnings.warn(
                "Detector(progress=...) is deprecated and ignored: progress goes to the "
                "'ssd_trt' logger at INFO level (logging.basicConfig(level=logging.INFO))",
                DeprecationWarning,
                stacklevel=2,
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise SsdTrtError(f"score threshold {score_threshold} must be between 0 and 1")
        self.nms_change = _nms_change(iou, max_det, max_per_class)
        self.store = ArtifactStore(cache_dir)
        self.calibration = Calibration(images=calib_images)
        self.max_batch = max_batch
        self.threads = threads
        self.backend = self._open(model, backend, precision)
        self._closed = False
        self.info: ModelInfo = self.backend.info
        try:
            self.nms_settings, self._cut = self._nms_plan(self.info, str(model))
        except SsdTrtError:
            self.close()
            raise
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
        if self.nms_change != NmsChange() and Path(model).suffix == ONNX_SUFFIX:
            self._with_nms(model, self.store.onnx(model))  # settings it cannot take: refused now
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
            nms = self._gpu_nms(onnx)
            if precision == "fp16":  # the fast path converts the network itself
                return FastPathBackend(onnx, fp16=True, max_batch=max(self.max_batch, 64), nms=nms)
            return FastPathBackend(
                self._prepared(onnx, precision), max_batch=max(self.max_batch, 64), nms=nms
            )
        if name == "cpu" and precision == "fp16" and not cpu_has_fast_fp16():
            log.warning(
                "FP16 is for GPUs: ONNX Runtime's CPU kernels have no fast float16 path on this "
                "CPU, so FP16 runs slower than FP32 here; use fp32 or int8 on the CPU"
            )
        if name == "tensorrt":
            return self._open_tensorrt(model, precision)
        onnx = self._with_nms(model, self.store.onnx(model))
        prepared = self._prepared(onnx, precision, flavour_for(name))
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
                nms = self._gpu_nms(raw)
                raw = self._prepared(raw, precision)
                engine = self.store.engine(raw, options, api)
                return FastPathBackend(raw, max_batch=self.max_batch, engine=engine, nms=nms)
        prepared = self._prepared(self._with_nms(model, self.store.onnx(model)), precision)
        return TensorRTBackend(self.store.engine(prepared, options, api))

    def _prepared(self, onnx: Path, precision: str, flavour: Flavour = "tensorrt") -> Path:
        return self.store.prepared(onnx, precision, self.calibration, flavour=flavour)

    # ------------------------------------------------------------------- NMS at detect time

    def _gpu_nms(self, raw: Path) -> NmsSettings | None:
        """The fast path's NMS settings: the model's own with this Detector's changes."""
        if self.nms_change == NmsChange():
            return None
        return self.nms_change.applied_to(ModelInfo.from_onnx(raw).nms_settings)

    def _with_nms(self, model: str | Path, onnx: Path) -> Path:
        """The export to run for the asked NMS settings, checked before any long work: ``onnx``
        where they need no new NMS; for a registry name, its export with them (made once into
        the cache); for a given .onnx, one clear error (from _nms_plan)."""
        if self.nms_change == NmsChange():
            return onnx
        info = ModelInfo.from_onnx(onnx)
        if info.raw_outputs or not self.nms_change.not_exact_after(info.nms_settings):
            return onnx
        if Path(model).suffix == ONNX_SUFFIX or str(model) not in MODELS:
            self._nms_plan(info, str(model))  # raises
        settings = self.nms_change.applied_to(info.nms_settings)
        log.info(
            "NMS in %s's graph differs from the settings asked for; using its export with them",
            model,
        )
        return self.store.onnx(model, settings=settings)

    def _nms_plan(self, info: ModelInfo, where: str) -> tuple[NmsSettings, int | None]:
        """The NMS settings in use, and the top-K to cut the graph's detections to (None: as
        they are); one clear error where the graph's NMS cannot give the asked settings."""
        graph = info.nms_settings
        wanted = self.nms_change.applied_to(graph)
        if info.raw_outputs:
            return wanted, None
        redo = self.nms_change.not_exact_after(graph)
        if redo:
            asked = ", ".join(f"{_ARG[f]}={getattr(wanted, f)}" for f in redo)
            has = ", ".join(f"{_ARG[f]} {getattr(graph, f)}" for f in redo)
            flags = " ".join(f"{_EXPORT_FLAG[f]} {getattr(wanted, f)}" for f in redo)
            then = "; then build the engine again" if is_engine(Path(where)) else ""
            raise SsdTrtError(
                f"{where} has NMS in its graph ({has}); {asked} needs a re-export: "
                f"'ssd-trt export MODEL {flags}'{then} (or export with '--nms none', which "
                "takes any NMS setting at detect time)"
            )
        return wanted, wanted.max_total if wanted.max_total < graph.max_total else None

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
    def detect(self, images: Image) -> Detections: ...
    @overload
    def detect(self, images: Sequence[Image]) -> list[Detections]: ...

    def detect(self, images: Image | Sequence[Image]) -> Detections | list[Detections]:
        """One image -> Detections; a list of images -> a list, run as one batch. Images are
        numpy arrays (BGR uint8 like OpenCV's, grey, BGRA), PIL images or file paths (see the
        class docstring)."""
        self._check_open()
        batch, single = as_images(images, rgb=self.rgb)
        if not batch:
            return []
        result, _ = self._detect_timed(batch)
        return result[0] if single else result

    @overload
    def __call__(self, images: Image) -> Detections: ...
    @overload
    def __call__(self, images: Sequence[Image]) -> list[Detections]: ...

    def __call__(self, images: Image | Sequence[Image]) -> Detections | list[Detections]:
        """``det(images)`` is ``det.detect(images)``."""
        return self.detect(images)

    def detect_timed(self, images: Sequence[Image]) -> tuple[list[Detections], dict[str, float]]:
        """A batch -> its Detections and the milliseconds of each stage (GPU stages from CUDA
        events where the backend does them on the GPU)."""
        self._check_open()
        return self._detect_timed(as_images(list(images), rgb=self.rgb)[0])

    def _detect_timed(self, images: list[np.ndarray]) -> tuple[list[Detections], dict[str, float]]:
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
        self._check_open()
        self.backend.warm_up(max_batch)

    @property
    def supports_submit(self) -> bool:
        """Whether submit() returns before the batch is done (the GPU fast path); elsewhere
        submit() runs the batch at once and collect() only hands the result over."""
        return self.backend.supports_submit

    def submit(self, images: Sequence[Image]) -> PendingBatch:
        """Start a batch; collect() gives its Detections and stage times. Where the backend
        queues work (``supports_submit``), the caller can prepare the next batch meanwhile; at
        most two batches may be in flight. Submit and collect from one thread."""
        self._check_open()
        images = as_images(list(images), rgb=self.rgb)[0]
        limit = self.backend.submit_limit
        if not self.backend.supports_submit or (limit is not None and len(images) > limit):
            return PendingBatch([], result=self._detect_timed(images))
        sizes = [im.shape[:2] for im in images]
        return PendingBatch(sizes, handle=self.backend.submit(images, bgr=not self.rgb))

    def collect(self, pending: PendingBatch) -> tuple[list[Detections], dict[str, float]]:
        """The Detections and stage milliseconds of a submitted batch (waits for it)."""
        if pending.result is None:
            self._check_open()
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
        self._check_open()
        limit = self.backend.max_batch or len(batch)
        if len(batch) <= limit:
            return self.backend.infer(batch)
        parts = [self.backend.infer(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def nms(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graphs exported with ``--nms none`` end at boxes and scores: run the project's NMS
        (with ``nms_settings``). Graphs with NMS inside: their detections, cut to ``max_det``
        where it is smaller than the graph's (they come best first, so that is exact)."""
        if self.info.raw_outputs:
            return batched_nms(outputs["boxes"], outputs["scores"], self.nms_settings)
        if self._cut is None:
            return outputs
        return {**outputs, "num_detections": np.minimum(outputs["num_detections"], self._cut)}

    def postprocess(
        self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        return to_detections(
            outputs, sizes, self.info.labels, min_score=self.score_threshold, classes=self.class_ids
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SsdTrtError(
                "this Detector is closed (close() or the end of its with block); create a new one"
            )

    def close(self) -> None:
        """Release the backend; later calls raise SsdTrtError. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
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


_ARG = {"iou_threshold": "iou", "max_per_class": "max_per_class", "max_total": "max_det"}
_EXPORT_FLAG = {
    "iou_threshold": "--iou-threshold",
    "max_per_class": "--max-per-class",
    "max_total": "--max-detections",
}


def _nms_change(iou: float | None, max_det: int | None, max_per_class: int | None) -> NmsChange:
    """Detect-time NMS settings, checked before any model is loaded."""
    if iou is not None and (
        isinstance(iou, bool) or not isinstance(iou, int | float | np.number) or not 0 <= iou <= 1
    ):
        raise SsdTrtError(f"iou {iou} must be a number between 0 and 1")
    for name, value in (("max_det", max_det), ("max_per_class", max_per_class)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise SsdTrtError(f"{name} {value!r} must be a whole number >= 1")
    return NmsChange(
        iou_threshold=None if iou is None else float(iou),
        max_total=None if max_det is None else int(max_det),
        max_per_class=None if max_per_class is None else int(max_per_class),
    )


def _class_choices(labels: dict[int, str]) -> str:
    """The valid ``classes`` of a model, in one line."""
    if not labels:
        return "this model has no labels"
    lo, hi = min(labels), max(labels)
    ids = f"id {lo}" if lo == hi else f"ids {lo}-{hi}"
    names = [n for n in labels.values() if not n.startswith("class_")]  # not generic fill-ins
    return f"this model's classes are {ids}" + (f" or {', '.join(names)}" if names else "")
