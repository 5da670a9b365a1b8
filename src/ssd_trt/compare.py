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
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import ModelInfo
from .detections import Detections
from .errors import SsdTrtError, require
from .nms import box_iou
from .postprocess import to_detections
from .preprocess import preprocess

PRECISIONS = ("fp32", "fp16", "int8")
# Defaults per precision; INT8 is allowed more drift than FP16 (measured on COCO images: FP16
# score drift ~0.002, INT8 ~0.02).
# fp32 applies to TensorRT FP32 engines compared with ONNX Runtime FP32.
DEFAULT_MIN_MATCH = {"fp32": 0.9, "fp16": 0.9, "int8": 0.8}
DEFAULT_MAX_DRIFT = {"fp32": 0.02, "fp16": 0.02, "int8": 0.05}
DEFAULT_MAX_MAP_DROP = {"fp32": 0.01, "fp16": 0.01, "int8": 0.03}
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
MATCH_IOU = 0.5
INPUT_NAME = "images"


# ------------------------------------------------------------------------------------- options


def parse_precisions(text: str) -> list[str]:
    """``"fp32,fp16,int8"`` -> ``["fp32", "fp16", "int8"]`` (FP32, the reference, always first)."""
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise SsdTrtError(
            f"unknown precision {unknown[0] if unknown else text!r}; use fp32,fp16,int8"
        )
    return ["fp32"] + [p for p in dict.fromkeys(items) if p != "fp32"]


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


# --------------------------------------------------------------------------------- data models


@dataclass
class TensorStats:
    name: str
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    atol: float
    rtol: float
    within_tolerance: bool  # Polygraphy's verdict, every iteration
    gating: bool  # whether this tensor's verdict counts towards PASS/FAIL


@dataclass
class Agreement:
    reference: int  # FP32 detections at the score threshold
    detections: int  # the variant's
    matched: int
    lost: int  # FP32 detections with no match
    gained: int  # variant detections with no match
    match_rate: float  # matched / (matched + lost + gained)
    mean_iou: float
    mean_score_drift: float
    max_score_drift: float


@dataclass
class Check:
    name: str
    value: float
    limit: float
    op: str  # ">=" or "<="

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class VariantReport:
    precision: str
    onnx: str
    tensors: list[TensorStats] = field(default_factory=list)
    agreement: Agreement | None = None
    coco: dict[str, float] | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class CompareReport:
    model: str
    images: int
    score_threshold: float
    error_stat: str
    engines: str  # what happened with TensorRT engine runners
    reference_coco: dict[str, float] | None
    variants: list[VariantReport]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.variants)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": self.images,
            "score_threshold": self.score_threshold,
            "match_iou": MATCH_IOU,
            "error_stat": self.error_stat,
            "engines": self.engines,
            "reference_coco": self.reference_coco,
            "variants": {
                v.precision: {
                    "onnx": v.onnx,
                    "tensors": {t.name: asdict(t) for t in v.tensors},
                    "agreement": asdict(v.agreement) if v.agreement else None,
                    "coco": v.coco,
                    "checks": [c.to_json() for c in v.checks],
                    "passed": v.passed,
                }
                for v in self.variants
            },
            "passed": self.passed,
        }

    def table(self) -> str:
        lines = [
            f"{self.model}: {len(self.variants)} variant(s) vs fp32 on {self.images} images",
            "",
            "tensors (vs fp32; relative error over nonzero fp32 elements; "
            f"tolerance check: polygraphy, {self.error_stat})",
            f"  {'variant':<7} {'tensor':<18} {'max abs':>9} {'mean abs':>9} {'med abs':>9} "
            f"{'max rel':>9} {'mean rel':>9} {'med rel':>9}  within atol/rtol",
        ]
        for v in self.variants:
            for t in v.tensors:
                verdict = "yes" if t.within_tolerance else "no"
                gate = "" if t.gating else " (not gating)"
                lines.append(
                    f"  {v.precision:<7} {t.name:<18} {t.max_abs:>9.3g} {t.mean_abs:>9.3g} "
                    f"{t.median_abs:>9.3g} {t.max_rel:>9.3g} {t.mean_rel:>9.3g} "
                    f"{t.median_rel:>9.3g}  {verdict} ({t.atol:g}/{t.rtol:g}){gate}"
                )
        lines += [
            "",
            f"detections (score >= {self.score_threshold:g}, same class, IoU >= {MATCH_IOU:g})",
            f"  {'variant':<7} {'fp32':>5} {'dets':>5} {'match':>5} {'lost':>5} {'gain':>5} "
            f"{'rate':>6} {'IoU':>6} {'drift':>7} {'max drift':>9}",
        ]
        for v in self.variants:
            a = v.agreement
            if a is None:
                continue
            lines.append(
                f"  {v.precision:<7} {a.reference:>5} {a.detections:>5} {a.matched:>5} "
                f"{a.lost:>5} {a.gained:>5} {a.match_rate:>6.3f} {a.mean_iou:>6.3f} "
                f"{a.mean_score_drift:>7.4f} {a.max_score_drift:>9.4f}"
            )
        if self.reference_coco is not None:
            lines += ["", "COCO mAP", f"  fp32     {_map_line(self.reference_coco)}"]
            lines += [f"  {v.precision:<7}  {_map_line(v.coco)}" for v in self.variants if v.coco]
        lines += ["", "checks"]
        for v in self.variants:
            for c in v.checks:
                mark = "ok  " if c.passed else "FAIL"
                lines.append(f"  {mark} {v.precision:<5} {c.name} {c.value:.4g} {c.op} {c.limit:g}")
        lines += ["", self.engines, "PASS" if self.passed else "FAIL"]
        return "\n".join(lines)


