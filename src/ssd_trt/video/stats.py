"""What a video run did: one stats type for one source or many, and the frame-rate meter."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ..errors import Terminated

# Per-frame stages, in detection_batch.STAGES's names and order; "track" only with --track.
STAGES = ("decode", "preprocess", "inference", "nms", "postprocess", "track", "draw", "output")
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


def fold_stages(stages: dict[str, float]) -> dict[str, float]:
    """A detector call's stage milliseconds as the pipeline's detection stages."""
    folded = dict.fromkeys(("preprocess", "inference", "nms", "postprocess"), 0.0)
    for stage, ms in stages.items():
        if stage in _FOLD:
            folded[_FOLD[stage]] += ms
    return folded


def stopped_by(interrupt: KeyboardInterrupt) -> str:
    """What a run's summary says ended it: Ctrl-C, or SIGTERM (the CLI raises Terminated)."""
    return "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"


def _named(names: list[str], shown: int = 3) -> str:
    """`` (a.jpg, b.jpg and 2 more)``: which files were skipped, so they can be found."""
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f" ({', '.join(names[:shown])}{more})"


def track_count(n: int) -> str:
    return f"{n} track{'' if n == 1 else 's'}"


def tracks_text(tracks: dict[str, int]) -> str:
    """``person: 14 tracks, car: 1 track`` (most first)."""
    ranked = sorted(tracks.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{label}: {track_count(n)}" for label, n in ranked)


@dataclass
class SourceStats:
    """One source's (one lane's) share of a run."""

    name: str
    description: str
    frames: int = 0  # delivered to the outputs
    dropped: int = 0  # live frames dropped because a newer one arrived first
    skipped: int = 0  # unreadable frames or images the source skipped
    reconnects: int = 0
    error: str = ""  # why the source ended early, if it failed
    skipped_names: list[str] = field(default_factory=list)  # the unreadable image files
    tracks: dict[str, int] | None = None  # distinct tracks per class, with --track

    def summary(self) -> str:
        text = f"{self.name}: {self.frames} frames"
        for key in ("dropped", "skipped", "reconnects"):
            if getattr(self, key):
                text += f", {getattr(self, key)} {key}"
                if key == "skipped":
                    text += _named(self.skipped_names)
        if self.tracks is not None:
            text += f"; {tracks_text(self.tracks) or 'no tracks'}"
        return text + (f"; failed: {self.error}" if self.error else "")


@dataclass
class RunStats:
    """A run over one source or many: per-source counts, batches, and where the time went."""

    sources: dict[str, SourceStats] = field(default_factory=dict)
    batches: int = 0  # detector calls
    batched_frames: int = 0
    inference_ms: float = 0.0  # sum over batches (the GPU span where the backend times it)
    seconds: float = 0.0
    stopped_by: str = "end of stream"
    # Where the batcher thread's time went (seconds): waiting for frames, submitting batches
    # (the fast path packs frames into pinned memory and queues the GPU work there), collecting
    # them (waiting for the GPU, postprocess), handing results to the emitters.
    batcher_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("wait", "submit", "collect", "hand_out"), 0.0)
    )
    overlapped_batches: int = 0  # submitted while another batch was in flight
    stage_ms: dict[str, float] = field(default_factory=dict)  # the detector's, summed per batch
    # Per-frame pipeline stages (STAGES). Running sums, not lists: a webcam or --serve run may
    # go on for days.
    stage_total_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def _sum(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.sources.values())

    @property
    def frames(self) -> int:
        return self._sum("frames")

    @property
    def dropped(self) -> int:
        return self._sum("dropped")

    @property
    def skipped(self) -> int:
        return self._sum("skipped")

    @property
    def reconnects(self) -> int:
        return self._sum("reconnects")

    @property
    def skipped_names(self) -> list[str]:
        return [n for s in self.sources.values() for n in s.skipped_names]

    @property
    def tracks(self) -> dict[str, int] | None:
        """Distinct tracks per class over every source (None without --track)."""
        per_source = [s.tracks for s in self.sources.values() if s.tracks is not None]
        if not per_source:
            return None
        total: dict[str, int] = {}
        for counts in per_source:
            for label, n in counts.items():
                total[label] = total.get(label, 0) + n
        return total

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_batch(self) -> float:
        return self.batched_frames / self.batches if self.batches else 0.0

    def add(self, stage: str, ms: float, frames: int = 1) -> None:
        """``ms`` spent on ``stage`` for ``frames`` frames (a batch counts each of its frames)."""
        self.stage_total_ms[stage] += ms
        self.stage_count[stage] += frames

    def mean_ms(self, stage: str) -> float:
        count = self.stage_count[stage]
        return self.stage_total_ms[stage] / count if count else 0.0

    def stages_line(self) -> str:
        """Mean milliseconds per frame of each stage that ran, e.g. ``per frame: decode 1.9 ms,
        preprocess 0.8 ms, ..., track 0.3 ms, draw 0.9 ms, output 2.1 ms``."""
        parts = [f"{s} {self.mean_ms(s):.2f} ms" for s in STAGES if self.stage_count[s]]
        return "per frame: " + ", ".join(parts) if parts else "per frame: no frames"

    def summary(self) -> str:
        """One line for one source; a head line and a line per source for many."""
        if len(self.sources) != 1:
            head = (
                f"{len(self.sources)} sources, {self.frames} frames in {self.seconds:.1f} s "
                f"({self.fps:.1f} FPS), {self.batches} batches of {self.mean_batch:.1f} on "
                f"average; stopped by {self.stopped_by}"
            )
            return "\n".join([head, *(s.summary() for s in self.sources.values())])
        (one,) = self.sources.values()
        text = f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} FPS)"
        if one.dropped:
            text += f", {one.dropped} dropped to keep up"
        if one.skipped:
            text += f", {one.skipped} unreadable skipped{_named(one.skipped_names)}"
        if one.reconnects:
            text += f", {one.reconnects} reconnects"
        return f"{text}; stopped by {self.stopped_by}"


MultiStats = RunStats  # its old name for many sources


def combined(parts: list[RunStats]) -> RunStats:
    """Runs side by side (video/shards.py: one per process) as one: every source, counts and
    times summed, the longest wall time, and what stopped the first that did not just end."""
    total = RunStats()
    for part in parts:
        total.sources.update(part.sources)
        total.batches += part.batches
        total.batched_frames += part.batched_frames
        total.inference_ms += part.inference_ms
        total.overlapped_batches += part.overlapped_batches
        total.seconds = max(total.seconds, part.seconds)
        if total.stopped_by == RunStats.stopped_by:  # the first that did not just end says
            total.stopped_by = part.stopped_by
        for into, add in ((total.batcher_s, part.batcher_s), (total.stage_ms, part.stage_ms),
                          (total.stage_total_ms, part.stage_total_ms)):  # fmt: skip
            for key, value in add.items():
                into[key] = into.get(key, 0.0) + value
        for key, n in part.stage_count.items():
            total.stage_count[key] = total.stage_count.get(key, 0) + n
    return total


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
