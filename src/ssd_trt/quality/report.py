"""Comparison reports: tensor error statistics, detection agreement and the verdict.

Pure numpy over Detections, so the report logic is testable without any runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..fsutil import atomic_write
from ..nms import box_iou

MATCH_IOU = 0.5
# Below this many FP32 detections one lost box moves the match rate by several points: the
# person model on 16 COCO images has 14 at score 0.3, and its INT8 "FAIL" there was that.
MIN_REFERENCE = 30


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
    coco: dict[str, float | None] | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def judgeable(self) -> bool:
        """Enough reference detections for the match-rate and drift checks to mean something."""
        return self.agreement is None or self.agreement.reference >= MIN_REFERENCE


@dataclass
class CompareReport:
    model: str
    images: int
    score_threshold: float
    error_stat: str
    engines: str  # what happened with TensorRT engine runners
    reference_coco: dict[str, float | None] | None
    variants: list[VariantReport]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.variants)

    @property
    def verdict(self) -> str:
        """FAIL wins; a pass on too few detections is INCONCLUSIVE, not PASS."""
        if not self.passed:
            return "FAIL"
        return "PASS" if all(v.judgeable for v in self.variants) else "INCONCLUSIVE"

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
            "verdict": self.verdict,
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
        lines += ["", self.engines]
        for v in self.variants:
            if not v.judgeable and v.agreement is not None:
                lines.append(
                    f"too few detections to judge {v.precision}: {v.agreement.reference} at score "
                    f">= {self.score_threshold:g} (need {MIN_REFERENCE}); pass more --images"
                )
        lines.append(self.verdict)
        return "\n".join(lines)


def _map_line(metrics: dict[str, float | None] | None) -> str:
    # None: undefined (no ground truth of that size), never shown as 0
    items = (metrics or {}).items()
    return "  ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in items)


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


def write_json(report: CompareReport, path: Path | str) -> None:
    """Write the report's JSON to ``path`` (``-``: standard output), as fsutil.atomic_write."""
    with atomic_write(path) as f:
        f.write(json.dumps(report.to_json(), indent=2).encode() + b"\n")
