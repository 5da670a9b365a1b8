"""The video engine: sources -> batches -> one detector -> per-source outputs. One source is
one lane; ``detect video.mp4`` and ``detect a.mp4 rtsp://cam --output-dir out`` run the same
code.

Data flow::

    source 1 --capture thread--> lane 1 --.                          .--> emitter 1 -> outputs 1
    source 2 --capture thread--> lane 2 ---+--> batcher (one thread) +--> emitter 2 -> outputs 2
    source N --capture thread--> lane N --'    submit() / collect()  '--> emitter N -> outputs N

* **Drop policy.** A lane holds a source's frames waiting for inference. A live lane keeps only
  its newest ``live_depth`` frames (older ones are dropped and counted); a file lane blocks its
  capture thread when full, so files never drop.
* **Batches.** The batcher closes a batch at ``max_batch`` frames, or ``max_wait_ms`` after its
  first frame, or as soon as no lane could add a frame worth waiting for (every lane ended, or
  live and already in the batch: a camera's next frame is a frame interval away). It takes
  frames round-robin, so one fast file cannot starve a camera, and takes a lane's frame only
  while fewer than ``max_in_flight`` of that lane's frames await output, so a slow output holds
  back its own source and never the others. Defaults come from ``batching``.
* **Two batches in flight** wherever the detector queues work (``Detector.supports_submit``),
  also for one source: while batch k runs on the GPU the batcher submits batch k+1 when that
  one is ready, and otherwise hands batch k's results out first, so overlap never costs latency.
* **Emitters** track (``--track``), draw and write each lane's results in frame order. Lane 0's
  emitter runs on the calling thread (GUI toolkits want the main thread), the others on theirs.
* **Stopping.** The first Ctrl-C or SIGTERM stops at a frame boundary: no new batch starts,
  the batches in flight are written, and every output of a source holds the same whole frames;
  a second one interrupts at once. A source that fails ends only its own lane (the others go
  on); the run fails with its error when every source failed. ``q``/Esc in a window and a full
  disk stop the run, keeping what was written.
* ``sync=True`` (one source) is the plain capture/detect/draw loop on the calling thread: the
  synchronous reference of ``--sync`` and the bench.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..batching import check_max_batch, default_max_batch, default_wait_ms
from ..detector import Detector, PendingBatch
from ..errors import SsdTrtError, Terminated
from ..source_names import unique_names
from ..sources import Frame, Source
from .lanes import NO_IMAGE, POLL_S, Lane, join_threads, signals_stop
from .outputs import FrameResult, Output, OutputWriteError, StopPipeline, finalize
from .overlay import draw_frame
from .stats import FpsMeter, RunStats, SourceStats, fold_stages, stopped_by
from .tracks import LaneTracking

log = logging.getLogger(__name__)

_END = object()  # end of a lane's results
# One frame between stages: (frame, detections, its share of the call's ms, captured at, batch).
_Item = tuple[Frame, Any, float, float, int]


_Batch = list[tuple[Lane, Frame, float]]


class Engine:
    """Run one detector over one or more sources; outputs per source, batches across sources.

    ``outputs[i]`` are source i's outputs (finalized by :meth:`run`); ``names[i]`` its name in
    the stats (default: from its description). ``max_batch`` (None: ``batching``'s default for
    the device) bounds a detector call; ``max_wait_ms`` (None: ``batching.default_wait_ms``,
    short when any source is live) is the batch deadline. ``max_in_flight`` and ``file_depth``
    (None: enough for a lane's share of the batches in flight) bound each lane. ``draw=None``
    draws when an output shows pictures or ``on_frame`` is given. ``on_frame(i, result,
    annotated)`` is called after source i's outputs got a frame (``on_frame_image=False``: it
    ignores ``annotated``, so GPU frames need no download). ``max_frames`` bounds each source.
    ``overlap=False`` keeps one batch in flight; ``sync=True``: see the module doc;
    ``tracking[i]`` (video/tracks.py) tracks source i in its emitter, before drawing.
    """

    def __init__(
        self,
        detector: Detector,
        sources: Sequence[Source],
        outputs: Sequence[Sequence[Output]],
        names: Sequence[str] | None = None,
        *,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        max_in_flight: int | None = None,
        file_depth: int | None = None,
        live_depth: int = 1,
        max_frames: int | None = None,
        draw: bool | None = None,
        overlap: bool = True,
        sync: bool = False,
        on_frame: Callable[[int, FrameResult, np.ndarray], None] | None = None,
        on_frame_image: bool = True,
        tracking: Sequence[LaneTracking | None] | None = None,
    ) -> None:
        names = list(names) if names is not None else unique_names([s.description for s in sources])
        if not (len(sources) == len(outputs) == len(names)) or not sources:
            raise ValueError("one outputs list and one name per source, at least one source")
        if sync and len(sources) > 1:
            raise ValueError("the plain synchronous loop runs one source")
        live = any(s.live for s in sources)
        # Only the GPU fast path queues work (supports_submit); it picks the larger batch.
        max_batch = check_max_batch(max_batch) or default_max_batch(detector.supports_submit)
        max_wait_ms = default_wait_ms(live) if max_wait_ms is None else max_wait_ms
        if not max_wait_ms >= 0:  # NaN too
            raise SsdTrtError(f"the batch deadline must be >= 0 ms, not {max_wait_ms:g}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        # Batches on the detector at once: two where it queues work, so packing and submitting
        # batch k+1 overlaps batch k on the GPU.
        self.depth = 2 if overlap and detector.supports_submit and not sync else 1
        share = math.ceil(self.depth * max_batch / len(sources))  # a lane's share in flight
        self.max_in_flight = max(1, max_in_flight or max(4, share))
        self.max_frames = max_frames
        self.sync = sync
        self.on_frame = on_frame
        self._frame_image = on_frame is not None and on_frame_image
        shows = self._frame_image or any(o.shows_image for outs in outputs for o in outs)
        self.draw = shows if draw is None else draw
        self.stats = RunStats(stopped_by="end of stream" if len(sources) == 1 else "end of streams")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._signal: int | None = None  # the signal that asked to stop
        self._threads: list[threading.Thread] = []
        self._next = 0  # round-robin start
        self.lanes: list[Lane] = []
        file_frames = max(file_depth or 4, share)  # room for the next batch while one runs
        for i, (source, name, outs) in enumerate(zip(sources, names, outputs, strict=True)):
            stats = SourceStats(name, source.description)
            self.stats.sources[name] = stats
            depth = live_depth if source.live else file_frames
            track = tracking[i] if tracking else None
            self.lanes.append(Lane(i, source, list(outs), stats, depth, track))

    # ---------------------------------------------------------------------------- capture

    def _read(self, lane: Lane) -> tuple[Frame, float] | None:
        """The lane's next frame and when it was captured; None at its end or max_frames."""
        with self._cond:
            # Frames taken or waiting count; a live frame replaced by a newer one does not.
            if self.max_frames is not None and lane.taken + len(lane.frames) >= self.max_frames:
                lane.capped = True
                return None
        t0 = time.perf_counter()
        frame = lane.source.read()
        t1 = time.perf_counter()
        with self._cond:
            self.stats.add("decode", (t1 - t0) * 1000)
        return None if frame is None else (frame, t1)

    def _capture(self, lane: Lane) -> None:
        try:
            while not self._stop.is_set():
                item = self._read(lane)
                if item is None:
                    break
                with self._cond:
                    lane.push(item, self._cond, self._stop)
                    self._cond.notify_all()
        except Exception as exc:  # a broken source ends its own lane, never the others
            lane.failure = exc
            lane.stats.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if len(self.lanes) > 1:
                log.warning("%s: %s; the other sources go on", lane.stats.name, lane.stats.error)
        finally:
            with self._cond:
                lane.ended = True
                self._cond.notify_all()

    # ---------------------------------------------------------------------------- batching

    def _take(self, batch: _Batch) -> None:
        """Move ready frames into ``batch``, one per lane per pass, round-robin. Lock held."""
        n = len(self.lanes)
        progress = True
        while progress and len(batch) < self.max_batch:
            progress = False
            for k in range(n):
                lane = self.lanes[(self._next + k) % n]
                if len(batch) >= self.max_batch:
                    break
                if lane.frames and lane.in_flight < self.max_in_flight:
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

    def _complete(self, batch: _Batch) -> bool:
        """Full, or no lane could add a frame worth waiting for. Lock held."""
        if len(batch) >= self.max_batch:
            return True
        taken = {id(lane) for lane, _, _ in batch}
        return all(
            (lane.ended and not lane.frames) or (lane.live and id(lane) in taken)
            for lane in self.lanes
        )

    def _fill(self, batch: _Batch, deadline: float | None, wait: bool) -> float | None:
        """Add ready frames to ``batch``; with ``wait``, block until it is complete or its
        deadline passed, or, while empty, until a frame comes or every source ended. Returns
        the batch's deadline (None while it is empty). Lock held."""
        while not self._stop.is_set():
            self._take(batch)
            if batch and deadline is None:
                deadline = time.perf_counter() + self.max_wait_s
            if not wait or (batch and self._complete(batch)) or self._finished():
                break
            if deadline is None:
                self._cond.wait(POLL_S)
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
                        self._complete(batch)
                        or time.perf_counter() >= deadline
                        or self._finished()
                        or not in_flight  # _fill waited for the batch to close
                    )
                    done = not batch and self._finished()
                clock["wait"] += time.perf_counter() - t0
                if batch and closed and not self._stop.is_set():
                    t1 = time.perf_counter()
                    pending = self.detector.submit([f.detector_input for _, f, _ in batch])
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
                t2 = time.perf_counter()
                items = self._collect(*in_flight.popleft())
                t3 = time.perf_counter()
                for lane, item in items:
                    lane.results.put(item)
                clock["collect"] += t3 - t2
                clock["hand_out"] += time.perf_counter() - t3
        except BaseException as exc:
            self._fail(exc)
        finally:
            for lane in self.lanes:
                lane.results.put(_END)

    def _collect(self, batch: _Batch, pending: PendingBatch) -> list[tuple[Lane, _Item]]:
        """Wait for a batch; count it; each frame with its lane and its share of the call."""
        detections, stages = self.detector.collect(pending)
        n = len(batch)
        # The GPU span where the backend measures one ("total"), else the sum of the stages.
        ms = stages.get("total", sum(stages.values()))
        self.stats.batches += 1
        self.stats.batched_frames += n
        self.stats.inference_ms += ms
        for key, value in stages.items():
            self.stats.stage_ms[key] = self.stats.stage_ms.get(key, 0.0) + value
        with self._cond:
            for stage, value in fold_stages(stages).items():
                self.stats.add(stage, value, n)
        return [
            (lane, (frame, dets, ms / n, t, n))
            for (lane, frame, t), dets in zip(batch, detections, strict=True)
        ]

    # ---------------------------------------------------------------------------- emitting

    def _write(self, lane: Lane, item: _Item, fps: FpsMeter) -> None:
        """Draw one frame and write it to every output of its lane (a frame boundary)."""
        frame, dets, infer_ms, captured, batch = item
        track, t0 = lane.tracking, time.perf_counter()
        dets = dets if track is None else track.update(frame, dets)
        tt = time.perf_counter()
        # Pixels only where read (a GPU frame is otherwise never downloaded).
        image = frame.image if self.draw or self._frame_image or lane.shows_image else NO_IMAGE
        if self.draw:
            image = image.copy()
            rate = None if frame.name else fps.value  # a still image has no frame rate
            trails = () if track is None else track.trails()
            draw_frame(image, dets, rate, infer_ms, self.detector.backend_name, trails)
        t1 = time.perf_counter()
        result = FrameResult(
            frame=frame,
            detections=dets,
            inference_ms=infer_ms,
            latency_ms=(t1 - captured) * 1000,
            fps=fps.tick(),
            batch=batch,
        )
        for out in lane.outputs:
            out.write(result, image)
        t2 = time.perf_counter()
        with self._cond:
            lane.stats.frames += 1
            lane.in_flight -= 1
            if track is not None:
                self.stats.add("track", (tt - t0) * 1000)
            self.stats.add("draw", (t1 - tt) * 1000)
            self.stats.add("output", (t2 - t1) * 1000)
            self._cond.notify_all()
        if self.on_frame is not None:
            self.on_frame(lane.index, result, image)

    def _emit(self, lane: Lane) -> None:
        fps = FpsMeter()  # from here: the warm-up is no part of the frame rate
        try:
            while True:
                try:
                    item = lane.results.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                self._write(lane, item, fps)
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._stop.set()

    def _run_plain(self) -> None:
        """The plain loop: read a frame, detect it, draw and write it; one source."""
        (lane,) = self.lanes
        fps = FpsMeter()
        while not self._stop.is_set():
            read = self._read(lane)
            if read is None:
                return
            frame, captured = read
            lane.in_flight += 1
            lane.taken += 1
            pending = self.detector.submit([frame.detector_input])
            ((_, item),) = self._collect([(lane, frame, captured)], pending)
            self._write(lane, item, fps)

    # ----------------------------------------------------------------------------- running

    def _on_signal(self, signum: int) -> None:
        if self._signal is not None:  # the second one: at once
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self._signal = signum
        self._stop.set()  # no lock here: the interrupted thread may hold it

    def _run_threads(self) -> None:
        threads = self._threads = [
            threading.Thread(target=self._capture, args=(lane,), name=f"ssd-trt-cap-{lane.index}")
            for lane in self.lanes
        ]
        threads.append(threading.Thread(target=self._batcher, name="ssd-trt-batcher"))
        threads += [
            threading.Thread(target=self._emit, args=(lane,), name=f"ssd-trt-emit-{lane.index}")
            for lane in self.lanes[1:]
        ]
        for t in threads:
            t.daemon = True
            t.start()
        self._emit(self.lanes[0])
        for t in threads[len(self.lanes) :]:  # the batcher and the emitters
            while t.is_alive():
                t.join(POLL_S)  # in short slices, so a signal reaches this thread

    def _outcome(self) -> None:
        """Raise what ended the run, if anything did; else say why it ended."""
        if self._errors:
            raise self._errors[0]
        if self._signal is not None:
            raise Terminated if self._signal == signal.SIGTERM else KeyboardInterrupt
        failed = [lane.failure for lane in self.lanes if lane.failure is not None]
        if failed and len(failed) == len(self.lanes):
            raise failed[0]
        if self.max_frames is not None and all(lane.capped for lane in self.lanes):
            self.stats.stopped_by = "--max-frames"

    def run(self) -> RunStats:
        """Process until every source ends, an output stops it, an error, or Ctrl-C; then
        finalize every output.

        Outputs are closed (finalized) on a normal end, on q/Esc, on Ctrl-C and when an output
        cannot write any more (disk full: they keep the frames written so far); on any other
        error they are aborted so no partial file is left.
        """
        start = time.perf_counter()
        failed = False
        try:
            if not self.sync:
                self.detector.warm_up(self.max_batch)
            start = time.perf_counter()  # from here: the warm-up is no part of the run
            with signals_stop(self._on_signal):
                if self.sync:
                    self._run_plain()
                else:
                    self._run_threads()
            self._outcome()
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
            join_threads(self._threads, timeout_s=30)
            self.stats.seconds = time.perf_counter() - start
            for lane in self.lanes:
                lane.record_end()
            finalize((out for lane in self.lanes for out in lane.outputs), failed)
        return self.stats
