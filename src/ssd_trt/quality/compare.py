"""Accuracy of FP16/INT8 variants against FP32: tensors (Polygraphy) and detections (ours).

Two views of the same question, because either alone misleads:

- Tensors: Polygraphy runs every variant on the same preprocessed real images (ONNX Runtime CPU
  runners, plus TensorRT runners where an engine can run) and compares each output tensor with
  FP32's. The statistics reported here (max/mean/median absolute and relative error over all
  images) are computed with numpy from the outputs Polygraphy returns, over the whole run; its
  per-iteration statistics would need re-aggregating and its relative error divides by zero. The
  pass/fail of each tensor is Polygraphy's own verdict (``SimpleCompareFunc`` with the chosen
  atol/rtol and error statistic, every iteration). The detection outputs come after TopK, so a
  tiny score change swaps rows: their element-wise errors look large even when the detections
  agree. That is why tensor verdicts gate the result only where the user sets a tolerance.
- Detections: FP32's and the variant's detections above a score threshold are matched per
  image (same class, IoU >= 0.5, greedily from the highest FP32 score), giving the match rate,
  the IoU of matched boxes, the score drift of matched detections, and detections lost/gained.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAME, ModelInfo, parse_precisions, read_onnx_metadata
from ..detection_batch import DetectionBatch
from ..detections import Detections
from ..detector import Detector
from ..errors import SsdTrtError, require
from ..nms import batched_nms
from ..postprocess import to_detections
from ..precision.trt_compat import load_trt, local_gpu
from ..preprocess import preprocess
from ..sources import open_source
from ..store import ArtifactStore, Calibration
from .evaluate import EVAL_SCORE_THRESHOLD, coco_map
from .report import Check, CompareReport, TensorStats, VariantReport, agreement, error_stats

log = logging.getLogger(__name__)

# Defaults per precision; INT8 is allowed more drift than FP16 (measured on COCO images: FP16
# score drift ~0.002, INT8 ~0.02).
# fp32 applies to TensorRT FP32 engines compared with ONNX Runtime FP32.
DEFAULT_MIN_MATCH = {"fp32": 0.9, "fp16": 0.9, "int8": 0.8}
DEFAULT_MAX_DRIFT = {"fp32": 0.02, "fp16": 0.02, "int8": 0.05}
DEFAULT_MAX_MAP_DROP = {"fp32": 0.01, "fp16": 0.01, "int8": 0.03}
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3

# ------------------------------------------------------------------------------------- options


def parse_per_key(
    values: Sequence[str] | None, what: str, keys: Sequence[str] | None = None
) -> dict[str, float]:
    """``["0.9"]`` -> ``{"": 0.9}``; ``["fp16=0.95,int8=0.85"]`` -> per key. "" is the default."""
    result: dict[str, float] = {}
    for value in values or []:
        for item in value.split(","):
            key, _, number = item.strip().rpartition("=")
            if keys is not None and key and key not in keys:
                raise SsdTrtError(f"{what} {item!r}: unknown name {key!r}; use one of {keys}")
            try:
                result[key] = float(number)
            except ValueError:
                raise SsdTrtError(
                    f"{what} {item!r}: expected a number or NAME=NUMBER, e.g. {what} 0.9"
                ) from None
    return result


def _limit(user: dict[str, float], defaults: dict[str, float], precision: str) -> float:
    if precision in user:
        return user[precision]
    if "" in user:
        return user[""]
    return defaults[precision]


# ------------------------------------------------------------------------------------- helpers


def load_images(spec: str | None, limit: int | None = None) -> list[np.ndarray]:
    """BGR images from a folder (or glob, image, video), at most ``limit``."""
    if not spec:
        raise SsdTrtError("compare needs real images: pass --images DIR")
    path = Path(spec).expanduser()
    if not any(c in spec for c in "*?[") and not path.exists():
        raise SsdTrtError(f"image folder {path} does not exist; pass --images DIR")
    images: list[np.ndarray] = []
    with open_source(str(path)) as source:
        for frame in source:
            images.append(frame.image)
            if limit is not None and len(images) >= limit:
                break
    if not images:
        raise SsdTrtError(f"no images could be read from {spec}; pass --images DIR of photos")
    return images


def engine_support(onnx_path: Path) -> str | None:
    """None where TensorRT engines can run here, else one line saying why they cannot."""
    if not any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx")):
        return "TensorRT engines not compared: no tensorrt or tensorrt_rtx module installed"
    gpu = local_gpu()
    if gpu is None:
        return "TensorRT engines not compared: no NVIDIA GPU here (ONNX Runtime CPU runners only)"
    try:
        api = load_trt("auto")
    except SsdTrtError as exc:
        return f"TensorRT engines not compared: {exc}"
    name, cc = gpu
    if api.flavour == "tensorrt-rtx":
        if cc not in api.compute_capabilities() or cc == "sm90":
            return f"TensorRT engines not compared: {api.name} cannot run on {name} ({cc})"
        onnx = require("onnx", "export")
        ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
        if "NonMaxSuppression" in ops:
            return (
                f"TensorRT engines not compared: {api.name} has no NMS layer; compare a model "
                "exported with --nms none"
            )
    return None


def _trt_runner(onnx_path: Path, name: str, batch: int, shape: tuple[int, ...]) -> Any:
    """A Polygraphy TensorRT runner building a strongly typed engine from the variant's ONNX."""
    from polygraphy import config

    config.USE_TENSORRT_RTX = load_trt("auto").flavour == "tensorrt-rtx"
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        TrtRunner,
    )

    c, h, w = shape
    profile = Profile().add(
        INPUT_NAME, min=(1, c, h, w), opt=(batch, c, h, w), max=(batch, c, h, w)
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    return TrtRunner(EngineFromNetwork(network, CreateConfig(profiles=[profile])), name=name)


def _quiet_polygraphy(verbose: bool) -> None:
    from polygraphy.logger import G_LOGGER

    # Its per-tensor FAILED lines would repeat what the table says; keep only fatal messages.
    level = G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL
    try:
        G_LOGGER.module_severity = level
    except AttributeError:  # older Polygraphy
        G_LOGGER.severity = level


# ---------------------------------------------------------------------------------- entry point


def compare(
    onnx_path: Path,
    precisions: Sequence[str],
    images: Sequence[np.ndarray],
    *,
    store: ArtifactStore,
    calibration: Calibration | None = None,
    atol: dict[str, float] | None = None,
    rtol: dict[str, float] | None = None,
    error_stat: str = "mean",
    score_threshold: float = 0.3,
    min_match: dict[str, float] | None = None,
    max_drift: dict[str, float] | None = None,
    max_map_drop: dict[str, float] | None = None,
    coco: Any = None,
    coco_images: Path | None = None,
    batch: int = 8,
    verbose: bool = False,
) -> CompareReport:
    """Compare each precision's variant of ``onnx_path`` with FP32 on ``images`` (BGR).

    ``atol``/``rtol`` map tensor names to tolerances ("" for the rest); tensors named there, or
    all of them when "" is given, gate the verdict. ``coco`` (a pycocotools COCO of the images in
    ``coco_images``) adds an mAP-drop check.
    """
    require("polygraphy", "compare")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    _quiet_polygraphy(verbose)
    precisions = parse_precisions(",".join(precisions))
    if len(precisions) < 2:
        raise SsdTrtError("nothing to compare: pass --precisions fp32,fp16 (or int8)")
    info = ModelInfo.from_metadata(read_onnx_metadata(onnx_path), str(onnx_path))
    if info.precision != "fp32":
        raise SsdTrtError(f"{onnx_path} is already {info.precision}; pass the FP32 export")
    calibration = calibration or Calibration()
    if "int8" in precisions and not calibration.images:
        raise SsdTrtError(
            "int8 needs calibration images: pass --calib-images DIR (real photos or a video, "
            "not the images you compare on)"
        )
    paths = {p: store.prepared(onnx_path, p, calibration) for p in precisions}

    sizes = [im.shape[:2] for im in images]
    feeds = [
        {INPUT_NAME: preprocess(images[i : i + batch], info.preprocess)}
        for i in range(0, len(images), batch)
    ]
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(paths[p]), providers=["cpu"]), name=f"onnxrt-{p}")
        for p in precisions
    ]
    engines = engine_support(onnx_path)
    if engines is None:
        shape = tuple(feeds[0][INPUT_NAME].shape[1:])
        runners += [_trt_runner(paths[p], f"trt-{p}", batch, shape) for p in precisions]
        engines = "TensorRT engines compared too (trt-* rows)"
    log.info("running %d runners on %d images with Polygraphy", len(runners), len(images))
    results = Comparator.run(runners, data_loader=feeds)
    comparisons = [(0, i) for i in range(1, len(runners))]

    atol = atol if atol is not None else {}
    rtol = rtol if rtol is not None else {}
    compare_func = _compare_func({"": DEFAULT_ATOL, **atol}, {"": DEFAULT_RTOL, **rtol}, error_stat)
    accuracy = Comparator.compare_accuracy(
        results, comparisons=comparisons, compare_func=compare_func
    )
    verdicts = accuracy[0]

    ref_name = runners[0].name
    ref_outputs = results[ref_name]
    ref_dets = _detections(ref_outputs, sizes, batch, info, score_threshold)
    ref_coco = _coco(coco, coco_images, paths["fp32"]) if coco is not None else None

    variants = []
    for index in range(1, len(runners)):
        name = runners[index].name
        precision = name.split("-", 1)[1]
        label = precision if name.startswith("onnxrt-") else name
        report = VariantReport(label, str(paths[precision]))
        outputs = results[name]
        iterations = verdicts[(ref_name, name)]
        for tensor in ref_outputs[0].keys():
            stats = error_stats(
                np.concatenate([it[tensor] for it in ref_outputs]),
                np.concatenate([it[tensor] for it in outputs]),
            )
            gating = tensor in atol or tensor in rtol or "" in atol or "" in rtol
            t_atol = atol.get(tensor, atol.get("", DEFAULT_ATOL))
            t_rtol = rtol.get(tensor, rtol.get("", DEFAULT_RTOL))
            ok = all(bool(it[tensor]) for it in iterations if tensor in it)
            report.tensors.append(
                TensorStats(
                    tensor, **stats, atol=t_atol, rtol=t_rtol, within_tolerance=ok, gating=gating
                )
            )
            if gating:
                report.checks.append(Check(f"{tensor} within atol/rtol", float(ok), 1.0, ">="))
        a = agreement(ref_dets, _detections(outputs, sizes, batch, info, score_threshold))
        report.agreement = a
        report.checks += [
            Check(
                "match rate",
                a.match_rate,
                _limit(min_match or {}, DEFAULT_MIN_MATCH, precision),
                ">=",
            ),
            Check(
                "mean score drift",
                a.mean_score_drift,
                _limit(max_drift or {}, DEFAULT_MAX_DRIFT, precision),
                "<=",
            ),
        ]
        if ref_coco is not None and name.startswith("onnxrt-"):
            report.coco = _coco(coco, coco_images, paths[precision])
            ref_ap, ap = ref_coco["AP"], report.coco["AP"]
            # coco_map refuses images without a ground-truth box, so AP over all is a number
            assert ref_ap is not None and ap is not None
            drop = ref_ap - ap
            limit = _limit(max_map_drop or {}, DEFAULT_MAX_MAP_DROP, precision)
            report.checks.append(Check("mAP drop", drop, limit, "<="))
        variants.append(report)

    return CompareReport(
        model=onnx_path.name,
        images=len(images),
        score_threshold=score_threshold,
        error_stat=error_stat,
        engines=engines,
        reference_coco=ref_coco,
        variants=variants,
    )


