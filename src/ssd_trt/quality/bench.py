"""Benchmarks, every backend through the same seam (Detector.submit/collect):

* ``run``: one backend's latency per batch size (the network alone where the backend has host
  stages, else frames in, detections out), per-stage costs on a video, sync vs async FPS;
* ``compare_backends``: several backends and precisions side by side in one run (what
  ``bench --backend cuda`` shows: the GPU paths), each row named by what it runs, with batch-1
  latency, stage times, throughput per batch size and a video run against decoding alone;
* ``precision_table``: network-only and end-to-end latency of FP32/FP16/INT8 in one run.

Numbers are only comparable within one run on one machine; the JSON records the machine.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import progress
from ..detection_batch import STAGES
from ..detector import Detector
from ..errors import SsdTrtError
from ..sources import PacedSource, open_source
from ..store import ArtifactStore
from ..video.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class LatencyResult:
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float


@dataclass
class BenchReport:
    model: str
    backend: str
    machine: dict[str, Any]
    latency: list[LatencyResult] = field(default_factory=list)
    overhead: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    video: dict[str, Any] = field(default_factory=dict)
    latency_of: str = "network"  # "network" alone, or "detector": frames in, detections out
    rows: list[RowResult] = field(default_factory=list)  # compare_backends: one per row

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, result in zip(data["rows"], self.rows, strict=True):
            row["speedup_vs_reference"] = round(self.speedup(result), 2)
        return data

    def speedup(self, result: RowResult) -> float:
        """How many times faster than the reference row at batch-1 p50 (0: unknown)."""
        base = next((r for r in self.rows if r.reference), None)
        if base is None or not base.p50_ms or not result.p50_ms:
            return 0.0
        return base.p50_ms / result.p50_ms

    def table(self) -> str:
        if self.rows:
            return self._rows_table()
        lines = [f"model {self.model}  backend {self.backend}  ({self.machine.get('cpu', '?')})"]
        if self.latency:
            what = "the network alone" if self.latency_of == "network" else "frames to detections"
            lines.append(f"batch   p50 ms   p90 ms   p99 ms   images/s   ({what})")
            for r in self.latency:
                lines.append(
                    f"{r.batch:5d} {r.p50_ms:8.2f} {r.p90_ms:8.2f} {r.p99_ms:8.2f} "
                    f"{r.images_per_s:10.1f}"
                )
        if self.overhead:
            o = self.overhead
            lines.append(
                f"batch 1: backend {o['backend_ms']:.2f} ms, Detector.detect {o['detect_ms']:.2f}"
                f" ms (+{o['overhead_pct']:.1f}%)"
            )
        if self.stages_ms:
            lines.append(
                "per-stage mean ms: " + ", ".join(f"{k} {v:.2f}" for k, v in self.stages_ms.items())
            )
        if self.video:
            v = self.video
            lines.append(
                f"video {v['frames']} frames: sync {v['sync_fps']:.1f} FPS, async "
                f"{v['async_fps']:.1f} FPS ({v['async_over_sync']:.2f}x)"
            )
        return "\n".join(lines)

    def _rows_table(self) -> str:
        sizes = sorted({b for r in self.rows for b in r.images_per_s})
        ref = next((r.label for r in self.rows if r.reference), "")
        head = f"{'backend':<52} {'p50 ms':>7} {'p90 ms':>7} {'x ref':>6}"
        head += "".join(f" {'b' + str(b) + ' img/s':>11}" for b in sizes)
        gpu = (self.machine.get("gpus") or [self.machine.get("cpu")])[0]
        lines = [f"model {self.model}  ({gpu}); x ref: times faster than {ref}", head]
        for r in self.rows:
            if r.error:
                lines.append(f"{r.label:<52} not run: {r.error}")
                continue
            row = f"{r.label:<52} {r.p50_ms:7.2f} {r.p90_ms:7.2f} {self.speedup(r):6.1f}"
            row += "".join(
                f" {r.images_per_s[b]:11.0f}" if b in r.images_per_s else f" {'-':>11}"
                for b in sizes
            )
            lines.append(row)
        lines.append("batch-1 stages, median ms:")
        for r in self.rows:
            if r.stages_ms:
                stages = ", ".join(f"{k} {ms:.3f}" for k, ms in r.stages_ms.items())
                lines.append(f"  {r.label}: {stages}")
        if self.video:
            w = self.video
            lines.append(
                f"video ({w['backend']}): {w['fps']:.0f} FPS = {w['fps_of_decode_only']:.0%} of "
                f"decoding alone ({w['decode_only_fps']:.0f} FPS); per frame decode "
                f"{w['decode_ms']:.2f} ms, detection {w['detect_ms']:.2f} ms: limited by "
                f"{w['limited_by']}"
            )
        return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for module in ("onnxruntime", "cv2"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            pass
    try:
        import onnxruntime

        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if gpus.returncode == 0:
            info["gpus"] = gpus.stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def _timed(fn: Any, iterations: int, warmup: int, desc: str = "") -> np.ndarray:
    # A bar per timed loop: a large batch on a slow CPU runs for tens of seconds. Its update
    # costs microseconds, outside the timed call.
    with progress.bar(warmup + iterations, desc or "timing", "run", leave=False) as bar:
        for _ in range(warmup):
            fn()
            bar.update(1)
        times = np.empty(iterations)
        for i in range(iterations):
            t0 = time.perf_counter()
            fn()
            times[i] = (time.perf_counter() - t0) * 1000
            bar.update(1)
    return times


def latency(
    detector: Detector,
    images: list[np.ndarray],
    batch_sizes: list[int],
    iterations: int,
    warmup: int,
) -> list[LatencyResult]:
    """Per batch size: the network alone where the backend has host stages, else the whole
    seam (frames in, detections out)."""
    out = []
    for b in batch_sizes:
        log.info("latency at batch %d (%d runs)", b, iterations)
        chunk = [images[i % len(images)] for i in range(b)]
        if detector.has_host_stages:
            batch = detector.preprocess(chunk)
            fn = lambda batch=batch: detector.infer(batch)  # noqa: E731
        else:
            fn = lambda chunk=chunk: detector.detect(chunk)  # noqa: E731
        t = _timed(fn, iterations, warmup, f"batch {b}")
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        out.append(LatencyResult(b, float(p50), float(p90), float(p99), b * 1000 / float(p50)))
    return out


def detect_overhead(
    detector: Detector, image: np.ndarray, iterations: int, warmup: int
) -> dict[str, float]:
    """Detector.detect (all stages) against the bare network call."""
    log.info("Detector.detect overhead at batch 1")
    batch = detector.preprocess([image])
    # Interleave the two so drifting machine load hits both alike.
    backend, detect = [], []
    for _ in range(3):
        backend.append(np.median(_timed(lambda: detector.infer(batch), iterations, warmup)))
        detect.append(np.median(_timed(lambda: detector.detect(image), iterations, warmup)))
    b, d = float(np.median(backend)), float(np.median(detect))
    return {"backend_ms": b, "detect_ms": d, "overhead_pct": (d / b - 1) * 100}


def video_run(
    detector: Detector, video: str, sync: bool, max_frames: int | None, fps: float | None = None
) -> Pipeline:
    """One pipeline run over ``video``; with ``fps`` the file is delivered at that rate."""
    source = open_source(video)
    if fps:
        source = PacedSource(source, fps)
    known = [n for n in (max_frames, source.frame_count) if n]
    total = min(known) if known else None
    with source, progress.bar(total, "sync" if sync else "async", "frame", leave=False) as bar:
        pipeline = Pipeline(
            detector,
            source,
            [],
            sync=sync,
            max_frames=max_frames,
            on_frame=lambda _: bar.update(1),
        )
        pipeline.run()
    return pipeline


def first_frames(video: str, n: int) -> list[np.ndarray]:
    with open_source(video) as source:
        frames = [f.image for f, _ in zip(source, range(n), strict=False)]
    if not frames:
        raise SsdTrtError(f"{video} yielded no frames to benchmark with")
    return frames


def first_frame(video: str) -> np.ndarray:
    return first_frames(video, 1)[0]


def run(
    detector: Detector,
    video: str,
    batch_sizes: list[int],
    iterations: int = 50,
    warmup: int = 5,
    max_frames: int | None = None,
    paced_fps: float | None = None,
) -> BenchReport:
    """All measurements; ``paced_fps`` delivers the video at that rate, like a camera."""
    model = detector.model_path.name if detector.model_path else ""
    report = BenchReport(model=model, backend=detector.backend_name, machine=machine_info())
    frames = first_frames(video, 16)
    report.latency = latency(detector, frames, batch_sizes, iterations, warmup)
    if detector.has_host_stages:  # else there is no network call alone to compare with
        report.overhead = detect_overhead(detector, frames[0], max(10, iterations // 3), warmup)
    else:
        report.latency_of = "detector"
    # Sync, async, async, sync: evens out warm-up and drifting load.
    runs: dict[bool, list[Pipeline]] = {True: [], False: []}
    for n, sync in enumerate((True, False, False, True)):
        log.info("video run %d/4 (%s) over %s", n + 1, "sync" if sync else "async", video)
        runs[sync].append(video_run(detector, video, sync, max_frames, paced_fps))
    sync_fps = float(np.mean([p.stats.fps for p in runs[True]]))
    async_fps = float(np.mean([p.stats.fps for p in runs[False]]))
    stages = runs[True][0].stats
    # The stages the video engine times, in the one vocabulary's order.
    report.stages_ms = {s: round(stages.mean_ms(s), 3) for s in STAGES if s in stages.stage_count}
    report.video = {
        "path": str(video),
        "paced_fps": paced_fps,
        "frames": stages.frames,
        "sync_fps": sync_fps,
        "async_fps": async_fps,
        "async_over_sync": async_fps / sync_fps if sync_fps else 0.0,
        "async_dropped": sum(p.stats.dropped for p in runs[False]),
    }
    return report


# ----------------------------------------------------------------- backends side by side


@dataclass(frozen=True)
class Row:
    """One backend and precision to measure; ``label`` says what it runs."""

    label: str
    backend: str
    precision: str
    max_candidates: int | None = None  # the export's candidate cap; None: the default export
    batched: bool = True  # measure throughput at every batch size, not only latency
    reference: bool = False  # the row the others' speed-up is against


UNCAPPED = "onnxruntime-cuda, NMS in graph over all 172k candidates"
ORT_CUDA = "onnxruntime-cuda, NMS in graph"
GPU_ROWS = (
    # The path before the candidate cap (about 17 ms on an H100), batch 1 only.
    Row(UNCAPPED, "onnxruntime-cuda", "fp32", max_candidates=0, batched=False),
    Row(ORT_CUDA, "onnxruntime-cuda", "fp32", reference=True),
    Row("onnxruntime-cpu, NMS in graph", "cpu", "fp32"),
    Row("cuda (GPU fast path, NMS on the GPU), fp32", "cuda", "fp32"),
    Row("cuda (GPU fast path, NMS on the GPU), fp16", "cuda", "fp16"),
)


@dataclass
class RowResult:
    label: str
    backend: str
    precision: str
    reference: bool = False
    p50_ms: float = 0.0  # batch 1, host frame -> host detections
    p90_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)  # batch 1, medians
    images_per_s: dict[int, float] = field(default_factory=dict)  # per batch size
    error: str | None = None  # why the row could not run here


def throughput(detector: Detector, frames: Sequence[np.ndarray], batch: int, runs: int) -> float:
    """Images per second at ``batch``, through the seam: two batches in flight where the
    backend queues work, else one after the other."""
    chunk = [frames[i % len(frames)] for i in range(batch)]
    detector.detect(chunk)  # warm: the GPU fast path builds this batch size's CUDA graph
    t0 = time.perf_counter()
    if detector.supports_submit:
        pending = detector.submit(chunk)
        for _ in range(runs - 1):
            following = detector.submit(chunk)
            detector.collect(pending)
            pending = following
        detector.collect(pending)
    else:
        for _ in range(runs):
            detector.detect(chunk)
    return batch * runs / (time.perf_counter() - t0)


def measure_row(
    detector: Detector,
    frames: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    iterations: int,
    result: RowResult,
    batched: bool = True,
) -> None:
    """Batch-1 latency and stage times end to end, then throughput per batch size."""
    for frame in frames[:5]:  # warm-up: sessions, graphs, caches
        detector.detect(frame)
    times, stages = [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        _, stage_ms = detector.detect_timed([frames[i % len(frames)]])
        times.append((time.perf_counter() - t0) * 1000)
        stages.append(stage_ms)
    p50, p90 = np.percentile(times, [50, 90])
    result.p50_ms, result.p90_ms = float(p50), float(p90)
    result.stages_ms = {k: round(float(np.median([s[k] for s in stages])), 4) for k in stages[0]}
    for batch in batch_sizes if batched else ():
        runs = max(3, min(iterations, 2000 // batch))
        log.info("%s: throughput at batch %d", result.label, batch)
        result.images_per_s[batch] = throughput(detector, frames, batch, runs)


def decode_only_fps(video: str, max_frames: int | None) -> float:
    """Frames per second of reading ``video`` alone, through the same source class."""
    with open_source(video) as source:
        count, t0 = 0, time.perf_counter()
        while (max_frames is None or count < max_frames) and source.read() is not None:
            count += 1
        return count / (time.perf_counter() - t0)


def decode_limit(detector: Detector, video: str, max_frames: int | None) -> dict[str, Any]:
    """One async video run (what ``ssd-trt detect`` does) against decoding alone, in the same
    run: ``detect`` is limited by decoding when it reaches 90% of the decode-only rate."""
    decode_fps = decode_only_fps(video, max_frames)
    stats = video_run(detector, video, False, max_frames).stats
    decode = stats.mean_ms("decode")
    detected = [s for s in STAGES if s not in ("decode", "track", "draw", "output")]
    detect = sum(stats.mean_ms(s) for s in detected if s in stats.stage_count)
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


def compare_backends(
    model: str,
    frames: Sequence[np.ndarray],
    *,
    video: str,
    rows: Sequence[Row] = GPU_ROWS,
    batch_sizes: Sequence[int] = (1, 8, 32, 64),
    iterations: int = 200,
    cache_dir: str | None = None,
    max_frames: int | None = None,
    needs: str = "cuda",
) -> BenchReport:
    """Every row measured alike through the seam, in one run; the first ``needs`` row that
    runs also gets the video run. One clear error when no ``needs`` row can run here."""
    if not frames:
        raise SsdTrtError("no frames to benchmark with")
    from ..runtime.registry import unusable  # checked before any export

    why = unusable(needs)
    if why is not None:
        raise SsdTrtError(why)
    report = BenchReport(model=str(model), backend=needs, machine=machine_info())
    report.latency_of = "detector"
    for row in rows:
        result = RowResult(row.label, row.backend, row.precision, reference=row.reference)
        report.rows.append(result)
        log.info("bench: %s", row.label)
        try:
            source = model
            if row.max_candidates is not None:
                store = ArtifactStore(cache_dir)
                source = str(store.onnx(model, max_candidates=row.max_candidates))
            detector = Detector(
                source,
                row.backend,
                precision=row.precision,
                cache_dir=cache_dir,
                max_batch=max(batch_sizes),
                score_threshold=0.3,
            )
        except SsdTrtError as exc:
            result.error = str(exc)
            log.warning("%s not run: %s", row.label, exc)
            continue
        with detector:
            measure_row(detector, frames, batch_sizes, iterations, result, row.batched)
            if row.backend == needs and not report.video:
                report.video = decode_limit(detector, video, max_frames)
    wanted = [r for r in report.rows if r.backend == needs]
    if wanted and all(r.error for r in wanted):
        raise SsdTrtError(wanted[0].error or f"the {needs} backend cannot run here")
    return report


# ------------------------------------------------------------------------------ precisions


@dataclass
class PrecisionResult:
    precision: str
    model_path: str
    network_ms: float  # p50, batch 1: the network alone (no NMS)
    detect_ms: float  # p50, batch 1: Detector.detect, preprocessing to Detections
    network_speedup: float = 1.0  # FP32's p50 / this p50
    detect_speedup: float = 1.0


@dataclass
class PrecisionReport:
    model: str
    backend: str
    machine: dict[str, Any]
    threads: int | None
    network_model: str  # what network_ms ran: the --nms none export, or the model itself
    results: list[PrecisionResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"model {self.model}  backend {self.backend}  threads {self.threads or 'default'}  "
            f"({self.machine.get('cpu', '?')})",
            "precision  network p50 ms  speed-up  end-to-end p50 ms  speed-up",
        ]
        for r in self.results:
            lines.append(
                f"{r.precision:9s} {r.network_ms:14.2f} {r.network_speedup:8.2f}x "
                f"{r.detect_ms:18.2f} {r.detect_speedup:8.2f}x"
            )
        return "\n".join(lines)


def precision_table(
    open_detector: Callable[[str, str], Detector],
    precisions: Sequence[str],
    image: np.ndarray,
    network_model: str,
    model: str,
    iterations: int = 50,
    rounds: int = 5,
    warmup: int = 3,
) -> PrecisionReport:
    """p50 latency of each precision, network alone and end to end, at batch 1 on ``image``.

    ``open_detector(model, precision)`` opens a Detector; ``network_model`` is a graph without
    NMS (``--nms none``), so its ``infer`` is the network alone, and ``model`` the one whose
    ``detect`` is timed end to end. The precisions are timed in turns, ``rounds`` times, so
    drifting load on a shared machine hits them alike. FP32 must come first (the reference).
    """
    if not precisions or precisions[0] != "fp32":
        raise SsdTrtError("the precision table needs fp32 first, as the reference")
    nets = {p: open_detector(network_model, p) for p in precisions}
    full = {p: open_detector(model, p) for p in precisions}
    try:
        batch = nets["fp32"].preprocess([image])
        times: dict[str, dict[str, list[float]]] = {p: {"net": [], "e2e": []} for p in precisions}
        per_round = max(1, iterations // rounds)
        for n in range(rounds):
            log.info("precision table: round %d/%d", n + 1, rounds)
            for p in precisions:
                infer = lambda net=nets[p]: net.infer(batch)  # noqa: E731
                detect = lambda det=full[p]: det.detect(image)  # noqa: E731
                times[p]["net"] += list(_timed(infer, per_round, warmup))
                times[p]["e2e"] += list(_timed(detect, per_round, warmup))
        report = PrecisionReport(
            model=str(model),
            backend=full["fp32"].backend_name,
            machine=machine_info(),
            threads=full["fp32"].threads,
            network_model=str(network_model),
        )
        for p in precisions:
            report.results.append(
                PrecisionResult(
                    precision=p,
                    model_path=str(full[p].model_path),
                    network_ms=float(np.median(times[p]["net"])),
                    detect_ms=float(np.median(times[p]["e2e"])),
                )
            )
    finally:
        for d in (*nets.values(), *full.values()):
            d.close()
    ref = report.results[0]
    for r in report.results:
        r.network_speedup = ref.network_ms / r.network_ms
        r.detect_speedup = ref.detect_ms / r.detect_ms
    return report


# -------------------------------------------------------------------------- memory check


# Activations, outputs and copies of one 300x300 image through an SSD in ONNX Runtime, as a
# multiple of its float32 input (1.08 MB): a generous bound, so a batch that passes this check
# is not refused for memory it would have had.
_BYTES_PER_INPUT_BYTE = 20


def available_memory() -> int | None:
    """Bytes of memory available for new allocations (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_batch_memory(batch_sizes: list[int], input_hw: tuple[int, int] = (300, 300)) -> None:
    """Refuse, before any model work, batch sizes whose memory this machine does not have."""
    free = available_memory()
    if free is None:
        return
    per_image = 3 * input_hw[0] * input_hw[1] * 4 * _BYTES_PER_INPUT_BYTE
    largest = max(batch_sizes)
    if largest * per_image > free:
        fits = max(1, free // per_image)
        raise SsdTrtError(
            f"--batch-sizes {largest} needs about {largest * per_image / 2**30:.0f} GiB "
            f"({per_image / 2**20:.0f} MiB per image), but {free / 2**30:.1f} GiB is available; "
            f"use batch sizes up to {fits}, e.g. --batch-sizes 1,2,4,8"
        )
