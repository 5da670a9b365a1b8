"""Many sources, one detector: frames of different sources batched into one inference call.

Data flow::

    source 1 --capture thread--> lane 1 --.                          .--> emitter 1 -> outputs 1
    source 2 --capture thread--> lane 2 ---+--> batcher (one thread) +--> emitter 2 -> outputs 2
    source N --capture thread--> lane N --'    detect_timed(batch)   '--> emitter N -> outputs N

* A **lane** holds a source's frames waiting for inference. A live lane keeps only the newest
  ``live_depth`` frames (older ones are dropped and counted); a file lane blocks its capture
  thread when full, so files never drop.
* The **batcher** closes a batch at ``max_batch`` frames or ``max_wait_ms`` after the first
  frame of the batch arrived, taking frames round-robin so one fast file cannot starve a camera.
  It takes a source's frame only while fewer than ``max_in_flight`` of that source's frames await
  output, so a slow output holds back its own source and never the others. Where the detector
  queues work (``Detector.supports_submit``: the GPU fast path), it keeps up to two batches in
  flight: while batch k runs on the GPU it packs and submits batch k+1 when that one is ready
  (full, or past its deadline), and otherwise hands batch k's results out first, so overlap
  never costs latency.
* One **emitter** per source draws and writes its results in frame order (one batcher thread
  processes each lane in order, so order is kept without sequence numbers).
* A source that ends or fails ends only its own lane; RTSP sources reconnect as they do alone.
* Decoding: each file or stream gets ``cores // sources`` FFmpeg decoder threads (at least one);
  FFmpeg's default of one per core for every stream oversubscribes the CPU with many streams.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..detector import Detector, PendingBatch
from ..errors import SsdTrtError, require
from ..sources import STREAM_PREFIXES, Frame, PacedSource, Source, open_source
from .outputs import FrameResult, JsonLinesOutput, Output, VideoOutput, finalize
from .overlay import draw_frame
from .pipeline import FpsMeter, stopped_by
from .serve import MjpegServer

log = logging.getLogger(__name__)

# Defaults: 8 frames keep a CPU batch under ~0.2 s; on the GPU fast path 32 (one H100 sustains
# 32 720p cameras with it, benchmarks/multi_stream.py); 10 ms is a third of a 30 FPS frame
# interval, so waiting for a fuller batch adds at most that much latency.
DEFAULT_MAX_BATCH = 8
GPU_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 10.0
_POLL_S = 0.1  # how often blocked threads re-check the stop flag
_END = object()
_Batch = list[tuple["_Lane", Frame, float]]


# ------------------------------------------------------------------------------ source names


def source_name(spec: str | int) -> str:
    """A file-name-safe name for a source: a file's stem, a folder's name, ``camera0``, or a
    stream's ``host_port_path``."""
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        raw = f"camera{int(text)}"
    elif text.lower().startswith(STREAM_PREFIXES):
        parts = urlsplit(text)
        host = (parts.hostname or "stream") + (f"_{parts.port}" if parts.port else "")
        raw = f"{host}{parts.path}"
    else:
        path = Path(text.rstrip("/\\"))
        raw = path.stem if path.suffix else path.name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")
    return safe or "source"


def unique_names(specs: Sequence[str | int]) -> list[str]:
    """:func:`source_name` of each, with ``-2``, ``-3`` ... appended to repeats, in order."""
    names: list[str] = []
    taken: set[str] = set()
    for spec in specs:
        base = name = source_name(spec)
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names.append(name)
    return names


