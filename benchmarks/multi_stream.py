"""How many 720p camera streams at 30 FPS one GPU sustains: ``detect`` over many sources, batched.

The test video: Debian opencv-doc's vtest.avi (768x576, 795 frames of pedestrians, a real CCTV
view) scaled to 1280x960 (aspect kept, bicubic) and centre-cropped to 1280x720, every source
frame kept once and stamped at 30 FPS (so people walk 3x faster than they did; every frame
is a distinct real picture), encoded as cameras send it: H.264 High profile with 2 B-frames
between references, a keyframe every 2 s, 4 Mbit/s, BT.709 declared (PyAV's libx264, preset
fast; the frames are converted to YUV with the BT.709 matrix), in MP4. Make it once and carry
the file to the GPU machine::

    python benchmarks/multi_stream.py --make-video            # -> ~/.cache/ssd_trt/media/...

(Before Dec 5 2026 the file was GStreamer's openh264enc output, Constrained Baseline without
B-frames, named vtest_720p30_h264.mp4; the H200 stream sweeps of Dec 5 ran on that file.)

Each run opens N streams of that file, each played at 30 FPS like a camera (``PacedSource``:
its own decoder, stale frames dropped when inference falls behind), through
``video.engine.Engine`` (frames of all streams batched, up to --max-batch per call). A
stream count is sustained when every stream had >= 99% of the frames it read detected (stale
frames dropped at most 1%) and the p99 capture-to-output latency is <= 100 ms. The sweep stops
at the first count that is not sustained (``--keep-going``: runs every count). Drawing and file
outputs are off: this measures detection, not the encoder.

Each run also says where host time went: CPU seconds per thread role (capture = the Python read
loop and, with one FFmpeg thread, the decode itself; ffmpeg/native = threads Python did not
start: FFmpeg's decoder threads, ONNX Runtime's, CUDA's; batcher; emitters), sampled from
/proc/self/task; the batcher thread's own wall-time split (waiting for frames, submit = packing
into pinned memory and queueing the GPU, collect = waiting for the GPU + postprocess, hand-out);
GPU busy share from the fast path's CUDA-event stage times; decode wall ms per frame; and how
late a 1 ms sleep wakes up (p50/p99: a GIL-contention gauge, the waker must take the GIL).
``--no-overlap`` and ``--decode-threads 0`` give the behaviour before two batches in flight
and shared-out decoder threads, for comparison.

``--track [KIND]`` / ``--track-option KEY=VALUE`` (as on ``ssd-trt detect``; no KIND:
ByteTrack) give every stream its own tracker in its emitter, as ``detect --track`` does;
``--compare-track`` runs each stream count twice in the same process, without and then with
tracking, and prints and saves both side by side (sustained, worst stream's delivered share, p99
latency, CPU cores busy, the track stage's wall ms per frame from the stage times, and the
emitter threads' CPU ms per frame: tracking's CPU cost is the difference). The sweep then stops at
the first count where neither is sustained. Each run records the machine's 1-minute load
average before and after it: on a shared machine, others' work shows there.

    python benchmarks/multi_stream.py --backend cuda --streams 8,16,24,32,40,48   # GPU machine
    VIDEO_720P=... MODEL_ONNX=... bash benchmarks/multi_stream_gpu.sh OUTDIR   # all of issue 12
    python benchmarks/multi_stream.py --backend cpu --streams 1,2 --fps 5 --seconds 8   # CPU
    python benchmarks/multi_stream.py --backend cuda --streams 16,32,48 --compare-track

Results (JSON, with machine details) go to benchmarks/results/multi-stream-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from ssd_trt.cli.groups import positive_int, track_group, track_settings
from ssd_trt.detector import Detector
from ssd_trt.errors import SsdTrtError, require
from ssd_trt.fsutil import atomic_write
from ssd_trt.quality.bench import machine_info
from ssd_trt.runtime.gpu import backend as gpu_backend
from ssd_trt.sources import Frame, PacedSource, Source, open_source
from ssd_trt.store import ArtifactStore
from ssd_trt.video.app import decode_threads_for, open_decoded
from ssd_trt.video.decode import nvdec_missing, shared_decoders
from ssd_trt.video.engine import Engine
from ssd_trt.video.outputs import Output
from ssd_trt.video.stats import STAGES, RunStats
from ssd_trt.video.tracks import LaneTracking, TrackSettings

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SIZE = (1280, 720)


def test_video() -> Path:
    return ArtifactStore().root / "media" / "vtest_720p30_high.mp4"


# libx264 settings of a typical IP camera stream (High profile, B-frames, 2 s GOP, 4 Mbit/s).
CAMERA_X264 = {
    "profile": "high",
    "preset": "fast",
    "x264-params": "bframes=2:keyint=60:min-keyint=60:scenecut=0"
    ":colorprim=bt709:transfer=bt709:colormatrix=bt709",
}


def vtest_720p(count: int | None = None) -> Iterator[np.ndarray]:
    """vtest.avi's frames (its first ``count``) scaled and cropped to 1280x720, BGR."""
    cap = cv2.VideoCapture(str(VTEST))
    try:
        n = 0
        while count is None or n < count:
            ok, frame = cap.read()
            if not ok:
                return
            big = cv2.resize(frame, (1280, 960), interpolation=cv2.INTER_CUBIC)
            yield np.ascontiguousarray(big[120:840])
            n += 1
    finally:
        cap.release()


