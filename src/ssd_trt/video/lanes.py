"""The engine's per-source part and its stop signal: a lane holds one source's frames between
its capture thread and the batcher, with the drop policy (live sources keep their newest
frames, files never drop); ``signals_stop`` routes Ctrl-C and SIGTERM to the stop rule."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..sources import Frame, Source
from .outputs import Output
from .stats import SourceStats
from .tracks import LaneTracking

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often blocked threads re-check the stop flag
# What outputs that show no picture get: nothing is drawn or downloaded for them.
NO_IMAGE = np.zeros((0, 0, 3), np.uint8)
NO_IMAGE.flags.writeable = False


class Lane:
    """One source: its frames waiting for the batcher, its in-flight count, its results.

    Frame state is guarded by the engine's condition, which the batcher waits on.
    """

    def __init__(
        self,
        index: int,
        source: Source,
        outputs: list[Output],
        stats: SourceStats,
        depth: int,
        tracking: LaneTracking | None = None,
    ) -> None:
        self.index, self.source, self.outputs, self.stats = index, source, outputs, stats
        self.live = source.live
        self.depth = max(1, depth)
        self.frames: deque[tuple[Frame, float]] = deque()
        self.ended = False  # the capture thread is done; the lane empties, then closes
        self.capped = False  # it ended at max_frames
        self.failure: BaseException | None = None  # why the source ended early
        self.in_flight = 0  # taken by the batcher, not yet written by the emitter
        self.taken = 0  # frames the batcher took, for max_frames
        self.results: queue.Queue[Any] = queue.Queue()
        self.tracking = tracking  # with --track; used by the lane's emitter only
        self.shows_image = any(o.shows_image for o in outputs)  # an output reads its pixels

    def record_end(self) -> None:
        """The source's own counts (and the tracks seen) into its stats, at the run's end."""
        s, source = self.stats, self.source
        s.skipped, s.skipped_names = source.frames_skipped, list(source.skipped_names)
        s.reconnects = source.reconnects
        if self.tracking is not None:
            s.tracks = self.tracking.tracks_per_class()

    def push(
        self, item: tuple[Frame, float], cond: threading.Condition, stop: threading.Event
    ) -> None:
        """The drop policy (lock held): live, the newest frame wins (a camera's stale frames
        are worth nothing); a file waits for room, so it never drops."""
        if self.live:
            while len(self.frames) >= self.depth:
                self.frames.popleft()
                self.stats.dropped += 1
        else:
            while len(self.frames) >= self.depth and not stop.is_set():
                cond.wait(POLL_S)
        self.frames.append(item)


@contextmanager
def signals_stop(stop: Callable[[int], None]) -> Iterator[None]:
    """Route Ctrl-C and SIGTERM (which the CLI turns into ``Terminated``) to ``stop(signum)``
    for the block. Only on the main thread, and only where Python handles the signal (a
    background job that ignores SIGINT keeps ignoring it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(sig)):
            previous[sig] = signal.signal(sig, lambda signum, _: stop(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def join_threads(threads: Sequence[threading.Thread], timeout_s: float) -> None:
    """Wait for the engine's threads before its sources close: a stream read can block for its
    timeout plus a reconnect backoff, and a source must not close under a thread reading it."""
    for t in threads:
        t.join(timeout=timeout_s)
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        log.warning("threads still running: %s", alive)