def read_source_list(path: Path) -> list[str]:
    """One source per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SsdTrtError(f"cannot read --sources {path}: {exc.strerror}") from None
    specs = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not specs:
        raise SsdTrtError(f"--sources {path} lists no source; write one path or URL per line")
    return specs


# -------------------------------------------------------------------------------- statistics


@dataclass
class SourceStats:
    name: str
    description: str
    frames: int = 0  # delivered to the outputs
    dropped: int = 0  # live frames dropped because a newer one arrived first
    skipped: int = 0
    reconnects: int = 0
    error: str = ""  # why the source ended early, if it failed

    def summary(self) -> str:
        text = f"{self.name}: {self.frames} frames"
        for key in ("dropped", "skipped", "reconnects"):
            if getattr(self, key):
                text += f", {getattr(self, key)} {key}"
        return text + (f"; failed: {self.error}" if self.error else "")


@dataclass
class MultiStats:
    sources: dict[str, SourceStats] = field(default_factory=dict)
    batches: int = 0
    batched_frames: int = 0
    inference_ms: float = 0.0  # sum over batches (the GPU span where the backend times it)
    seconds: float = 0.0
    # Where the batcher thread's time went (seconds): waiting for frames, submitting batches
    # (the fast path packs frames into pinned memory and queues the GPU work there), collecting
    # them (waiting for the GPU, postprocess), handing results to the emitters.
    batcher_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("wait", "submit", "collect", "hand_out"), 0.0)
    )
    overlapped_batches: int = 0  # submitted while another batch was in flight
    stage_ms: dict[str, float] = field(default_factory=dict)  # each stage summed over batches
    stopped_by: str = "end of streams"

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sources.values())

    @property
    def mean_batch(self) -> float:
        return self.batched_frames / self.batches if self.batches else 0.0

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        head = (
            f"{len(self.sources)} sources, {self.frames} frames in {self.seconds:.1f} s "
            f"({fps:.1f} FPS), {self.batches} batches of {self.mean_batch:.1f} on average; "
            f"stopped by {self.stopped_by}"
        )
        return "\n".join([head, *(s.summary() for s in self.sources.values())])


# --------------------------------------------------------------------------------- one lane


class _Lane:
    """One source's frames between its capture thread and the batcher, and its in-flight count.

    All state is guarded by the shared condition the batcher waits on.
    """

    def __init__(self, index: int, source: Source, stats: SourceStats, depth: int) -> None:
        self.index, self.source, self.stats = index, source, stats
        self.live = bool(getattr(source, "live", False))
        self.depth = max(1, depth)
        self.frames: deque[tuple[Frame, float]] = deque()
        self.ended = False  # the capture thread is done; the lane empties, then closes
        self.in_flight = 0  # taken by the batcher, not yet written by the emitter
        self.results: queue.Queue[Any] = queue.Queue()
        self.taken = 0  # frames the batcher took, for max_frames


# ----------------------------------------------------------------------------- the pipeline


class MultiPipeline:
    """Run one detector over many sources; outputs per source, batches across sources.

    ``outputs[i]`` are source i's outputs (finalized by :meth:`run`). ``on_frame(i, result,
    annotated)`` is called after source i's outputs got a frame (progress, a grid view).
    ``max_frames`` bounds each source.
    """

    def __init__(
        self,
        detector: Detector,
        sources: Sequence[Source],
        outputs: Sequence[Sequence[Output]],
        names: Sequence[str],
        *,
        max_batch: int | None = None,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_in_flight: int = 4,
        file_depth: int = 4,
        live_depth: int = 1,
        max_frames: int | None = None,
        draw: bool = True,
        overlap: bool = True,
        on_frame: Callable[[int, FrameResult, np.ndarray], None] | None = None,
    ) -> None:
        if not (len(sources) == len(outputs) == len(names)) or not sources:
            raise ValueError("one outputs list and one name per source, at least one source")
        queues = getattr(detector, "supports_submit", False)  # the GPU fast path
        if max_batch is None:
            max_batch = GPU_MAX_BATCH if queues else DEFAULT_MAX_BATCH
        if max_batch < 1 or max_wait_ms < 0:
            raise SsdTrtError("max batch must be >= 1 and the batch deadline >= 0 ms")
        self.detector = detector
        self.outputs = [list(o) for o in outputs]
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_in_flight = max(1, max_in_flight)
        # Batches on the detector at once: two where it queues work, so packing and submitting
        # batch k+1 overlaps batch k on the GPU.
        self.depth = 2 if overlap and queues else 1
        self.max_frames = max_frames
        self.draw = draw
        self.on_frame = on_frame
        self.stats = MultiStats()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._next = 0  # round-robin start
        self.lanes = []
        for i, (source, name) in enumerate(zip(sources, names, strict=True)):
            stats = SourceStats(name, source.description)
            self.stats.sources[name] = stats
            live = bool(getattr(source, "live", False))
            self.lanes.append(_Lane(i, source, stats, live_depth if live else file_depth))

    # ---------------------------------------------------------------------------- capture

    def _capture(self, lane: _Lane) -> None:
        try:
            while not self._stop.is_set():
                with self._cond:
                    # Frames taken or waiting count; a live frame replaced by a newer one not.
                    if self.max_frames is not None and (
                        lane.taken + len(lane.frames) >= self.max_frames
                    ):
                        break
                frame = lane.source.read()
                if frame is None:
                    break
                item = (frame, time.perf_counter())
                with self._cond:
                    if lane.live:
                        # Newest frame wins: a camera's stale frames are worth nothing.
                        while len(lane.frames) >= lane.depth:
                            lane.frames.popleft()
                            lane.stats.dropped += 1
                    else:
                        while len(lane.frames) >= lane.depth and not self._stop.is_set():
                            self._cond.wait(_POLL_S)
                    lane.frames.append(item)
                    self._cond.notify_all()
        except Exception as exc:  # a broken source ends its own lane, never the others
            lane.stats.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s: %s; the other sources go on", lane.stats.name, lane.stats.error)
        finally:
            with self._cond:
                lane.ended = True
                self._cond.notify_all()

    # ---------------------------------------------------------------------------- batching

    def _ready(self, lane: _Lane) -> bool:
        return bool(lane.frames) and lane.in_flight < self.max_in_flight

    def _take(self, batch: list[tuple[_Lane, Frame, float]]) -> None:
        """Move ready frames into ``batch``, one per lane per pass, round-robin. Lock held."""
        n = len(self.lanes)
        progress = True
        while progress and len(batch) < self.max_batch:
            progress = False
            for k in range(n):
                lane = self.lanes[(self._next + k) % n]
                if len(batch) >= self.max_batch:
                    break
                if self._ready(lane):
                    frame, t = lane.frames.popleft()
                    lane.in_flight += 1
                    lane.taken += 1
                    batch.append((lane, frame, t))
                    progress = True
        self._next = (self._next + 1) % n
        self._cond.notify_all()  # file capture threads wait for room

    def _finished(self) -> bool:
        """Every lane ended and emptied. Lock held."""
        return all(lane.ended and not lane.frames for lane in self.lanes)

    def _fill(self, batch: _Batch, deadline: float | None, wait: bool) -> float | None:
        """Add ready frames to ``batch``; with ``wait``, block until it is full or its deadline
        (``max_wait_ms`` after its first frame) passed, or, while empty, until a frame comes or
        every source ended. Returns the batch's deadline (None while it is empty). Lock held."""
        while not self._stop.is_set():
            self._take(batch)
            if batch and deadline is None:
                deadline = time.perf_counter() + self.max_wait_s
            if not wait or len(batch) >= self.max_batch or self._finished():
                break
            if deadline is None:
                self._cond.wait(_POLL_S)
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._cond.wait(left)
        return deadline

    def _batcher(self) -> None:
        in_flight: deque[tuple[_Batch, PendingBatch]] = deque()
        clock = self.stats.batcher_s
        batch: _Batch = []
        deadline: float | None = None
        try:
            while True:
                t0 = time.perf_counter()
                with self._cond:
                    # With a batch on the GPU, only look at what is ready now.
                    deadline = self._fill(batch, deadline, wait=not in_flight)
                    closed = deadline is not None and (
                        len(batch) >= self.max_batch
                        or time.perf_counter() >= deadline
                        or self._finished()
                        or not in_flight  # _fill waited for the batch to close
                    )
                    done = not batch and (self._finished() or self._stop.is_set())
                clock["wait"] += time.perf_counter() - t0
                if batch and closed and not self._stop.is_set():
                    t1 = time.perf_counter()
                    pending = self.detector.submit([frame.image for _, frame, _ in batch])
                    clock["submit"] += time.perf_counter() - t1
                    self.stats.overlapped_batches += bool(in_flight)
                    in_flight.append((batch, pending))
                    batch, deadline = [], None
                    if len(in_flight) < self.depth:
                        continue
                elif not in_flight:
                    if done or self._stop.is_set():
                        return
                    continue
                # The next batch is not ready (or the pipe is full): the oldest one's turn.
                self._hand_out(*in_flight.popleft())
        except BaseException as exc:
            self._errors.append(exc)
            self._stop.set()
        finally:
            for lane in self.lanes:
                lane.results.put(_END)

    def _hand_out(self, batch: _Batch, pending: PendingBatch) -> None:
        """Wait for a batch and queue each result to its source's emitter."""
        t0 = time.perf_counter()
        detections, stages = self.detector.collect(pending)
        t1 = time.perf_counter()
        # The GPU span where the backend measures one (stage times plus their "total"), else
        # the sum of the stages.
        ms = stages.get("total", sum(stages.values()))
        self.stats.batches += 1
        self.stats.batched_frames += len(batch)
        self.stats.inference_ms += ms
        for key, value in stages.items():
            self.stats.stage_ms[key] = self.stats.stage_ms.get(key, 0.0) + value
        for (lane, frame, t), dets in zip(batch, detections, strict=True):
            lane.results.put((frame, dets, ms / len(batch), t, len(batch)))
        self.stats.batcher_s["collect"] += t1 - t0
        self.stats.batcher_s["hand_out"] += time.perf_counter() - t1

    # ---------------------------------------------------------------------------- emitting

    def _emit(self, lane: _Lane) -> None:
        fps = FpsMeter()
        try:
            while True:
                item = lane.results.get()
                if item is _END:
                    return
                frame, dets, infer_ms, captured, batch = item
                image = frame.image
                if self.draw:
                    image = image.copy()
                    rate = None if frame.name else fps.value  # still images: no FPS
                    draw_frame(image, dets, rate, infer_ms, self.detector.backend_name)
                result = FrameResult(
                    frame=frame,
                    detections=dets,
                    inference_ms=infer_ms,
                    latency_ms=(time.perf_counter() - captured) * 1000,
                    fps=fps.tick(),
                    batch=batch,
                )
                for out in self.outputs[lane.index]:
                    out.write(result, image)
                lane.stats.frames += 1
                with self._cond:
                    lane.in_flight -= 1
                    self._cond.notify_all()
                if self.on_frame is not None:
                    self.on_frame(lane.index, result, image)
        except BaseException as exc:
            self._errors.append(exc)
            self._stop.set()

    # ----------------------------------------------------------------------------- running

    def run(self) -> MultiStats:
        """Process until every source ends, an error, or Ctrl-C; then finalize every output
        (abort them on an error, so no partial file is left)."""
        self.detector.warm_up(self.max_batch)
        start = time.perf_counter()
        captures = [
            threading.Thread(target=self._capture, args=(lane,), name=f"ssd-trt-cap-{lane.index}")
            for lane in self.lanes
        ]
        emitters = [
            threading.Thread(target=self._emit, args=(lane,), name=f"ssd-trt-emit-{lane.index}")
            for lane in self.lanes
        ]
        batcher = threading.Thread(target=self._batcher, name="ssd-trt-batcher")
        threads = [*captures, batcher, *emitters]
        for t in threads:
            t.daemon = True
            t.start()
        failed = False
        try:
            # Wait in short slices so Ctrl-C reaches this thread.
            for t in [batcher, *emitters]:
                while t.is_alive():
                    t.join(_POLL_S)
            if self._errors:
                failed = True
                raise self._errors[0]
        except KeyboardInterrupt as interrupt:
            self.stats.stopped_by = stopped_by(interrupt)
            raise
        except BaseException:
            failed = True
            raise
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            for t in threads:
                # A stream read can block for its timeout plus a reconnect backoff.
                t.join(timeout=30)
            alive = [t.name for t in threads if t.is_alive()]
            if alive:
                log.warning("threads still running: %s", alive)
            self.stats.seconds = time.perf_counter() - start
            for lane in self.lanes:
                lane.stats.skipped = getattr(lane.source, "frames_skipped", 0)
                lane.stats.reconnects = getattr(lane.source, "reconnects", 0)
            finalize((out for outs in self.outputs for out in outs), failed)
        return self.stats