def _compare_func(atol: dict[str, float], rtol: dict[str, float], error_stat: str) -> Any:
    from polygraphy import comparator

    kwargs = {"atol": atol, "rtol": rtol, "check_error_stat": error_stat}
    simple = getattr(comparator, "SimpleCompareFunc", None)
    if simple is not None:  # Polygraphy >= 0.50; CompareFunc.simple is deprecated there
        return simple(**kwargs)
    return comparator.CompareFunc.simple(**kwargs)


def _detections(
    iterations: Sequence[Any],
    sizes: Sequence[tuple[int, int]],
    batch: int,
    info: ModelInfo,
    score_threshold: float,
) -> list[Detections]:
    result: list[Detections] = []
    for n, outputs in enumerate(iterations):
        chunk = sizes[n * batch : (n + 1) * batch]
        out: DetectionBatch | dict[str, np.ndarray] = dict(outputs)
        if info.raw_outputs:
            out = batched_nms(outputs["boxes"], outputs["scores"], info.nms_settings)
        result += to_detections(out, chunk, info.labels, min_score=score_threshold)
    return result


def _coco(coco: Any, images_dir: Path | None, onnx_path: Path) -> dict[str, float | None]:
    assert images_dir is not None
    with Detector(onnx_path, "cpu", score_threshold=EVAL_SCORE_THRESHOLD) as d:
        return coco_map(coco, images_dir, d.detect, d.info.labels).metrics
