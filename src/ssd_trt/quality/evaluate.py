"""COCO mAP with pycocotools, the maintained reference evaluator.

Detections use the TF OD API's 90-id COCO label map, whose ids are COCO's category ids, so no
remapping is needed; a model with another label map is rejected rather than scored wrongly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import is_engine
from ..detections import Detections
from ..detector import Detector
from ..errors import SsdTrtError, require
from ..precision.quantize import check_calibration_source

log = logging.getLogger(__name__)

# TF evaluates with a near-zero score threshold; mAP needs the low-score tail.
EVAL_SCORE_THRESHOLD = 1e-3
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class CocoResult:
    # None: undefined (COCOeval's -1), e.g. APs where the annotations hold no small object
    metrics: dict[str, float | None]
    images: int
    detections: int

    def line(self) -> str:
        return "  ".join(f"{k} {metric_text(v)}" for k, v in self.metrics.items())


def metric_text(value: float | None, width: int = 0) -> str:
    """A metric for a table: three decimals, or n/a where it is undefined (never 0)."""
    return f"{value:>{width}.3f}" if value is not None else f"{'n/a':>{width}}"


def load_annotations(path: Path) -> Any:
    """A pycocotools COCO object, with one-line errors for missing or malformed files."""
    coco_module = require("pycocotools.coco", "eval")
    if not path.is_file():
        raise SsdTrtError(f"annotation file {path} does not exist; pass a COCO instances json")
    try:
        data = json.loads(path.read_text())
        if not {"images", "annotations", "categories"} <= set(data):
            raise ValueError("missing keys")
    except (ValueError, UnicodeDecodeError):
        raise SsdTrtError(
            f"{path} is not a COCO annotation file (json with images, annotations, categories)"
        ) from None
    # Without ground truth mAP is undefined, not 0: say so before any model work.
    if not data["images"]:
        raise SsdTrtError(f"{path} lists no images; pass the COCO instances json of the images")
    if not data["annotations"]:
        raise SsdTrtError(
            f"{path} has no annotations (ground-truth boxes), so mAP is undefined; pass a COCO "
            "instances json with annotations"
        )
    coco = coco_module.COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def image_paths(coco: Any, images_dir: Path) -> list[tuple[int, Path]]:
    if not images_dir.is_dir():
        raise SsdTrtError(f"image folder {images_dir} does not exist; pass --images DIR")
    pairs = [(img["id"], images_dir / img["file_name"]) for img in coco.dataset["images"]]
    missing = [p.name for _, p in pairs if not p.is_file()]
    if missing:
        raise SsdTrtError(
            f"{len(missing)} annotated images are missing from {images_dir} "
            f"(e.g. {missing[0]}); point --images at the folder the annotations describe"
        )
    return pairs


def coco_map(
    coco: Any,
    images_dir: Path,
    detect: Callable[[list[np.ndarray]], list[Detections]],
    labels: dict[int, str],
    batch: int = 8,
) -> CocoResult:
    """Run ``detect`` over the annotated images and score it with COCOeval (bbox)."""
    cocoeval = require("pycocotools.cocoeval", "eval")
    cv2 = require("cv2", "video")
    categories = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    clash = [i for i, name in categories.items() if labels.get(i, name) != name]
    if clash:
        raise SsdTrtError(
            f"the model's label ids do not match the annotations' category ids (e.g. id "
            f"{clash[0]}: {labels.get(clash[0])!r} vs {categories[clash[0]]!r}); "
            "evaluate a COCO-label model"
        )
    pairs = image_paths(coco, images_dir)
    if not coco.getAnnIds(imgIds=[i for i, _ in pairs]):
        raise SsdTrtError(
            "none of the annotated images has a ground-truth box, so mAP is undefined; pass a "
            "COCO instances json with annotations for its images"
        )
    records: list[dict[str, Any]] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        images = [cv2.imread(str(p)) for _, p in chunk]
        broken = [p.name for (_, p), im in zip(chunk, images, strict=True) if im is None]
        if broken:
            raise SsdTrtError(f"cannot decode annotated image {broken[0]}; check the image folder")
        for (image_id, _), dets in zip(chunk, detect(images), strict=True):
            records += dets.to_coco(image_id)
    metrics: dict[str, float | None] = dict.fromkeys(METRICS, 0.0)
    if records:
        with contextlib.redirect_stdout(io.StringIO()):
            results = coco.loadRes(records)
            ev = cocoeval.COCOeval(coco, results, "bbox")
            ev.params.imgIds = [i for i, _ in pairs]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = zip(METRICS, ev.stats[:6], strict=True)
        metrics = {k: None if v < 0 else float(v) for k, v in stats}  # -1: no such objects
    return CocoResult(metrics=metrics, images=len(pairs), detections=len(records))


@dataclass
class EvalRun:
    precision: str
    backend: str
    model_path: str
    result: CocoResult


@dataclass
class EvalReport:
    model: str
    annotations: str
    runs: list[EvalRun]

    def table(self) -> str:
        first = self.runs[0]
        lines = [
            f"COCO bbox mAP of {Path(self.model).name} on {first.result.images} images "
            f"(score >= {EVAL_SCORE_THRESHOLD:g}, {first.backend})",
            f"{'precision':<9}  " + "  ".join(f"{m:>6}" for m in METRICS) + "  detections",
        ]
        for run in self.runs:
            row = "  ".join(metric_text(run.result.metrics[m], 6) for m in METRICS)
            lines.append(f"{run.precision:<9}  {row}  {run.result.detections:>10}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "annotations": self.annotations,
            "images": self.runs[0].result.images,
            "score_threshold": EVAL_SCORE_THRESHOLD,
            "precisions": {
                r.precision: {
                    "metrics": r.result.metrics,
                    "images": r.result.images,
                    "detections": r.result.detections,
                    "model_path": r.model_path,
                    "backend": r.backend,
                }
                for r in self.runs
            },
        }


def evaluate(
    model: str,
    precisions: Sequence[str],
    annotations: Path,
    images_dir: Path,
    *,
    backend: str = "cpu",
    cache_dir: str | None = None,
    calib_images: str | None = None,
    batch: int = 8,
) -> EvalReport:
    """COCO mAP of ``model`` for each precision (an engine: its own precision only)."""
    if "int8" in precisions:
        if not calib_images:
            raise SsdTrtError(
                "int8 needs --calib-images DIR (real photos or a video, not the evaluated images)"
            )
        check_calibration_source(calib_images)  # before the other precisions' runs
    engine = is_engine(Path(model))
    if engine and list(precisions) != ["fp32"]:
        raise SsdTrtError(
            "an engine has the one precision it was built with; evaluate the .onnx to compare "
            "precisions"
        )
    coco = load_annotations(annotations)
    image_paths(coco, images_dir)  # missing images fail before any model work
    runs = []
    for precision in precisions:
        with Detector(
            model,
            backend,
            score_threshold=EVAL_SCORE_THRESHOLD,
            cache_dir=cache_dir,
            precision=None if engine else precision,
            calib_images=calib_images,
            max_batch=batch,
        ) as detector:
            log.info("evaluating %s on %s", detector.precision, detector.backend_name)
            result = coco_map(coco, images_dir, detector.detect, detector.info.labels, batch)
            runs.append(
                EvalRun(detector.precision, detector.backend_name, str(detector.model_path), result)
            )
    return EvalReport(model, str(annotations), runs)