# ------------------------------------------------------------------------------- grid view


class GridView:
    """All streams as one grid on the live page: the latest frame of each source, tiled, with
    its name; composed at most ``fps`` times a second so many sources cost one encode."""

    def __init__(
        self,
        names: Sequence[str],
        host: str,
        port: int,
        tile: tuple[int, int] = (480, 270),
        token: str | None = None,
    ) -> None:
        self.cv2 = require("cv2", "video")
        self.names = list(names)
        self.cols = math.ceil(math.sqrt(len(self.names)))
        self.rows = math.ceil(len(self.names) / self.cols)
        self.tile = tile
        self.canvas = np.zeros((self.rows * tile[1], self.cols * tile[0], 3), np.uint8)
        self.frames = dict.fromkeys(self.names, 0)
        self.interval = 1.0 / 15
        self._last = 0.0
        self._lock = threading.Lock()
        self.server = MjpegServer(host, port, token=token).start()

    @property
    def url(self) -> str:
        return self.server.url

    def update(self, index: int, result: FrameResult, annotated: np.ndarray) -> None:
        cv2 = self.cv2
        tw, th = self.tile
        h, w = annotated.shape[:2]
        scale = min(tw / w, th / h)
        small = cv2.resize(annotated, (max(1, int(w * scale)), max(1, int(h * scale))))
        r, c = divmod(index, self.cols)
        y0, x0 = r * th, c * tw
        name = self.names[index]
        with self._lock:
            self.frames[name] = result.frame.index
            cell = self.canvas[y0 : y0 + th, x0 : x0 + tw]
            cell[:] = 0
            cell[: small.shape[0], : small.shape[1]] = small
            cv2.putText(cell, name, (6, th - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
            now = time.perf_counter()
            if now - self._last < self.interval:
                return
            self._last = now
            ok, jpeg = cv2.imencode(".jpg", self.canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
            stats = {f"{n} frame": f for n, f in self.frames.items()}
        if ok:
            self.server.publish(jpeg.tobytes(), stats)

    def close(self) -> None:
        self.server.close()


# ---------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class StreamSettings:
    """How network streams reconnect (see ``sources.open_source``)."""

    reconnect_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class MultiJob:
    sources: tuple[str | int, ...]
    output_dir: Path
    video: bool = True  # DIR/<name>.mp4
    json: bool = False  # DIR/<name>.jsonl
    serve: tuple[str, int] | None = None
    token: str | None = None  # the live page answers only requests that carry it
    realtime: bool = False
    max_frames: int | None = None
    max_batch: int | None = None  # None: GPU_MAX_BATCH on the GPU fast path, else DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    streams: StreamSettings = StreamSettings()
    decode_threads: int | None = None  # FFmpeg threads per source; None: decode_threads_for()


def decode_threads_for(sources: int, cores: int | None = None) -> int:
    """FFmpeg decoder threads per source: the cores shared out, at least one each. Many streams
    already keep every core busy, one decoder each; FFmpeg's default (a thread per core for
    every stream) only adds threads that fight for the same cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, sources))


def open_sources(
    specs: Sequence[str | int],
    realtime: bool = False,
    streams: StreamSettings = StreamSettings(),
    decode_threads: int | None = None,
) -> list[Source]:
    """Open every source (bad ones fail before any model work, all named in one error); close
    all on a failure. ``decode_threads``: FFmpeg threads per file or stream (None:
    :func:`decode_threads_for`)."""
    threads = decode_threads or decode_threads_for(len(specs))
    opened: list[Source] = []
    bad: list[str] = []
    try:
        for spec in specs:
            try:
                source = open_source(spec, **asdict(streams), decode_threads=threads)
            except SsdTrtError as exc:
                bad.append(str(exc))  # try the rest, so one run names every bad source
                continue
            if realtime and not source.live:
                source = PacedSource(source, source.fps or 25.0)
            opened.append(source)
        if len(bad) == 1:
            raise SsdTrtError(bad[0])
        if bad:
            head = f"{len(bad)} of {len(specs)} sources cannot be opened: "
            raise SsdTrtError(head + " | ".join(bad))
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened


def run_multi(
    job: MultiJob,
    make_detector: Callable[[], Detector],
    on_frame: Callable[[int, FrameResult, np.ndarray], None] | None = None,
) -> MultiStats:
    """Open the sources, then the detector and each source's outputs in ``job.output_dir``."""
    if not job.sources:
        raise SsdTrtError("no sources given; pass one or more files, folders, URLs or cameras")
    out_dir = Path(job.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SsdTrtError(f"--output-dir {out_dir} is a file; pass a folder")
    names = unique_names(job.sources)
    sources: list[Source] = []
    outputs: list[list[Output]] = []
    detector = grid = None
    try:
        sources = open_sources(job.sources, job.realtime, job.streams, job.decode_threads)
        detector = make_detector()
        log.info("backend: %s; %d sources", detector.backend_name, len(sources))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, source in zip(names, sources, strict=True):
            outs: list[Output] = []
            outputs.append(outs)
            if job.video:
                outs.append(VideoOutput(out_dir / f"{name}.mp4", source.fps))
            if job.json:
                outs.append(JsonLinesOutput(out_dir / f"{name}.jsonl"))
        if job.serve:
            grid = GridView(names, *job.serve, token=job.token)  # it logs where to look
            log.info("the live page shows the %d streams as a grid", len(names))

        def frame_done(index: int, result: FrameResult, annotated: np.ndarray) -> None:
            if grid is not None:
                grid.update(index, result, annotated)
            if on_frame is not None:
                on_frame(index, result, annotated)

        pipeline = MultiPipeline(
            detector,
            sources,
            outputs,
            names,
            max_batch=job.max_batch,
            max_wait_ms=job.max_wait_ms,
            max_frames=job.max_frames,
            on_frame=frame_done,
        )
        outputs = []  # the pipeline finalizes them now
        try:
            return pipeline.run()
        except KeyboardInterrupt:
            log.info("%s", pipeline.stats.summary())  # what the run did, before the exit
            raise
    finally:
        for outs in outputs:  # only those created before a failure
            for out in outs:
                out.abort()
        if grid is not None:
            grid.close()
        for source in sources:
            source.close()
        if detector is not None:
            detector.close()