def _map_line(metrics: dict[str, float] | None) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in (metrics or {}).items())


# ------------------------------------------------------------------------------------- helpers


def load_images(spec: str | None, limit: int | None = None) -> list[np.ndarray]:
    """BGR images from a folder (or glob, image, video), at most ``limit``."""
    from .sources import open_source

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


def match(ref: Detections, other: Detections, iou_threshold: float = MATCH_IOU) -> list:
    """``(i, j, iou)`` pairs: each ``ref`` detection, highest score first, takes the unmatched
    ``other`` detection of its class with the largest IoU >= ``iou_threshold``."""
    pairs = []
    taken = np.zeros(len(other), bool)
    for i in np.argsort(-ref.scores, kind="stable"):
        candidates = np.flatnonzero((other.class_ids == ref.class_ids[i]) & ~taken)
        if not len(candidates):
            continue
        ious = box_iou(ref.boxes[i], other.boxes[candidates])
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            taken[candidates[best]] = True
            pairs.append((int(i), int(candidates[best]), float(ious[best])))
    return pairs


def agreement(refs: Sequence[Detections], others: Sequence[Detections]) -> Agreement:
    ious: list[float] = []
    drifts: list[float] = []
    n_ref = n_other = 0
    for ref, other in zip(refs, others, strict=True):
        n_ref, n_other = n_ref + len(ref), n_other + len(other)
        for i, j, iou in match(ref, other):
            ious.append(iou)
            drifts.append(abs(float(other.scores[j]) - float(ref.scores[i])))
    matched = len(ious)
    lost, gained = n_ref - matched, n_other - matched
    total = matched + lost + gained
    return Agreement(
        reference=n_ref,
        detections=n_other,
        matched=matched,
        lost=lost,
        gained=gained,
        match_rate=matched / total if total else 1.0,
        mean_iou=float(np.mean(ious)) if ious else 0.0,
        mean_score_drift=float(np.mean(drifts)) if drifts else 0.0,
        max_score_drift=float(np.max(drifts)) if drifts else 0.0,
    )


def error_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Absolute and relative errors; relative over elements where the reference is nonzero."""
    ref64, got64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    absdiff = np.abs(got64 - ref64)
    nonzero = ref64 != 0
    rel = absdiff[nonzero] / np.abs(ref64[nonzero]) if nonzero.any() else np.zeros(1)
    return {
        "max_abs": float(absdiff.max(initial=0.0)),
        "mean_abs": float(absdiff.mean()) if absdiff.size else 0.0,
        "median_abs": float(np.median(absdiff)) if absdiff.size else 0.0,
        "max_rel": float(rel.max()),
        "mean_rel": float(rel.mean()),
        "median_rel": float(np.median(rel)),
    }


def engine_support(onnx_path: Path) -> str | None:
    """None where TensorRT engines can run here, else one line saying why they cannot."""
    from .trt_compat import load_trt, local_gpu

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

    from .trt_compat import load_trt

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
    out_dir: Path,
    calib_images: str | None = None,
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
    progress: bool = True,
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

    from .quantize import precision_of, prepare

    _quiet_polygraphy(verbose)
    precisions = parse_precisions(",".join(precisions))
    if len(precisions) < 2:
        raise SsdTrtError("nothing to compare: pass --precisions fp32,fp16 (or int8)")
    if precision_of(onnx_path) != "fp32":
        raise SsdTrtError(f"{onnx_path} is already {precision_of(onnx_path)}; pass the FP32 export")
    if "int8" in precisions and not calib_images:
        raise SsdTrtError(
            "int8 needs calibration images: pass --calib-images DIR (real photos or a video, "
            "not the images you compare on)"
        )
    onnx = require("onnx", "export")
    meta = {
        p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props
    }
    info = ModelInfo.from_metadata(meta, str(onnx_path))
    paths = {
        p: prepare(onnx_path, p, out_dir, calib_images=calib_images, progress=progress)
        for p in precisions
    }

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
    if progress:
        print(
            f"running {len(runners)} runners on {len(images)} images with Polygraphy",
            file=sys.stderr,
        )
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
            drop = ref_coco["AP"] - report.coco["AP"]
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
    from .backends import detection_outputs

    result: list[Detections] = []
    for n, outputs in enumerate(iterations):
        chunk = sizes[n * batch : (n + 1) * batch]
        out = detection_outputs(dict(outputs), info)
        result += to_detections(out, chunk, info.labels, min_score=score_threshold)
    return result


def _coco(coco: Any, images_dir: Path | None, onnx_path: Path) -> dict[str, float]:
    from .detector import Detector
    from .evaluate import EVAL_SCORE_THRESHOLD, coco_map

    assert images_dir is not None
    with Detector(onnx_path, "cpu", score_threshold=EVAL_SCORE_THRESHOLD, progress=False) as d:
        return coco_map(coco, images_dir, d.detect, d.info.labels).metrics


def write_json(report: CompareReport, path: Path) -> None:
    from .fsutil import atomic_write

    with atomic_write(path) as f:
        f.write(json.dumps(report.to_json(), indent=2).encode() + b"\n")
