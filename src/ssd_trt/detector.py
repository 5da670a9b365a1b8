"""``ssd_trt.Detector``: images in, Detections out, on any backend.

The detector checks the images, hands them to a backend through the runtime seam
(``submit``/``collect`` -> ``DetectionBatch``, runtime/base.py), and postprocesses the batch
into Detections. Which backend, and how it is opened, is the registry's (runtime/registry.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

import numpy as np

from .batching import check_max_batch
from .contract import ModelInfo, check_precision
from .detection_batch import DetectionBatch
from .detections import Detections
from .device_frames import DeviceFrame, as_device_frame, is_device_array
from .errors import SsdTrtError
from .postprocess import to_detections
from .preprocess import as_images
from .runtime.base import FrameDetector
from .runtime.host import HostStages
from .runtime.nms_plan import nms_change
from .runtime.registry import OpenRequest, open_backend
from .runtime.registry import flavour_for as flavour_for  # importable here as before
from .store import ArtifactStore, Calibration

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ssdlite_mobilenet_v2_coco"

# What detect() takes as one image (see preprocess.as_images): a numpy array, a file path or a
# PIL image (Any: PIL is not a dependency).
Image = np.ndarray | str | Path | Any


Input = np.ndarray | DeviceFrame  # an image the backend reads: on the host or in GPU memory


def as_inputs(images: object, *, rgb: bool = False) -> tuple[list[Input], bool]:
    """``preprocess.as_images``, plus frames in GPU memory (see the Detector's docstring) as
    DeviceFrames; whether it was one image rather than a list."""
    if not isinstance(images, list) and is_device_array(images):
        return [_device_frame(images, rgb)], True
    if isinstance(images, list | tuple) and any(is_device_array(im) for im in images):
        return [
            _device_frame(im, rgb) if is_device_array(im) else as_images(im, rgb=rgb)[0][0]
            for im in images
        ], False
    host, single = as_images(images, rgb=rgb)
    return list(host), single


def _device_frame(obj: object, rgb: bool) -> DeviceFrame:
    frame = as_device_frame(obj)
    # A 3-channel array's order is the detector's (as for numpy images).
    return replace(frame, layout="rgb") if rgb and frame.layout == "bgr" else frame


class Detector:
    """Detect objects in images: ``det.detect(image)`` or ``det(image)``.

    ``model`` is a registry name (fetched and exported on first use), an exported .onnx or a
    TensorRT engine from ``ssd-trt build``. ``backend`` is ``auto`` (the fastest usable here,
    logged), ``cpu``, ``cuda``, ``tensorrt`` (builds an engine once and caches it) or
    ``onnxruntime-tensorrt``. ``precision`` (fp32, fp16, int8) converts the ONNX first; INT8
    calibrates on ``calib_images`` (a folder, glob or video of real images). An engine runs in
    the precision it was built with. ``max_batch`` is the batch size the backend is set up for:
    a TensorRT engine's profile, the GPU fast path's largest graph, the video engine's batches
    (None: the backend's default, batching.py: 32 on the GPU fast path, else 8; ``max_batch``
    then holds it). Larger lists are split.

    Images: a numpy uint8 array is HxWx3 BGR as OpenCV gives it (RGB with ``rgb=True``), HxW or
    HxWx1 grey (repeated to 3 channels) or HxWx4 BGRA (alpha dropped); a str or Path is an image
    file, read with OpenCV; a PIL image is RGB and converted (any mode). A list or tuple of
    those (or an NxHxWxC array) is one batch and gives a list of Detections. Anything else is
    one ``SsdTrtError`` naming the image and what was wrong.

    Frames in GPU memory (on the GPU fast path: backend ``cuda``, or ``tensorrt`` through it)
    are read in place, never copied to the host: anything with ``__cuda_array_interface__`` or
    CUDA DLPack (a CuPy array, a torch CUDA tensor), HxWx3 uint8 in the detector's channel
    order, or NV12 ((H*3/2)xW uint8, a tuple of its luma and chroma planes, a PyNvVideoCodec
    frame), or a ``DeviceFrame``; a list of them (or mixed with host images) is a batch.

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
        max_batch: int | None = None,
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
        self.nms_change = nms_change(iou, max_det, max_per_class)
        self.store = ArtifactStore(cache_dir)
        self.calibration = Calibration(images=calib_images)
        self.threads = threads
        request = OpenRequest(
            model,
            check_precision(precision or "fp32"),  # an engine runs in its own (checked on open)
            self.store,
            self.calibration,
            self.nms_change,
            check_max_batch(max_batch),
            threads,
        )
        self.backend: FrameDetector = open_backend(request, backend, precision)
        self._closed = False
        self.info: ModelInfo = self.backend.info
        self.nms_settings = self.backend.nms_settings
        self.max_batch: int = self.backend.max_batch  # resolved for the backend
        self.precision = self.info.precision
        self.score_threshold = score_threshold
        self.rgb = rgb
        self.class_ids = self._class_ids(classes)

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
        return self.backend.model_path

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
        batch, single = as_inputs(images, rgb=self.rgb)
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
        return self._detect_timed(as_inputs(list(images), rgb=self.rgb)[0])

    def _detect_timed(self, images: list[Input]) -> tuple[list[Detections], dict[str, float]]:
        return self.collect(self._submit(images))

    def warm_up(self, max_batch: int | None = None) -> None:
        """Prepare the backend for batches of up to ``max_batch`` images (None: its own
        ``max_batch``) before a run."""
        self._check_open()
        self.backend.warm_up(max_batch or self.max_batch)

    @property
    def supports_submit(self) -> bool:
        """Whether submit() returns before the batch is done (the GPU fast path), so two
        batches can be in flight; elsewhere submit() runs the batch at once and collect() only
        hands the result over."""
        return self.backend.queues

    @property
    def has_host_stages(self) -> bool:
        """Whether preprocess(), infer() and nms() can be called alone (not on the GPU fast
        path, which runs every stage on the GPU)."""
        return isinstance(self.backend, HostStages)

    def submit(self, images: Sequence[Image]) -> PendingBatch:
        """Start a batch; collect() gives its Detections and stage times. Where the backend
        queues work (``supports_submit``), the caller can prepare the next batch meanwhile; at
        most two batches may be in flight. Submit and collect from one thread."""
        self._check_open()
        return self._submit(as_inputs(list(images), rgb=self.rgb)[0])

    def _submit(self, images: list[Input]) -> PendingBatch:
        sizes = [im.size if isinstance(im, DeviceFrame) else im.shape[:2] for im in images]
        return PendingBatch(sizes, handle=self.backend.submit(images, bgr=not self.rgb))

    def collect(self, pending: PendingBatch) -> tuple[list[Detections], dict[str, float]]:
        """The Detections and stage milliseconds (``detection_batch.STAGES`` names) of a
        submitted batch (waits for it)."""
        if pending.result is None:
            self._check_open()
            found = self.backend.collect(pending.handle)
            stages = dict(self.backend.stage_ms)
            t0 = time.perf_counter()
            detections = self.postprocess(found, pending.sizes)
            stages["postprocess"] = (time.perf_counter() - t0) * 1000
            pending.result, pending.handle = (detections, stages), None
        return pending.result

    # The stages, separately, for benchmarks and callers that time or overlap them: backends
    # with host stages only (has_host_stages).

    def _host(self, stage: str) -> HostStages:
        self._check_open()
        if not isinstance(self.backend, HostStages):
            raise SsdTrtError(
                f"the {self.backend_name} backend runs every stage on the GPU, so {stage}() "
                "cannot run alone; use detect() or detect_timed() (stage times included), or "
                "backend cpu / onnxruntime-cuda for the host stages"
            )
        return self.backend

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._host("preprocess").preprocess(images, bgr=not self.rgb)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The network alone; batches larger than the backend takes are split."""
        return self._host("infer").infer(batch)

    def nms(self, outputs: dict[str, np.ndarray]) -> DetectionBatch:
        """Graphs exported with ``--nms none`` end at boxes and scores: run the project's NMS
        (with ``nms_settings``). Graphs with NMS inside: their detections, cut to ``max_det``
        where it is smaller than the graph's (they come best first, so that is exact)."""
        return self._host("nms").nms(outputs)

    def postprocess(
        self, outputs: DetectionBatch | dict[str, np.ndarray], sizes: Sequence[tuple[int, int]]
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


def _class_choices(labels: dict[int, str]) -> str:
    """The valid ``classes`` of a model, in one line."""
    if not labels:
        return "this model has no labels"
    lo, hi = min(labels), max(labels)
    ids = f"id {lo}" if lo == hi else f"ids {lo}-{hi}"
    names = [n for n in labels.values() if not n.startswith("class_")]  # not generic fill-ins
    return f"this model's classes are {ids}" + (f" or {', '.join(names)}" if names else "")
