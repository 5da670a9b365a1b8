"""Detect-time NMS settings against the graph's: which export to run, and what to cut.

Where NMS runs after the network (``--nms none`` exports, the GPU fast path) any setting
applies. Where it is in the graph, a smaller ``max_det`` is cut from its output exactly; another
``iou`` or ``max_per_class``, or a larger ``max_det``, needs a re-export: done once into the
cache for a registry name, refused with one clear error for a given .onnx or engine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..contract import ONNX_SUFFIX, ModelInfo, is_engine
from ..errors import SsdTrtError
from ..model.registry import MODELS
from ..nms import NmsChange, NmsSettings
from ..store import ArtifactStore

log = logging.getLogger(__name__)

_ARG = {"iou_threshold": "iou", "max_per_class": "max_per_class", "max_total": "max_det"}
_EXPORT_FLAG = {
    "iou_threshold": "--iou-threshold",
    "max_per_class": "--max-per-class",
    "max_total": "--max-detections",
}


def nms_change(iou: float | None, max_det: int | None, max_per_class: int | None) -> NmsChange:
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


def nms_plan(change: NmsChange, info: ModelInfo, where: str) -> tuple[NmsSettings, int | None]:
    """The NMS settings in use, and the top-K to cut the graph's detections to (None: as
    they are); one clear error where the graph's NMS cannot give the asked settings."""
    graph = info.nms_settings
    wanted = change.applied_to(graph)
    if info.raw_outputs:
        return wanted, None
    redo = change.not_exact_after(graph)
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


def gpu_nms(change: NmsChange, raw: Path) -> NmsSettings | None:
    """The GPU NMS's settings: the model's own with the asked changes (None: the model's)."""
    if change == NmsChange():
        return None
    return change.applied_to(ModelInfo.from_onnx(raw).nms_settings)


def with_nms(change: NmsChange, store: ArtifactStore, model: str | Path, onnx: Path) -> Path:
    """The export to run for the asked NMS settings, checked before any long work: ``onnx``
    where they need no new NMS; for a registry name, its export with them (made once into the
    cache); for a given .onnx, one clear error (from nms_plan)."""
    if change == NmsChange():
        return onnx
    info = ModelInfo.from_onnx(onnx)
    if info.raw_outputs or not change.not_exact_after(info.nms_settings):
        return onnx
    if Path(model).suffix == ONNX_SUFFIX or str(model) not in MODELS:
        nms_plan(change, info, str(model))  # raises
    settings = change.applied_to(info.nms_settings)
    log.info(
        "NMS in %s's graph differs from the settings asked for; using its export with them", model
    )
    return store.onnx(model, settings=settings)