def encode_camera_like(frames: Iterable[np.ndarray], dest: Path, fps: int = 30) -> None:
    """BGR frames into ``dest`` (MP4) as an IP camera encodes them: ``CAMERA_X264``."""
    av = require("av", "video")
    with av.open(str(dest), "w", format="mp4") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.pix_fmt, stream.bit_rate, stream.options = "yuv420p", 4_000_000, CAMERA_X264
        for image in frames:
            if not stream.codec_context.is_open:  # the size, from the first frame
                stream.height, stream.width = image.shape[:2]
            picture = av.VideoFrame.from_ndarray(image, "bgr24")
            box.mux(stream.encode(picture.reformat(format="yuv420p", dst_colorspace="ITU709")))
        box.mux(stream.encode(None))


def make_video() -> Path:
    """The camera-like test video (see the module doc), written to a temp file and renamed."""
    out = test_video()
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".partial_" + out.name)
    try:
        encode_camera_like(vtest_720p(), tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return out


class _Latencies(Output):
    """Keeps each frame's capture-to-output latency (the only output of the benchmark)."""

    shows_image = False  # no pixels: a frame decoded on the GPU is never downloaded

    def __init__(self) -> None:
        self.values: list[float] = []
        self.lock = threading.Lock()

    def write(self, result, annotated) -> None:
        with self.lock:
            self.values.append(result.latency_ms)


class _TimedSource(Source):
    """Adds up the wall time of the inner source's reads (the decode, for a file)."""

    def __init__(self, inner: Source) -> None:
        super().__init__(inner.description)
        self.inner, self.fps, self.frame_count = inner, inner.fps, inner.frame_count
        self.seconds, self.reads = 0.0, 0

    def read(self) -> Frame | None:
        t0 = time.perf_counter()
        frame = self.inner.read()
        self.seconds += time.perf_counter() - t0
        self.reads += frame is not None
        self.frames_skipped = self.inner.frames_skipped
        return frame

    def close(self) -> None:
        self.inner.close()


_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(tid: int) -> float:
    """A thread's CPU seconds: schedstat's nanoseconds where the kernel has them; stat's clock
    ticks (10 ms) otherwise, which round a sleeping camera thread's few microseconds per frame
    down to nothing, however many such threads there are."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except FileNotFoundError:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


def _role(name: str) -> str:
    for prefix, role in (("ssd-trt-cap", "capture"), ("ssd-trt-emit", "emit")):
        if name.startswith(prefix):
            return role
    return {"ssd-trt-batcher": "batcher", "MainThread": "main"}.get(name, "bench")


class ThreadCpu:
    """CPU seconds per thread role over a run, from /proc/self/task/<tid> (``thread_cpu_s``),
    sampled every 0.2 s so threads that end are counted up to their last sample. Threads
    Python did not start (FFmpeg's, ONNX Runtime's, CUDA's) count as ``ffmpeg/native``. The
    same thread samples how late a 1 ms sleep wakes: with the GIL held by others it waits."""

    def __init__(self) -> None:
        self.comm: dict[int, str] = {}
        self.base = self._read()
        self.last = dict(self.base)
        self.roles: dict[int, str] = {}
        self.wake_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def _read(self) -> dict[int, float]:
        times = {}
        for name in os.listdir("/proc/self/task"):
            tid = int(name)
            try:
                times[tid] = thread_cpu_s(tid)
                if tid not in self.comm:
                    # Native threads by their OS name, digits dropped (FFmpeg's "av:h264:df0").
                    with open(f"/proc/self/task/{tid}/comm") as f:
                        self.comm[tid] = re.sub(r"\d+", "#", f.read().strip())
            except OSError:  # the thread ended meanwhile
                continue
        return times

    def _sample(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self.roles.setdefault(t.native_id, _role(t.name))
        self.last.update(self._read())

    def _loop(self) -> None:
        next_sample = time.perf_counter()
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            self.wake_ms.append((time.perf_counter() - t) * 1000 - 1.0)
            if t >= next_sample:
                self._sample()
                next_sample = t + 0.2

    def __enter__(self) -> ThreadCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0

    def report(self) -> dict[str, object]:
        by_role: dict[str, float] = {}
        native: dict[str, float] = {}
        for tid, cpu in self.last.items():
            used = cpu - self.base.get(tid, 0.0)
            role = self.roles.get(tid, "ffmpeg/native")
            by_role[role] = by_role.get(role, 0.0) + used
            if role == "ffmpeg/native":
                name = self.comm.get(tid, "?")
                native[name] = native.get(name, 0.0) + used
        wake = np.array(self.wake_ms or [0.0])
        return {
            "wall_s": round(self.wall, 2),
            "process_cpu_s": round(self.cpu, 2),
            "cores_busy": round(self.cpu / self.wall, 2),
            "cpu_s_by_role": {k: round(v, 4) for k, v in sorted(by_role.items())},
            "native_cpu_s_by_thread_name": {
                k: round(v, 2) for k, v in sorted(native.items(), key=lambda kv: -kv[1])[:8]
            },
            "threads_seen": len(self.last),
            "wake_late_ms_p50": round(float(np.percentile(wake, 50)), 2),
            "wake_late_ms_p99": round(float(np.percentile(wake, 99)), 2),
            "wake_late_ms_max": round(float(wake.max()), 2),
        }


class GpuUtilisation:
    """``nvidia-smi``'s GPU and decoder (NVDEC) utilisation, sampled every 500 ms during a run;
    nothing where there is no nvidia-smi."""

    QUERY = "--query-gpu=utilization.gpu,utilization.decoder"

    def __enter__(self) -> GpuUtilisation:
        self.samples: list[tuple[float, float]] = []
        cmd = ["nvidia-smi", self.QUERY, "--format=csv,noheader,nounits", "-lms", "500"]
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._proc = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        for line in out.splitlines():
            try:
                gpu, dec = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue  # a field this driver does not know: no numbers
            self.samples.append((gpu, dec))

    def report(self) -> dict[str, float | None]:
        if not self.samples:
            return {"smi_gpu_util": None, "nvdec_util": None}
        gpu, dec = np.asarray(self.samples).mean(axis=0) / 100
        return {"smi_gpu_util": round(float(gpu), 3), "nvdec_util": round(float(dec), 3)}


def limiter(row: dict) -> str:
    """What held a run back, from its own measurements: the network (the GPU's compute stream
    busy), NVDEC, the one batcher thread (never waiting for frames), else the host threads
    that capture and hand frames on. For processes side by side, the whole GPU's busy share
    (nvidia-smi) where there is one: their contexts take turns on the GPU, so each one's own
    compute spans take in the others' turns and add up past 100%."""
    smi = row.get("smi_gpu_util")
    whole = (row.get("processes") or 1) > 1 and smi is not None
    gpu = smi if whole else row["gpu_busy"] or 0.0
    dec = row.get("nvdec_util") or 0.0
    wait = row["batcher_share"].get("wait", 1.0)
    if gpu >= 0.85:
        what = "was busy" if whole else "computed"
        return f"network: the GPU {what} {gpu:.0%} of the time"
    if dec >= 0.85:
        return f"NVDEC: busy {dec:.0%} of the time"
    if wait < 0.1:
        return f"the batcher thread: it waited for frames only {wait:.0%} of the time"
    return (
        f"host threads (capture, hand-off): GPU computed {gpu:.0%}, NVDEC busy {dec:.0%}, "
        f"batcher idle {wait:.0%}"
    )


def run(
    detector: Detector,
    video: Path,
    streams: int,
    fps: float,
    seconds: float,
    batch: int,
    *,
    overlap: bool = True,
    decode_threads: int | None = None,
    max_wait_ms: float = 10.0,
    track: TrackSettings | None = None,
    decode: str = "cpu",
) -> dict[str, object]:
    """``decode_threads``: FFmpeg threads per stream; None: decode_threads_for(streams), 0:
    FFmpeg's default (one per core). ``track``: a tracker per stream, as ``detect --track``.
    ``decode``: "cpu" (OpenCV/FFmpeg) or "nvdec" (the GPU's decoder, frames stay on the GPU)."""
    frames = int(fps * seconds)
    threads = decode_threads_for(streams) if decode_threads is None else decode_threads
    decoders = shared_decoders([decode])  # as open_sources: capabilities asked once
    timed = [
        _TimedSource(
            open_decoded(str(video), decode, decode_threads=threads or None, decoders=decoders)
        )  # fmt: skip
        for _ in range(streams)
    ]
    sources = [PacedSource(t, fps) for t in timed]
    outs = [_Latencies() for _ in range(streams)]
    names = [f"cam{i}" for i in range(streams)]
    # As video.app.run_multi builds it for detect --track: one tracker per source, its rate.
    tracking = (
        [LaneTracking.for_source(track, s, n) for s, n in zip(sources, names, strict=True)]
        if track
        else None
    )
    pipeline = Engine(
        detector,
        sources,
        [[o] for o in outs],
        names,
        max_batch=batch,
        max_wait_ms=max_wait_ms,
        max_frames=frames,
        draw=False,
        overlap=overlap,
        tracking=tracking,
    )
    load = os.getloadavg()[0]  # the machine's load (others' work too) when the run began
    try:
        with ThreadCpu() as cpu, GpuUtilisation() as util:
            stats = pipeline.run()
    finally:
        for s in sources:
            s.close()
    host = cpu.report()
    # The emitters' CPU (lane 0's runs on the calling thread): tracking, plus the outputs.
    emit_s = host["cpu_s_by_role"].get("emit", 0.0) + host["cpu_s_by_role"].get("main", 0.0)
    latencies = np.concatenate([o.values for o in outs]) if stats.frames else np.zeros(1)
    # Each stream runs until it has processed ``frames``: what a live stream lost on the way
    # shows as drops, so the share processed is frames / (frames + dropped).
    delivered = [s.frames / max(1, s.frames + s.dropped) for s in stats.sources.values()]
    p99 = float(np.percentile(latencies, 99))
    reads = sum(t.reads for t in timed)
    # The GPU's compute stream: resize + network + NMS (the upload of large batches runs on a
    # second stream, beside the previous batch's network).
    gpu_ms = 0.0
    if "upload" in stats.stage_ms:  # the fast path's CUDA-event stage times
        gpu_ms = sum(stats.stage_ms.get(k, 0.0) for k in ("preprocess", "inference", "nms"))
    row = {
        "streams": streams,
        "target_fps": fps,
        "frames_per_stream": frames,
        "delivered_min": round(min(delivered), 4),
        "dropped": sum(s.dropped for s in stats.sources.values()),
        "fps_total": round(stats.frames / stats.seconds, 1),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p99": round(p99, 1),
        "mean_batch": round(stats.mean_batch, 2),
        "sustained": min(delivered) >= 0.99 and p99 <= 100.0,
        "overlap": pipeline.depth > 1,
        "overlapped_batches": stats.overlapped_batches,
        "batches": stats.batches,
        "decode_threads": threads or "ffmpeg default",
        "decode_ms_per_frame": round(sum(t.seconds for t in timed) / max(1, reads) * 1000, 2),
        "gpu_busy": round(gpu_ms / 1000 / stats.seconds, 3) if gpu_ms else None,
        "gpu_span_busy": round(stats.inference_ms / 1000 / stats.seconds, 3),
        "stage_ms_per_batch": {
            k: round(v / max(1, stats.batches), 3) for k, v in sorted(stats.stage_ms.items())
        },
        **track_fields(stats, track),
        "emit_cpu_ms_per_frame": round(emit_s / max(1, stats.frames) * 1000, 3),
        "batcher_share": {k: round(v / stats.seconds, 3) for k, v in stats.batcher_s.items()},
        "host": host,
        "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
        **util.report(),
    }
    row["limited_by"] = limiter(row)
    return row


def track_fields(stats: RunStats, track: TrackSettings | None) -> dict[str, object]:
    """A run's tracker, its mean ms per frame of every pipeline stage that ran (the track stage
    is the emitters' tracker updates) and the distinct tracks it saw over all streams."""
    tracks = stats.tracks
    return {
        "track": track.kind if track else None,
        "track_options": list(track.options) if track else [],
        # Not decode: a paced source's read waits for the frame's due time (decode_ms_per_frame
        # is the decode alone).
        "stage_ms_per_frame": {
            s: round(stats.mean_ms(s), 3) for s in STAGES if stats.stage_count[s] and s != "decode"
        },
        "track_ms_per_frame": round(stats.mean_ms("track"), 3) if track else None,
        "tracks": sum(tracks.values()) if tracks is not None else None,
    }


def best_sustained(rows: list[dict], tracked: bool) -> int:
    """The most streams sustained by the rows run with (``tracked``) or without a tracker."""
    return max(
        (r["streams"] for r in rows if r["sustained"] and (r["track"] is not None) == tracked),
        default=0,
    )


def side_by_side(rows: list[dict]) -> list[dict[str, object]]:
    """Per stream count, the run without tracking and the one with it (--compare-track)."""
    keys = (
        "sustained",
        "delivered_min",
        "latency_ms_p99",
        "track_ms_per_frame",
        "emit_cpu_ms_per_frame",
        "tracks",
    )
    by_count: dict[int, dict[str, object]] = {}
    for r in rows:
        side = "track" if r["track"] is not None else "detect"
        cell = {k: r[k] for k in keys} | {"cores_busy": r["host"]["cores_busy"]}
        by_count.setdefault(r["streams"], {"streams": r["streams"]})[side] = cell
    return [by_count[n] for n in sorted(by_count)]


def table(pairs: list[dict[str, object]]) -> str:
    """The side-by-side rows as text, one line per stream count."""
    cols = f"{'worst%':>7} {'p99 ms':>7} {'cores':>5} {'emit CPU ms':>11}"
    head = f"{'streams':>7} | {'detect: ok':>10} {cols} | {'+track: ok':>10} {cols} {'track ms':>8}"
    lines = [head, "-" * len(head)]
    for pair in pairs:
        cells = []
        for side in ("detect", "track"):
            c = pair.get(side)
            if c is None:
                cells.append(f"{'-':>10} {'':>7} {'':>7} {'':>5} {'':>11}")
                continue
            cells.append(
                f"{'yes' if c['sustained'] else 'NO':>10} {c['delivered_min'] * 100:7.2f} "
                f"{c['latency_ms_p99']:7.1f} {c['cores_busy']:5.2f} "
                f"{c['emit_cpu_ms_per_frame']:11.3f}"
            )
        ms = (pair.get("track") or {}).get("track_ms_per_frame")
        lines.append(
            f"{pair['streams']:>7} | {cells[0]} | {cells[1]} {'' if ms is None else f'{ms:8.3f}'}"
        )
    return "\n".join(lines)


def save(
    out: Path, args: argparse.Namespace, options: dict, backend: str, main: str, rows: list
) -> int:
    """Write the results so far; returns the most streams the main sweep sustained (without
    tracking where --compare-track ran both)."""
    main_rows = [r for r in rows if r["config"] == main]
    best = max((r["streams"] for r in main_rows if r["sustained"]), default=0)
    compare: dict[str, object] = {}
    if args.compare_track:
        best = best_sustained(main_rows, tracked=False)
        compare = {
            "compare_track": True,
            "max_sustained_streams_track": best_sustained(main_rows, tracked=True),
            "side_by_side": side_by_side(main_rows),
        }
    result = {
        "benchmark": "multi_stream",
        "video": str(args.video or test_video()),
        "max_batch": args.max_batch,
        "options": options,
        "backend": backend,
        "model": args.model,
        "criterion": ">= 99% of frames delivered per stream, p99 latency <= 100 ms",
        "max_sustained_streams": best,
        **compare,
        "runs": rows,
        "machine": machine_info(),
    }
    write_json(out, result)
    return best


def write_json(out: Path, result: dict) -> None:
    """The results, whole or not at all (fsutil.atomic_write: a temp file renamed over a
    regular file only; a device or FIFO is written through)."""
    with atomic_write(out) as f:
        f.write((json.dumps(result, indent=2) + "\n").encode())


def warm_up(detector: Detector, video: Path, args: argparse.Namespace, options: dict) -> None:
    """Every network batch size of the fast path's builds its session and graphs now, not
    inside the first measured stream count; then one stream for 2 s, the whole pipeline once."""
    with open_source(str(video)) as src:
        first = src.read().image
    for size in gpu_backend.graph_sizes(args.max_batch):
        detector.detect([first] * size)
    run(detector, video, 1, args.fps, 2.0, args.max_batch, **options)


def combine(rows: list[dict]) -> dict[str, object]:
    """One stream count run as ``--processes`` side by side, as one row: frames and CPU summed,
    the worst process's delivered share and latency (the p99 of all frames together is at most
    the largest of the processes' p99s), the GPU's compute share summed (the processes'
    contexts take turns on it), nvidia-smi's GPU and NVDEC utilisation (the whole GPU's) at
    their largest, the least idle batcher. Each process's own row is kept."""
    streams = sum(r["streams"] for r in rows)
    busy = [r["gpu_busy"] for r in rows if r["gpu_busy"] is not None]
    smi = [r for r in rows if r.get("nvdec_util") is not None]
    row: dict[str, object] = {
        "streams": streams,
        "processes": len(rows),
        "target_fps": rows[0]["target_fps"],
        "frames_per_stream": rows[0]["frames_per_stream"],
        "delivered_min": min(r["delivered_min"] for r in rows),
        "dropped": sum(r["dropped"] for r in rows),
        "fps_total": round(sum(r["fps_total"] for r in rows), 1),
        "latency_ms_p50": max(r["latency_ms_p50"] for r in rows),
        "latency_ms_p99": max(r["latency_ms_p99"] for r in rows),
        "mean_batch": round(sum(r["mean_batch"] for r in rows) / len(rows), 2),
        "sustained": all(r["sustained"] for r in rows),
        "gpu_busy": round(sum(busy), 3) if busy else None,
        "smi_gpu_util": max((r["smi_gpu_util"] for r in smi), default=None),
        "nvdec_util": max((r["nvdec_util"] for r in smi), default=None),
        "batcher_share": min((r["batcher_share"] for r in rows), key=lambda b: b.get("wait", 1)),
        "host": {"cores_busy": round(sum(r["host"]["cores_busy"] for r in rows), 2)},
        "track": None,
        "per_process": rows,
    }
    row["limited_by"] = limiter(row)
    return row


def sharded_sweep(args: argparse.Namespace, video: Path, out: Path) -> int:
    """--processes P: each stream count split over P processes of this script, each with its
    own detector and CUDA context (and so its own GIL), set up and warmed, then started
    together (each says "ready" and waits for "go"), as ``ssd-trt detect --processes`` runs."""
    procs = args.processes
    counts = [int(c) for c in args.streams.split(",")]
    rows: list[dict] = []
    best = 0
    options = {"overlap": not args.no_overlap, "decode_threads": args.decode_threads,
               "max_wait_ms": args.max_wait_ms, "decode": args.decode,
               "processes": procs, "precision": args.precision,
               "graph_sizes": args.graph_sizes or "default"}  # fmt: skip
    for n in counts:
        cmd = [sys.executable, __file__, "--child", "--streams", str(n // procs),
               "--model", args.model, "--backend", args.backend, "--video", str(video),
               "--fps", str(args.fps), "--seconds", str(args.seconds),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--decode", args.decode, "--precision", args.precision]  # fmt: skip
        cmd += ["--no-overlap"] if args.no_overlap else []
        cmd += ["--graph-sizes", args.graph_sizes] if args.graph_sizes else []
        if args.decode_threads is not None:
            cmd += ["--decode-threads", str(args.decode_threads)]
        print(f"measuring {n} streams in {procs} processes", file=sys.stderr, flush=True)
        children = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(procs)
        ]
        try:
            ready = [c.stdout.readline().strip() == "ready" for c in children]  # type: ignore[union-attr]
            if not all(ready):  # the others would measure alone: none does
                raise SsdTrtError(f"{n} streams: a process failed before it was ready (above)")
            for c in children:
                c.stdin.write("go\n")  # type: ignore[union-attr]
                c.stdin.flush()  # type: ignore[union-attr]
            outs = [c.communicate(timeout=args.seconds * 10 + 300)[0] for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
        lines = [[ln for ln in o.splitlines() if ln.startswith("{")] for o in outs]
        if not all(lines) or any(c.returncode for c in children):
            raise SsdTrtError(f"{n} streams: a process failed (its error is above)")
        row = {"config": args.label or "main", **combine([json.loads(x[-1]) for x in lines])}
        rows.append(row)
        print(json.dumps(row), flush=True)
        # Written after every row, as the one-process sweep does.
        best = save(out, args, options, args.backend, row["config"], rows)
        if not row["sustained"] and not args.keep_going:
            break
    print(f"{best} streams of 720p at {args.fps:g} FPS sustained in {procs} processes; wrote {out}")
    for row in rows:
        print(f"  {row['streams']} streams: limited by {row['limited_by']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ssdlite_mobilenet_v2_coco")
    parser.add_argument("--backend", default="auto", help="cuda: the GPU fast path")
    parser.add_argument("--video", help="720p test video (default: made from vtest.avi)")
    parser.add_argument("--make-video", action="store_true", help="only make the test video")
    parser.add_argument("--streams", default="1,2,4,8,16,24,32,40,48")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per stream count")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="batch deadline")
    parser.add_argument("--no-overlap", action="store_true", help="one batch in flight")
    parser.add_argument(
        "--decode",
        choices=("cpu", "nvdec"),
        default="cpu",
        help="cpu: OpenCV/FFmpeg; nvdec: the GPU's hardware decoder (frames stay on the GPU)",
    )
    parser.add_argument(
        "--decode-threads", type=int, help="FFmpeg threads per stream (0: its default)"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every stream count")
    parser.add_argument("--label", default="", help="a name for this configuration")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:STREAMS:OVERLAP:THREADS",
        help="after the sweep, also run these counts with overlap 0/1 and THREADS FFmpeg "
        "threads per stream (0: FFmpeg's default, auto: shared out), every count; e.g. "
        "before:16,24,32:0:0 is the pipeline before two batches in flight",
    )
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/...)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="split each stream count over this many processes side by side (each with its own "
        "detector and GIL), as 'ssd-trt detect --processes' does",
    )
    parser.add_argument(
        "--graph-sizes",
        help="the fast path's network batch sizes, e.g. 1,8,32,64 (the ladder before Dec 5 "
        "2026), for an A/B in one run (default: the package's, every 8 frames)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    track_group(parser)
    parser.add_argument(
        "--compare-track",
        action="store_true",
        help="run each stream count of the sweep without and with tracking (--track's KIND, "
        "default bytetrack) and report both side by side",
    )
    args = parser.parse_args()
    try:  # bad tracking input: one line, exit 2, before any model or video work
        track = track_settings(args)
    except SsdTrtError as exc:
        parser.error(str(exc))
    if args.decode == "nvdec" and (why := nvdec_missing()) is not None:
        parser.error(f"--decode nvdec: {why} (pip install 'ssd-trt[gpu]')")
    if args.compare_track and track is None:
        track = TrackSettings()
    if args.processes > 1 and (track or args.variant):
        parser.error("--processes runs the plain sweep: drop --track, --compare-track, --variant")
    if any(int(n) % args.processes for n in args.streams.split(",")):
        parser.error(f"--streams: every count must be a multiple of --processes {args.processes}")
    if args.make_video:
        print(make_video())
        return 0
    video = Path(args.video) if args.video else make_video()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"multi-stream-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.graph_sizes:  # the backend reads its ladder from here when it is made
        ladder = sorted(int(b) for b in args.graph_sizes.split(","))
        gpu_backend.graph_sizes = lambda m: [b for b in ladder if b < m] + [m]
    if args.processes > 1:
        return sharded_sweep(args, video, out)
    with Detector(
        args.model, args.backend, max_batch=args.max_batch, precision=args.precision
    ) as detector:
        options = {
            "overlap": not args.no_overlap,
            "decode_threads": args.decode_threads,
            "max_wait_ms": args.max_wait_ms,
            "decode": args.decode,
            # --compare-track: the sweep's second run of each count; the variants run plain
            "track": None if args.compare_track else track,
        }
        warm_up(detector, video, args, dict(options, track=track))
        if args.child:  # one process of --processes: one count, when the parent says go
            print("ready", flush=True)
            sys.stdin.readline()
            n = int(args.streams)
            print(json.dumps(run(detector, video, n, args.fps, args.seconds, args.max_batch,
                                 **options)), flush=True)  # fmt: skip
            return 0
        plan = [(args.label or "main", args.streams, options, args.keep_going)]
        for spec in args.variant:
            name, counts, overlap, threads = spec.split(":")
            variant = dict(options, overlap=overlap == "1")
            variant["decode_threads"] = None if threads == "auto" else int(threads)
            plan.append((name, counts, variant, True))
        saved = dict(options, track=track.kind if track else None)
        saved["track_options"] = list(track.options) if track else []
        saved["compare_track"] = args.compare_track
        for name, counts, opts, keep_going in plan:
            both = args.compare_track and name == plan[0][0]
            for n in [int(c) for c in counts.split(",")]:
                held = False
                for tracked in (None, track) if both else (opts["track"],):
                    what = f" with {tracked.kind}" if tracked else ""
                    print(f"measuring {name}: {n} streams{what}", file=sys.stderr, flush=True)
                    row = run(
                        detector,
                        video,
                        n,
                        args.fps,
                        args.seconds,
                        args.max_batch,
                        **dict(opts, track=tracked),
                    )
                    row = {"config": name, **row}
                    rows.append(row)
                    held = held or row["sustained"]
                    print(json.dumps(row), flush=True)
                    # Written after every row: a run cut short by a time limit keeps what it has.
                    save(out, args, saved, detector.backend_name, plan[0][0], rows)
                if not held and not keep_going:
                    break
        best = save(out, args, saved, detector.backend_name, plan[0][0], rows)
    if args.compare_track:
        main_rows = [r for r in rows if r["config"] == plan[0][0]]
        print(table(side_by_side(main_rows)))
        print(f"with {track.kind}: {best_sustained(main_rows, tracked=True)} streams sustained")
    print(f"{best} streams of 720p at {args.fps:g} FPS sustained; wrote {out}")
    for row in rows:  # at the largest count that held and the first that did not: what limited
        if row["config"] == plan[0][0] and row["streams"] >= best and row.get("track") is None:
            print(f"  {row['streams']} streams: limited by {row['limited_by']}")
            if not row["sustained"]:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
