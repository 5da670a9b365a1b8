"""The video pipeline: capture -> detect -> draw -> outputs, asynchronous or as a plain loop.

Asynchronous mode runs capture and inference in their own threads with bounded queues between
them, and draws/outputs on the calling thread (GUI toolkits want the main thread). Live sources
drop the oldest waiting frame when inference falls behind, so latency stays low; files are
processed in order. Frames already waiting for inference go to the detector together (up to
``max_batch``), so a GPU that is faster per frame in batches keeps up with decoding.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..detector import Detector
from ..errors import Terminated
from ..sources import Frame, Source
from .outputs import FrameResult, Output, OutputWriteError, StopPipeline, finalize
from .overlay import draw_frame

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker passed down the queues
FILE_BATCH_WAIT_S = 0.05  # how long a file's batch waits to fill up (throughput, not latency)
STAGES = ("decode", "preprocess", "inference", "nms", "postprocess", "draw", "output")
# The detector's stage names, and the GPU fast path's (CUDA events), as pipeline stages.
_FOLD = {
    "preprocess": "preprocess",
    "upload": "preprocess",
    "inference": "inference",
    "network": "inference",
    "nms": "nms",
    "download": "nms",
    "postprocess": "postprocess",
}


@dataclass
class RunStats:
    frames: int = 0
    dropped: int = 0  # live frames dropped because inference was busy
    batches: int = 0  # detector calls (waiting frames of a file go to it together)
    skipped: int = 0  # unreadable frames the source skipped
    skipped_names: list[str] = field(default_factory=list)  # the unreadable image files
    reconnects: int = 0
    seconds: float = 0.0
    stopped_by: str = "end of stream"
    # Running sums, not lists: a webcam or --serve run may go on for days.
    stage_total_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def add(self, stage: str, ms: float, frames: int = 1) -> None:
        """``ms`` spent on ``stage`` for ``frames`` frames (a batch counts each of its frames)."""
        self.stage_total_ms[stage] += ms
        self.stage_count[stage] += frames

    def mean_ms(self, stage: str) -> float:
        count = self.stage_count[stage]
        return self.stage_total_ms[stage] / count if count else 0.0

    def summary(self) -> str:
        text = f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} FPS)"
        if self.dropped:
            text += f", {self.dropped} dropped to keep up"
        if self.skipped:
            text += f", {self.skipped} unreadable skipped{_named(self.skipped_names)}"
        if self.reconnects:
            text += f", {self.reconnects} reconnects"
        return f"{text}; stopped by {self.stopped_by}"


def stopped_by(interrupt: KeyboardInterrupt) -> str:
    """What a run's summary says ended it: Ctrl-C, or SIGTERM (the CLI raises Terminated)."""
    return "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"


def _named(names: list[str], shown: int = 3) -> str:
    """`` (a.jpg, b.jpg and 2 more)``: which files were skipped, so they can be found."""
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f" ({', '.join(names[:shown])}{more})"


class FpsMeter:
    """Frames per second: the frames ticked in the last ``window_s`` seconds over the time
    they took (the time since the meter started, while that is shorter).

    Not an average of 1/dt between frames: a batch emits its frames microseconds apart, and
    those gaps would count as thousands of frames per second.
    """

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.started = time.perf_counter()
        self._ticks: deque[float] = deque()
        self.value = 0.0

    def tick(self, now: float | None = None) -> float:
        """Count one frame (at ``now``, a ``time.perf_counter()`` reading; default: now)."""
        now = time.perf_counter() if now is None else now
        self._ticks.append(now)
        while self._ticks[0] <= now - self.window_s:
            self._ticks.popleft()
        span = min(self.window_s, now - self.started)
        self.value = len(self._ticks) / span if span > 0 else 0.0
        return self.value


