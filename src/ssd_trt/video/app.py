"""The live-video job behind ``ssd-trt detect`` and ``ssd-trt webcam``: a source, a detector
and the outputs asked for, run through the pipeline, with everything closed on every exit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..detections import Detections
from ..detector import Detector
from ..errors import SsdTrtError
from ..sources import Frame, PacedSource, Source, open_source
from .display import display_problem
from .outputs import (
    FrameResult,
    JsonLinesOutput,
    Output,
    ServeOutput,
    WindowOutput,
    annotated_outputs,
)
from .pipeline import Pipeline, RunStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    source: str | int
    output: Path | str | None = None  # annotated video, image, or image folder (ends in /)
    json: Path | None = None  # one JSON line per frame
    serve: tuple[str, int] | None = None  # live page (host, port)
    token: str | None = None  # the live page answers only requests that carry it
    show: bool | None = None  # a window; None: when a display is available
    sync: bool = False
    realtime: bool = False  # deliver a file at its own frame rate, like a camera
    max_frames: int | None = None
    loop: bool = False  # replay a file from the start when it ends (demos, soak runs)
    save_dir: Path | None = None  # one annotated image per input image, at its own size


class LoopSource(Source):
    """Replays a file source forever, numbering frames on across passes (0, 1, ... N, N+1).

    Each pass reopens the file, so decoder state never carries over; a file that yields no
    frame on a pass ends the run instead of spinning.
    """

    def __init__(self, spec: str) -> None:
        self._spec = spec
        self._inner: Source | None = open_source(spec)
        if self._inner.live:
            self._inner.close()
            raise SsdTrtError("--loop is for files and images; live sources do not end")
        super().__init__(f"{self._inner.description} (looped)")
        self.fps = self._inner.fps
        self.passes = 1
        self._index = 0
        self._offset = 0.0  # media time of the passes before this one
        self._last = 0.0
        self._skipped_before = 0
        self._names_before: list[str] = []
        self._pass_frames = 0

    def read(self) -> Frame | None:
        for _ in range(2):  # this pass, else one fresh pass
            if self._inner is None:
                return None
            frame = self._inner.read()
            if frame is not None:
                return self._renumber(frame)
            self._next_pass()
        return None

    def _renumber(self, frame: Frame) -> Frame:
        self._last = frame.timestamp
        frame = Frame(self._index, self._offset + frame.timestamp, frame.image, frame.name)
        self._index += 1
        self._pass_frames += 1
        return frame

    def _next_pass(self) -> None:
        assert self._inner is not None
        self._skipped_before += self._inner.frames_skipped
        self._names_before = self.skipped_names
        self._inner.close()
        if self._pass_frames == 0:  # nothing decodable: stop rather than reopen forever
            self._inner = None
            return
        step = 1.0 / self.fps if self.fps else 0.04
        self._offset += self._last + step
        self._pass_frames = 0
        self._inner = open_source(self._spec)
        self.passes += 1

    @property
    def frames_skipped(self) -> int:  # type: ignore[override]
        return self._skipped_before + (self._inner.frames_skipped if self._inner else 0)

    @frames_skipped.setter
    def frames_skipped(self, value: int) -> None:
        pass  # the base class initializes it; the count lives in the passes

    @property
    def skipped_names(self) -> list[str]:  # type: ignore[override]
        """Each unreadable file once, however many passes skipped it."""
        now = self._inner.skipped_names if self._inner else []
        return list(dict.fromkeys([*self._names_before, *now]))

    @skipped_names.setter
    def skipped_names(self, value: list[str]) -> None:
        pass  # the base class initializes it; the names live in the passes

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


def parse_hostport(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"PORT"`` -> (host, port), with one-line errors for bad input."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SsdTrtError(
            f"--serve {text!r}: expected HOST:PORT or PORT with a port from 1 to 65535, "
            "e.g. 127.0.0.1:8080"
        )
    return host or "127.0.0.1", int(port)


def run_video(
    job: VideoJob,
    make_detector: Callable[[], Detector],
    on_result: Callable[[FrameResult], None] | None = None,
) -> RunStats:
    """Open the source first (a bad one fails before any model work), then the detector and
    the outputs; the pipeline owns and finalizes the outputs once it starts."""
    # A window asked for where none can open: say so now. OpenCV's Qt would abort the process
    # (SIGABRT) at the first frame, after the model loaded, leaving a temp video behind.
    problem = None if job.show is False else display_problem()
    if job.show and problem:
        raise SsdTrtError(
            f"--show needs a display, but {problem}; run with --no-show (add --serve "
            "127.0.0.1:8080 to watch in a browser)"
        )
    window = job.show is not False and problem is None  # by default: where one can open
    outputs: list[Output] = []
    detector = source = None
    bar = None
    try:
        source = LoopSource(str(job.source)) if job.loop else open_source(job.source)
        if job.realtime:
            if source.live:
                raise SsdTrtError("--realtime is for files and images; live sources already are")
            source = PacedSource(source, source.fps or 25.0)
        # Outputs before the model: an unwritable path or a taken port fails in a second.
        outputs.extend(annotated_outputs(source, job.output or None, job.save_dir))
        if job.json:
            outputs.append(JsonLinesOutput(job.json))
        if job.serve:
            outputs.append(ServeOutput(*job.serve, token=job.token))  # it logs where to look
        detector = make_detector()
        log.info("backend: %s; source: %s", detector.backend_name, source.description)
        if window:
            outputs.append(WindowOutput())
        bar = progress.bar(source.frame_count or None, "detect", "frame", leave=False)

        def on_frame(result: FrameResult) -> None:
            bar.update(1)
            if on_result is not None:
                on_result(result)

        pipeline = Pipeline(
            detector, source, outputs, sync=job.sync, max_frames=job.max_frames, on_frame=on_frame
        )
        outputs = []  # the pipeline owns them now and finalizes them
        try:
            return pipeline.run()
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM is a normal way to end a live run: say what it did before the
            # exit, on a line of its own (the bar goes first).
            bar.close()
            log.info("%s", pipeline.stats.summary())
            raise
    finally:
        if bar is not None:
            bar.close()
        for out in outputs:  # only those created before a failure
            out.abort()
        if source is not None:
            source.close()
        if detector is not None:
            detector.close()


class FoundSummary:
    """What a run found, for people: one line per image, or per class over a video's frames."""

    def __init__(self) -> None:
        self.frames = 0
        self.per_class: dict[str, tuple[int, float]] = {}  # label -> (frames seen in, best)

    def add(self, result: FrameResult) -> str | None:
        """Count one frame; for an image (a named frame) return its line."""
        self.frames += 1
        best: dict[str, float] = {}
        for det in result.detections:
            best[det.label] = max(best.get(det.label, 0.0), det.score)
        for label, score in best.items():
            seen, top = self.per_class.get(label, (0, 0.0))
            self.per_class[label] = (seen + 1, max(top, score))
        if not result.frame.name:
            return None
        return f"{result.frame.name}: {describe(result.detections)}"

    def lines(self) -> list[str]:
        """The end-of-run summary: each class, in how many frames, best score."""
        if not self.per_class:
            return [f"found nothing in {self.frames} frames above the score threshold"]
        ranked = sorted(self.per_class.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [
            f"{label}: in {seen} of {self.frames} frames (best {top:.2f})"
            for label, (seen, top) in ranked
        ]


def describe(detections: Detections) -> str:
    """``2 person (0.91, 0.85), 1 bicycle (0.77)`` or ``nothing found``."""
    groups: dict[str, list[float]] = {}
    for det in detections:
        groups.setdefault(det.label, []).append(det.score)
    if not groups:
        return "nothing found"
    ranked = sorted(groups.items(), key=lambda kv: -max(kv[1]))
    return ", ".join(
        f"{len(scores)} {label} ({', '.join(f'{s:.2f}' for s in sorted(scores, reverse=True))})"
        for label, scores in ranked
    )
