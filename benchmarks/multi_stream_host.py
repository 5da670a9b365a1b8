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

from ssd_trt.detections import Detections
from ssd_trt.quality.bench import machine_info
from ssd_trt.sources import Frame, Source
from ssd_trt.store import ArtifactStore
from ssd_trt.video.engine import Engine
from ssd_trt.video.outputs import Output


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", default=str(ArtifactStore().root / "media/vtest_720p30_h264.mp4")
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out")
    args = parser.parse_args()
    video = Path(args.video)
    if not video.is_file():
        sys.exit(f"{video} is missing; make it with benchmarks/multi_stream.py --make-video")
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
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
