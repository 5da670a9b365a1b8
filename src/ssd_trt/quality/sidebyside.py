"""GPU paths side by side, in one run: ``ssd-trt bench --backend cuda``.

The variants: today's path (the default export, NMS in the graph, through ONNX Runtime's CUDA
provider with host arrays), ONNX Runtime on the CPU, and the GPU fast path in fp32 and fp16.
Each is timed end to end, host uint8 frame in, host detections out (``Detector.detect``), with
per-stage times (CUDA events for the fast path), then throughput per batch size, then a video
run that shows whether decoding or inference limits ``ssd-trt detect``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..detector import Detector
from ..errors import SsdTrtError
from ..runtime.ort import available_providers
from ..sources import open_source
from ..store import ArtifactStore
from ..video.pipeline import STAGES, Pipeline
from .bench import machine_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    label: str
    backend: str
    precision: str
    max_candidates: int | None = None  # the export's candidate cap; None: the default export
    batched: bool = True  # measure throughput at every batch size, not only latency


BEFORE = "before the cap (NMS over all 172k candidates)"
TODAY = "today (onnxruntime-cuda, NMS in graph)"
GPU_VARIANTS = (
    # The path as it was when the fast path was planned (about 17 ms on an H100), batch 1 only.
    Variant(BEFORE, "onnxruntime-cuda", "fp32", max_candidates=0, batched=False),
    Variant(TODAY, "onnxruntime-cuda", "fp32"),
    Variant("ONNX Runtime CPU", "cpu", "fp32"),
    Variant("fast path fp32", "cuda", "fp32"),
    Variant("fast path fp16", "cuda", "fp16"),
)


@dataclass
class VariantResult:
    label: str
    backend: str
    precision: str
    p50_ms: float = 0.0  # batch 1, host frame -> host detections
    p90_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)  # batch 1, medians
    images_per_s: dict[int, float] = field(default_factory=dict)  # per batch size
    error: str | None = None  # why the variant could not run here


@dataclass
class SideBySideReport:
    model: str
    machine: dict[str, Any]
    variants: list[VariantResult] = field(default_factory=list)
    video: dict[str, Any] = field(default_factory=dict)

    def speedup(self, result: VariantResult, base_label: str = TODAY) -> float:
        """How many times faster than ``base_label`` at batch-1 p50, in this run (0: unknown)."""
        base = next((v for v in self.variants if v.label == base_label), None)
        if base is None or not base.p50_ms or not result.p50_ms:
            return 0.0
        return base.p50_ms / result.p50_ms

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for v, result in zip(data["variants"], self.variants, strict=True):
            v["speedup_vs_today"] = round(self.speedup(result), 2)
            v["speedup_vs_before"] = round(self.speedup(result, BEFORE), 2)
        return data

    def table(self) -> str:
        sizes = sorted({b for v in self.variants for b in v.images_per_s})
        head = f"{'variant':<46} {'p50 ms':>7} {'p90 ms':>7} {'x today':>7} {'x before':>8}"
        head += "".join(f" {'b' + str(b) + ' img/s':>11}" for b in sizes)
        gpu = (self.machine.get("gpus") or [self.machine.get("cpu")])[0]
        lines = [f"model {self.model}  ({gpu})", head]
        for v in self.variants:
            if v.error:
                lines.append(f"{v.label:<46} not run: {v.error}")
                continue
            row = f"{v.label:<46} {v.p50_ms:7.2f} {v.p90_ms:7.2f} {self.speedup(v):7.1f}"
            row += f" {self.speedup(v, BEFORE):8.1f}"
            row += "".join(
                f" {v.images_per_s[b]:11.0f}" if b in v.images_per_s else f" {'-':>11}"
                for b in sizes
            )
            lines.append(row)
        lines.append("batch-1 stages, median ms:")
        for v in self.variants:
            if v.stages_ms:
                stages = ", ".join(f"{k} {ms:.3f}" for k, ms in v.stages_ms.items())
                lines.append(f"  {v.label}: {stages}")
        if self.video:
            w = self.video
            lines.append(
                f"video ({w['backend']}): {w['fps']:.0f} FPS = {w['fps_of_decode_only']:.0%} of "
                f"decoding alone ({w['decode_only_fps']:.0f} FPS); per frame decode "
                f"{w['decode_ms']:.2f} ms, detection {w['detect_ms']:.2f} ms: limited by "
                f"{w['limited_by']}"
            )
        return "\n".join(lines)


def _percentiles(times: list[float]) -> tuple[float, float]:
    p50, p90 = np.percentile(times, [50, 90])
    return float(p50), float(p90)


def _throughput(detector: Detector, frames: Sequence[np.ndarray], batch: int, runs: int) -> float:
    """Images per second at ``batch``; the fast path keeps two batches in flight."""
    chunk = [frames[i % len(frames)] for i in range(batch)]
    backend = detector.backend
    if backend.takes_frames:
        submit, collect = backend.submit, backend.collect  # type: ignore[attr-defined]
        collect(submit(chunk, bgr=True))  # warm: builds this batch size's CUDA graph
        t0 = time.perf_counter()
        pending = submit(chunk, bgr=True)
        for _ in range(runs - 1):
            following = submit(chunk, bgr=True)
            collect(pending)
            pending = following
        collect(pending)
    else:
        detector.detect(chunk)
        t0 = time.perf_counter()
        for _ in range(runs):
            detector.detect(chunk)
    return batch * runs / (time.perf_counter() - t0)


def measure(
    detector: Detector,
    frames: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    iterations: int,
    result: VariantResult,
    batched: bool = True,
) -> None:
    for frame in frames[:5]:  # warm-up: sessions, graphs, caches
        detector.detect(frame)
    times, stages = [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        _, stage_ms = detector.detect_timed([frames[i % len(frames)]])
        times.append((time.perf_counter() - t0) * 1000)
        stages.append(stage_ms)
    result.p50_ms, result.p90_ms = _percentiles(times)
    result.stages_ms = {k: round(float(np.median([s[k] for s in stages])), 4) for k in stages[0]}
    for batch in batch_sizes if batched else ():
        runs = max(3, min(iterations, 2000 // batch))
        log.info("%s: throughput at batch %d", result.label, batch)
        result.images_per_s[batch] = _throughput(detector, frames, batch, runs)


def decode_only_fps(video: str, max_frames: int | None) -> float:
    """Frames per second of reading ``video`` alone, through the same source class."""
    with open_source(video) as source:
        count, t0 = 0, time.perf_counter()
        while (max_frames is None or count < max_frames) and source.read() is not None:
            count += 1
        return count / (time.perf_counter() - t0)


def video_run(detector: Detector, video: str, max_frames: int | None) -> dict[str, Any]:
    """One async pipeline run (what ``ssd-trt detect`` does) against decoding alone, in the
    same run: ``detect`` is limited by decoding when it reaches 90% of the decode-only rate."""
    decode_fps = decode_only_fps(video, max_frames)
    with open_source(video) as source:
        pipeline = Pipeline(detector, source, [], max_frames=max_frames)
        stats = pipeline.run()
    decode = stats.mean_ms("decode")
    detect = sum(stats.mean_ms(s) for s in STAGES if s not in ("decode", "draw", "output"))
    return {
        "backend": detector.backend_name,
        "path": video,
        "frames": stats.frames,
        "fps": stats.fps,
        "decode_only_fps": decode_fps,
        "fps_of_decode_only": stats.fps / decode_fps if decode_fps else 0.0,
        "decode_ms": decode,
        "detect_ms": detect,  # per frame; frames waiting together are detected as one batch
        "limited_by": "decoding" if stats.fps >= 0.9 * decode_fps else "detection",
    }


def run(
    model: str,
    frames: Sequence[np.ndarray],
    *,
    video: str,
    batch_sizes: Sequence[int] = (1, 8, 32, 64),
    iterations: int = 200,
    cache_dir: str | None = None,
    max_frames: int | None = None,
    variants: Sequence[Variant] = GPU_VARIANTS,
) -> SideBySideReport:
    if not frames:
        raise SsdTrtError("no frames to benchmark with")
    if "CUDAExecutionProvider" not in available_providers():
        raise SsdTrtError(
            "bench --backend cuda compares the GPU paths, and ONNX Runtime here has no "
            "CUDAExecutionProvider: on an NVIDIA GPU, pip install 'ssd-trt[gpu]'"
        )
    report = SideBySideReport(model=str(model), machine=machine_info())
    for variant in variants:
        result = VariantResult(variant.label, variant.backend, variant.precision)
        report.variants.append(result)
        log.info("bench: %s", variant.label)
        try:
            source = model
            if variant.max_candidates is not None:
                source = str(
                    ArtifactStore(cache_dir).onnx(model, max_candidates=variant.max_candidates)
                )
            detector = Detector(
                source,
                variant.backend,
                precision=variant.precision,
                cache_dir=cache_dir,
                max_batch=max(batch_sizes),
                score_threshold=0.3,
            )
        except SsdTrtError as exc:
            result.error = str(exc)
            log.warning("%s not run: %s", variant.label, exc)
            continue
        with detector:
            measure(detector, frames, batch_sizes, iterations, result, variant.batched)
            if variant.backend == "cuda" and variant.precision == "fp32":
                report.video = video_run(detector, video, max_frames)
    fast = [v for v in report.variants if v.backend == "cuda"]
    if fast and all(v.error for v in fast):
        raise SsdTrtError(fast[0].error or "the cuda backend cannot run here")
    return report