class Pipeline:
    """Run ``detector`` over ``source`` into ``outputs``.

    ``sync=True`` runs the plain capture/infer/draw loop (for comparison). ``queue_size`` bounds
    each hand-off between stages (file queues hold at least a batch). ``max_batch``: at most
    this many waiting frames per detector call (None: 32 on the GPU fast path, else 4; always 1
    for live sources). ``draw=None`` draws when an output shows pictures. ``on_frame`` is
    called after each frame's outputs (progress).
    """

    def __init__(
        self,
        detector: Detector,
        source: Source,
        outputs: Sequence[Output] = (),
        *,
        sync: bool = False,
        queue_size: int = 4,
        max_batch: int | None = None,
        draw: bool | None = None,
        max_frames: int | None = None,
        on_frame: Callable[[FrameResult], None] | None = None,
    ) -> None:
        self.detector = detector
        self.source = source
        self.outputs = list(outputs)
        self.sync = sync
        self.queue_size = max(1, queue_size)
        # The GPU fast path gets much faster per frame in batches (bikes.mp4 on an H100: 1 ms
        # per frame alone, 0.2 in 32s); a CPU backend hardly does. Live sources keep single
        # frames: the newest frame matters, and no batch size is built for them.
        if max_batch is None:
            max_batch = 32 if detector.supports_submit else 4
        if getattr(source, "live", False):
            max_batch = 1
        self.max_batch = max(1, max_batch)
        self.draw = any(o.shows_image for o in self.outputs) if draw is None else draw
        self.max_frames = max_frames
        self.on_frame = on_frame
        self.stats = RunStats()
        self._stop = threading.Event()
        self._fps = FpsMeter()
        self._interrupted: int | None = None  # the signal that asked to stop

    # ------------------------------------------------------------------------ stage functions

    def _capture(self) -> tuple[Frame, float] | None:
        """The next frame and when it was captured (latency is measured from there)."""
        t0 = time.perf_counter()
        frame = self.source.read()
        t1 = time.perf_counter()
        self.stats.add("decode", (t1 - t0) * 1000)
        return None if frame is None else (frame, t1)

    def _infer(self, batch: Sequence[tuple[Frame, float]]) -> list[tuple[Frame, Any, float, float]]:
        """One detector call for frames captured earlier; per frame: the frame, its detections,
        its share of the inference time and when it was captured."""
        found, stages = self.detector.detect_timed([frame.image for frame, _ in batch])
        folded = dict.fromkeys(("preprocess", "inference", "nms", "postprocess"), 0.0)
        for stage, ms in stages.items():
            if stage in _FOLD:
                folded[_FOLD[stage]] += ms
        n = len(batch)
        self.stats.batches += 1
        for stage, ms in folded.items():
            self.stats.add(stage, ms, n)
        share = sum(folded.values()) / n
        return [(f, d, share, at, n) for (f, at), d in zip(batch, found, strict=True)]

    def _emit(
        self, frame: Frame, detections: Any, infer_ms: float, captured: float, batch: int = 1
    ) -> None:
        t0 = time.perf_counter()
        image = frame.image
        if self.draw:
            image = image.copy()
            fps = None if frame.name else self._fps.value  # a still image has no frame rate
            draw_frame(image, detections, fps, infer_ms, self.detector.backend_name)
        t1 = time.perf_counter()
        result = FrameResult(
            frame=frame,
            detections=detections,
            inference_ms=infer_ms,
            latency_ms=(t1 - captured) * 1000,
            fps=self._fps.tick(),
            batch=batch,
        )
        for out in self.outputs:
            out.write(result, image)
        self.stats.add("draw", (t1 - t0) * 1000)
        self.stats.add("output", (time.perf_counter() - t1) * 1000)
        self.stats.frames += 1
        if self.on_frame is not None:
            self.on_frame(result)

    def _done(self) -> bool:
        return self._stop.is_set() or (
            self.max_frames is not None and self.stats.frames >= self.max_frames
        )

    # -------------------------------------------------------------------------------- running

    def run(self) -> RunStats:
        """Process until the stream ends, an output stops it, or Ctrl-C; then finalize outputs.

        Outputs are closed (finalized) on a normal end, on q/Esc, on Ctrl-C and when an output
        cannot write any more (disk full: they keep the frames written so far); on any other
        error they are aborted so no partial file is left.
        """
        if not self.sync and self.max_batch > 1:
            self.detector.warm_up(self.max_batch)
        start = time.perf_counter()
        self._fps = FpsMeter()  # from here: the warm-up is no part of the frame rate
        failed = False
        try:
            with self._graceful_interrupts():
                if self.sync:
                    self._run_sync()
                else:
                    self._run_async()
            if self._interrupted is not None:
                raise Terminated if self._interrupted == signal.SIGTERM else KeyboardInterrupt
            if self.max_frames is not None and self.stats.frames >= self.max_frames:
                self.stats.stopped_by = "--max-frames"
        except StopPipeline as stop:
            self.stats.stopped_by = str(stop) or "output"
        except OutputWriteError:
            # Disk full and the like: keep (close, not discard) what was written so far.
            self.stats.stopped_by = "an output write failure"
            raise
        except KeyboardInterrupt as interrupt:
            self.stats.stopped_by = stopped_by(interrupt)
            raise
        except BaseException:
            failed = True
            raise
        finally:
            self._stop.set()
            self.stats.seconds = time.perf_counter() - start
            self.stats.skipped = getattr(self.source, "frames_skipped", 0)
            self.stats.skipped_names = list(getattr(self.source, "skipped_names", []))
            self.stats.reconnects = getattr(self.source, "reconnects", 0)
            finalize(self.outputs, failed)
        return self.stats

    @contextmanager
    def _graceful_interrupts(self) -> Iterator[None]:
        """The first Ctrl-C (or a SIGTERM the CLI turns into one) stops at a frame boundary,
        so every output holds the same whole frames and the count is exact; a second one
        interrupts at once.

        Only on the main thread, and only where the signal is handled by Python (a background
        job that ignores SIGINT keeps ignoring it).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: object) -> None:
            if self._interrupted is not None:
                raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
            self._interrupted = signum
            self._stop.set()

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(sig)):
                previous[sig] = signal.signal(sig, stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_sync(self) -> None:
        while not self._done():
            frame = self._capture()
            if frame is None:
                return
            (item,) = self._infer([frame])
            self._emit(*item)

    def _run_async(self) -> None:
        live = getattr(self.source, "live", False)
        # A live queue stays short (newest frames win); a file queue holds a batch.
        depth = self.queue_size if live else max(self.queue_size, self.max_batch)
        frames: queue.Queue[Any] = queue.Queue(depth)
        results: queue.Queue[Any] = queue.Queue(depth)
        errors: list[BaseException] = []

        def put(q: queue.Queue[Any], item: Any) -> bool:
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def capture() -> None:
            try:
                while not self._stop.is_set():
                    frame = self._capture()
                    if frame is None:
                        break
                    if live:
                        # Newest frame wins: drop the oldest waiting one instead of queueing up.
                        while True:
                            try:
                                frames.put_nowait(frame)
                                break
                            except queue.Full:
                                try:
                                    frames.get_nowait()
                                    self.stats.dropped += 1
                                except queue.Empty:
                                    pass
                    elif not put(frames, frame):
                        return
            except BaseException as exc:
                errors.append(exc)
            put(frames, _END)

        def infer() -> None:
            try:
                ended = False
                while not ended and not self._stop.is_set():
                    try:
                        first = frames.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if first is _END:
                        break
                    # Fill the batch: a file waits a little for more frames (full batches are
                    # cheapest per frame); a live source takes only what is already waiting.
                    batch = [first]
                    deadline = time.perf_counter() + (0.0 if live else FILE_BATCH_WAIT_S)
                    while len(batch) < self.max_batch:
                        left = deadline - time.perf_counter()
                        try:
                            item = frames.get(timeout=left) if left > 0 else frames.get_nowait()
                        except queue.Empty:
                            break
                        if item is _END:
                            ended = True
                            break
                        batch.append(item)
                    for item in self._infer(batch):
                        if not put(results, item):
                            return
            except BaseException as exc:
                errors.append(exc)
            put(results, _END)

        threads = [
            threading.Thread(target=capture, name="ssd-trt-capture", daemon=True),
            threading.Thread(target=infer, name="ssd-trt-infer", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while not self._done():
                try:
                    item = results.get(timeout=0.1)
                except queue.Empty:
                    if errors:
                        break
                    continue
                if item is _END:
                    break
                self._emit(*item)
        finally:
            self._stop.set()
            for t in threads:
                # A stream read can block for its timeout plus a reconnect backoff; the source
                # must not be closed under a thread still reading it.
                t.join(timeout=30)
            alive = [t.name for t in threads if t.is_alive()]
            if alive:
                log.warning("threads still running: %s", alive)
        if errors:
            raise errors[0]
