"""Host cost per 720p frame of many-stream detection, without a GPU: decode, copy, bookkeeping.

Measures, on the 720p H.264 test video of benchmarks/multi_stream.py:

* decode: ``cv2.VideoCapture`` (FFmpeg) with its default thread count and with one thread
  (``CAP_PROP_N_THREADS``), and PyAV when installed: wall ms and CPU ms per frame, and how many
  OS threads one open capture adds (FFmpeg may start one per core, for every stream);
* the copy of a 720p frame into a numpy buffer (what ``GpuFastPath.submit`` does into pinned
  memory);
* whether each of those releases the GIL: the same work in 2 threads at once, against 1 thread
  (a speed-up near the core count means it runs outside the GIL);
* ``Engine``'s own per-frame Python work (lanes, batcher, emitters) with a trivial
  detector and in-memory sources, sync and with two batches in flight.

    python benchmarks/multi_stream_host.py [--video V] [--out results/....json]

``--streams 1,8,16,32`` instead measures the host's capacity: how many streams of ``--video``
played at ``--fps`` like cameras (``benchmarks/multi_stream.py``'s ``run``: paced decode,
batching, emitters, the same criterion: >= 99% of frames delivered per stream, p99 latency <=
100 ms) the host sustains when the model costs nothing. The detector is a replay: the real
model's detections of each frame, computed once on the CPU before the clock starts, handed out by
a fingerprint of the frame's pixels, so a tracker sees real boxes. ``--track [KIND]`` /
``--track-option`` / ``--compare-track`` as in ``multi_stream.py``: the host side (decode +
batch + emit + tracking) is where tracking runs.

    python benchmarks/multi_stream_host.py --video vtest.avi --streams 1,8,16,32 --fps 10 \
        --seconds 6 --compare-track
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssd_trt.cli.groups import track_group, track_settings
from ssd_trt.detections import Detections
from ssd_trt.errors import SsdTrtError
from ssd_trt.quality.bench import machine_info
from ssd_trt.sources import Frame, PacedSource, Source
from ssd_trt.store import ArtifactStore
from ssd_trt.video.engine import Engine
from ssd_trt.video.outputs import Output
from ssd_trt.video.tracks import TrackSettings

# multi_stream.py's run() and reporting, also when this file is loaded by path (the tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import multi_stream  # noqa: E402


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def decode_cv2(video: Path, frames: int, threads: int | None) -> dict[str, Any]:
    before = _threads()
    params = [] if threads is None else [cv2.CAP_PROP_N_THREADS, threads]
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, params)
    cap.read()
    added = _threads() - before
    w0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while n < frames:
        ok, _ = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    cap.release()
    return {
        "wall_ms_per_frame": round(wall / n * 1000, 3),
        "cpu_ms_per_frame": round(cpu / n * 1000, 3),
        "os_threads_added": added,
    }


def decode_av(video: Path, frames: int, threads: int | None) -> dict[str, Any] | None:
    try:
        import av
    except ImportError:
        return None
    before = _threads()
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    added = 0
    while n < frames:
        with av.open(str(video)) as box:
            stream = box.streams.video[0]
            if threads is None:
                stream.thread_type = "AUTO"
            else:
                stream.codec_context.thread_count = threads
            for packet_frame in box.decode(stream):
                packet_frame.to_ndarray(format="bgr24")
                added = max(added, _threads() - before)
                n += 1
                if n >= frames:
                    break
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "wall_ms_per_frame": round(wall / n * 1000, 3),
        "cpu_ms_per_frame": round(cpu / n * 1000, 3),
        "os_threads_added": added,
    }


def parallel(work: Callable[[], None], reps: int, n_threads: int) -> float:
    """Wall seconds for each of ``n_threads`` threads to do ``reps`` calls of ``work``."""
    barrier = threading.Barrier(n_threads + 1)

    def body() -> None:
        barrier.wait()
        for _ in range(reps):
            work()

    threads = [threading.Thread(target=body) for _ in range(n_threads)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def gil_check(name: str, make_work: Callable[[], Callable[[], None]], reps: int) -> dict[str, Any]:
    """Throughput of 2 threads against 1; ~2x (on >= 2 cores) means the GIL is released."""
    one = parallel(make_work(), reps, 1)
    works = [make_work(), make_work()]
    barrier_work = iter(works)
    lock = threading.Lock()

    def pick() -> Callable[[], None]:
        with lock:
            return next(barrier_work)

    local = threading.local()

    def work() -> None:
        if not hasattr(local, "w"):
            local.w = pick()
        local.w()

    two = parallel(work, reps, 2)
    return {
        "what": name,
        "ms_per_call_1_thread": round(one / reps * 1000, 3),
        "speedup_2_threads": round(2 * one / two, 2),
    }


# ------------------------------------------------------------------------- Engine bookkeeping


class _MemorySource(Source):
    """A file-like source that hands out one preallocated frame ``count`` times."""

    live = False

    def __init__(self, image: np.ndarray, count: int) -> None:
        super().__init__("memory")
        self.image, self.count, self.index = image, count, 0
        self.fps, self.frame_count = 30.0, count

    def read(self) -> Frame | None:
        if self.index >= self.count:
            return None
        self.index += 1
        return Frame(self.index - 1, self.index / 30.0, self.image)


class _NullDetector:
    """Detector stand-in: no work, empty detections; ``queued``: like the GPU fast path, two
    batches may be in flight."""

    backend_name = "null"

    def __init__(self, queued: bool) -> None:
        self.supports_submit = queued

    def warm_up(self, max_batch: int) -> None:
        """Nothing to build: the pipeline calls this before its clock starts."""

    def submit(self, images):
        return len(images)

    def collect(self, handle):
        return [_EMPTY] * handle, {"inference": 0.0}


_EMPTY = Detections()


class _Count(Output):
    def write(self, result, annotated) -> None:
        pass


def bookkeeping(detector: Any, streams: int, frames: int, image: np.ndarray) -> dict[str, Any]:
    sources = [_MemorySource(image, frames) for _ in range(streams)]
    pipeline = Engine(
        detector,
        sources,
        [[_Count()] for _ in range(streams)],
        [f"s{i}" for i in range(streams)],
        max_batch=32,
        max_wait_ms=10,
        draw=False,
    )
    c0 = time.process_time()
    stats = pipeline.run()
    cpu = time.process_time() - c0
    return {
        "streams": streams,
        "frames": stats.frames,
        "frames_per_s": round(stats.frames / stats.seconds),
        "cpu_us_per_frame": round(cpu / stats.frames * 1e6, 1),
        "mean_batch": round(stats.mean_batch, 2),
    }


def engine_only(streams: int, fps: float, seconds: float, max_batch: int) -> dict[str, Any]:
    """The engine's own host cost at camera counts (``--engine-streams``): ``streams`` sources
    played at ``fps`` whose decode costs nothing (one preallocated frame), a detector that does
    nothing with two batches in flight (as the GPU fast path queues them), batches up to
    ``max_batch``: what capture threads, pacing, the batcher and the emitters cost per frame
    before any decoder or model, as with NVDEC frames that are pointers."""
    frames = int(fps * seconds)
    image = np.zeros((8, 8, 3), np.uint8)
    sources = [PacedSource(_MemorySource(image, 2 * frames), fps) for _ in range(streams)]
    outs = [multi_stream._Latencies() for _ in range(streams)]
    engine = Engine(_NullDetector(True), sources, [[o] for o in outs],
                    [f"cam{i}" for i in range(streams)], max_batch=max_batch, max_wait_ms=10,
                    max_frames=frames, draw=False)  # fmt: skip
    with multi_stream.ThreadCpu() as cpu:
        stats = engine.run()
    host = cpu.report()
    n = max(1, stats.frames)
    delivered = min(s.frames / max(1, s.frames + s.dropped) for s in stats.sources.values())
    p99 = float(np.percentile(np.concatenate([o.values for o in outs]), 99))
    return {
        "streams": streams,
        "frames": stats.frames,
        "cores_busy": host["cores_busy"],
        "cpu_us_per_frame": round(cpu.cpu / n * 1e6, 1),
        "cpu_us_per_frame_by_role": {
            k: round(v / n * 1e6, 1) for k, v in host["cpu_s_by_role"].items()
        },
        "delivered_min": round(delivered, 4),
        "latency_ms_p99": round(p99, 1),
        "sustained": delivered >= 0.99 and p99 <= 100.0,
        "mean_batch": round(stats.mean_batch, 2),
    }


# ------------------------------------------------------------------------- capacity (--streams)


def fingerprint(image: np.ndarray) -> int:
    """A frame's identity from a sparse grid of its pixels (~11 kB of a 720p frame, ~10 us):
    every decoder of one file yields the same pixels for the same frame."""
    return hash(image[::16, ::16].tobytes())


class ReplayDetector:
    """Detector stand-in that costs the host almost nothing but hands out real detections: each
    frame's, recorded beforehand by the real model, looked up by ``fingerprint``. ``misses``:
    frames it had no record of (they get no detections)."""

    backend_name = "replay"
    supports_submit = False

    def __init__(self, table: dict[int, Detections]) -> None:
        self.table = table
        self.misses = 0

    def warm_up(self, max_batch: int) -> None:
        """Nothing to build: the pipeline calls this before its clock starts."""

    def submit(self, images):
        found = [self.table.get(fingerprint(im)) for im in images]
        self.misses += sum(d is None for d in found)
        return [_EMPTY if d is None else d for d in found]

    def collect(self, handle):
        return handle, {"inference": 0.0}


def record(video: Path, frames: int, model: str) -> tuple[dict[int, Detections], dict[str, Any]]:
    """The real model's detections (ONNX Runtime on the CPU, score >= 0.5 as ``detect``'s
    default) of the first ``frames`` frames of ``video``, by fingerprint."""
    from ssd_trt.detector import Detector

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    images = []
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    t0 = time.perf_counter()
    with Detector(model, "cpu") as detector:
        found = [d for i in range(0, len(images), 8) for d in detector.detect(images[i : i + 8])]
    table = {fingerprint(im): d for im, d in zip(images, found, strict=True)}
    boxes = [len(d) for d in found]
    return table, {
        "model": model,
        "frames_recorded": len(images),
        "distinct_fingerprints": len(table),
        "detections_per_frame_mean": round(float(np.mean(boxes)), 2) if boxes else 0.0,
        "record_s": round(time.perf_counter() - t0, 1),
    }


def capacity(args: argparse.Namespace, video: Path, track: TrackSettings | None) -> int:
    """The host capacity sweep; writes its JSON and prints the side-by-side table."""
    counts = [int(c) for c in args.streams.split(",")]
    # Frames a stream may read: its own plus what a lagging live stream drops (+50%).
    table, recorded = record(video, int(args.fps * args.seconds * 1.5) + 16, args.replay_model)
    print("recorded", recorded, flush=True)
    detector = ReplayDetector(table)
    multi_stream.run(detector, video, 1, args.fps, 1.0, args.max_batch, track=track)  # warm-up
    sides = (None, track) if args.compare_track else (track,)
    rows: list[dict[str, Any]] = []
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(
        args.out or Path(__file__).parent / "results" / f"multi-stream-host-capacity-{stamp}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in counts:
        held = False
        for tracked in sides:
            what = f" with {tracked.kind}" if tracked else ""
            print(f"measuring {n} streams{what}", file=sys.stderr, flush=True)
            detector.misses = 0
            row = multi_stream.run(
                detector, video, n, args.fps, args.seconds, args.max_batch, track=tracked
            )
            row = {"config": "host", **row, "replay_misses": detector.misses}
            rows.append(row)
            held = held or row["sustained"]
            print(json.dumps(row), flush=True)
            _save_capacity(out, args, video, track, recorded, rows)
        if not held and not args.keep_going:
            break
    _save_capacity(out, args, video, track, recorded, rows)
    if args.compare_track:
        print(multi_stream.table(multi_stream.side_by_side(rows)))
    for tracked in sorted({r["track"] is not None for r in rows}):
        best = multi_stream.best_sustained(rows, tracked)
        what = f"with {track.kind}" if tracked and track else "without tracking"
        print(f"{what}: {best} streams at {args.fps:g} FPS sustained by the host")
    print(f"wrote {out}")
    return 0


def _save_capacity(
    out: Path,
    args: argparse.Namespace,
    video: Path,
    track: TrackSettings | None,
    recorded: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    result: dict[str, Any] = {
        "benchmark": "multi_stream_host_capacity",
        "video": video.name,
        "fps": args.fps,
        "seconds": args.seconds,
        "max_batch": args.max_batch,
        "detector": "replay of the real model's detections (no model cost)",
        "recorded": recorded,
        "track": track.kind if track else None,
        "track_options": list(track.options) if track else [],
        "compare_track": args.compare_track,
        "criterion": ">= 99% of frames delivered per stream, p99 latency <= 100 ms",
        "max_sustained_streams": multi_stream.best_sustained(rows, tracked=False),
    }
    if track is not None:
        result["max_sustained_streams_track"] = multi_stream.best_sustained(rows, tracked=True)
    if args.compare_track:
        result["side_by_side"] = multi_stream.side_by_side(rows)
    result |= {"runs": rows, "machine": machine_info()}
    multi_stream.write_json(out, result)


def engine_sweep(args: argparse.Namespace) -> int:
    rows = []
    for n in (int(c) for c in args.engine_streams.split(",")):
        rows.append(engine_only(n, args.fps, args.seconds, args.max_batch))
        print(json.dumps(rows[-1]), flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"engine-host-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    multi_stream.write_json(out, {"benchmark": "multi_stream_host --engine-streams",
                                  "fps": args.fps, "seconds": args.seconds,
                                  "max_batch": args.max_batch, "runs": rows,
                                  "machine": machine_info()})  # fmt: skip
    print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", default=str(ArtifactStore().root / "media/vtest_720p30_high.mp4")
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out")
    cap = parser.add_argument_group("capacity (--streams: only this sweep)")
    cap.add_argument("--streams", help="stream counts, e.g. 1,8,16,32")
    cap.add_argument(
        "--engine-streams",
        help="only the engine's own cost at these counts (no decode, no model), e.g. 32,128",
    )
    cap.add_argument("--fps", type=float, default=30.0, help="each stream's frame rate")
    cap.add_argument("--seconds", type=float, default=10.0, help="per stream count")
    cap.add_argument("--max-batch", type=int, default=32)
    cap.add_argument("--keep-going", action="store_true", help="run every stream count")
    cap.add_argument(
        "--replay-model",
        default="ssdlite_mobilenet_v2_coco",
        help="the model whose detections are replayed (run once on the CPU first)",
    )
    track_group(parser)
    cap.add_argument(
        "--compare-track",
        action="store_true",
        help="each stream count without and with tracking (--track's KIND, default bytetrack)",
    )
    args = parser.parse_args()
    try:  # bad tracking input: one line, exit 2, before any video or model work
        track = track_settings(args)
    except SsdTrtError as exc:
        parser.error(str(exc))
    if args.compare_track and track is None:
        track = TrackSettings()
    if (track or args.compare_track) and not args.streams:
        parser.error("--track and --compare-track belong to the capacity sweep: add --streams")
    if args.engine_streams:
        return engine_sweep(args)
    video = Path(args.video)
    if not video.is_file():
        sys.exit(f"{video} is missing; make it with benchmarks/multi_stream.py --make-video")
    if args.streams:
        return capacity(args, video, track)
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    image = cap.read()[1]
    cap.release()

    decode = {
        "cv2_default_threads": decode_cv2(video, args.frames, None),
        "cv2_1_thread": decode_cv2(video, args.frames, 1),
        "pyav_auto_threads": decode_av(video, args.frames, None),
        "pyav_1_thread": decode_av(video, args.frames, 1),
    }
    for row in decode.items():
        print(row, flush=True)

    flat = image.reshape(-1)
    buffer = np.empty(flat.nbytes + 4096, np.uint8)

    def copy_slice() -> None:
        buffer[256 : 256 + flat.nbytes] = flat

    reps = 200
    t = parallel(copy_slice, reps, 1) / reps
    copy = {
        "frame_bytes": int(flat.nbytes),
        "ms_per_frame": round(t * 1000, 3),
        "gb_per_s": round(flat.nbytes / t / 1e9, 2),
    }
    # Cache-cold: a different decoded frame each time (64 x 2.7 MB, past any cache), as the
    # batcher meets them.
    many = [np.full(flat.nbytes, i, np.uint8) for i in range(64)]
    t0 = time.perf_counter()
    for _ in range(4):
        for src in many:
            buffer[256 : 256 + flat.nbytes] = src
    t = (time.perf_counter() - t0) / (4 * len(many))
    copy["cold_ms_per_frame"] = round(t * 1000, 3)
    copy["cold_gb_per_s"] = round(flat.nbytes / t / 1e9, 2)
    del many
    print("copy", copy, flush=True)

    def decoder() -> Callable[[], None]:
        c = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])

        def step() -> None:
            if not c.read()[0]:
                c.set(cv2.CAP_PROP_POS_FRAMES, 0)

        return step

    def copier() -> Callable[[], None]:
        dst = np.empty_like(buffer)

        def step() -> None:
            dst[256 : 256 + flat.nbytes] = flat

        return step

    def python_loop() -> Callable[[], None]:
        def step() -> None:
            s = 0
            for i in range(20000):
                s += i

        return step

    gil = [
        gil_check("cv2 decode, 1 FFmpeg thread", decoder, 100),
        gil_check("numpy copy of a 720p frame", copier, 200),
        gil_check("pure Python loop (holds the GIL; the reference)", python_loop, 200),
    ]
    for row in gil:
        print(row, flush=True)

    small = np.zeros((8, 8, 3), np.uint8)
    book = {
        "sync": [bookkeeping(_NullDetector(False), n, 400, small) for n in (4, 16, 32)],
        "two_in_flight": [bookkeeping(_NullDetector(True), n, 400, small) for n in (4, 16, 32)],
    }
    for row in book.items():
        print(row, flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"multi-stream-host-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "multi_stream_host",
        "video": video.name,
        "decode": decode,
        "copy_720p_frame": copy,
        "gil": gil,
        "multipipeline_bookkeeping": book,
        "machine": machine_info(),
    }
    multi_stream.write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
