"""The live-video job behind ``ssd-trt detect`` and ``ssd-trt webcam``: a source, a detector
and the outputs asked for, run through the pipeline, with everything closed on every exit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..detector import Detector
from ..errors import SsdTrtError
from ..sources import PacedSource, open_source
from .outputs import (
    FrameResult,
    JsonLinesOutput,
    Output,
    ServeOutput,
    VideoOutput,
    WindowOutput,
    has_display,
)
from .pipeline import Pipeline, RunStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    source: str | int
    output: Path | None = None  # annotated video
    json: Path | None = None  # one JSON line per frame
    serve: tuple[str, int] | None = None  # live page (host, port)
    show: bool | None = None  # a window; None: when a display is available
    sync: bool = False
    realtime: bool = False  # deliver a file at its own frame rate, like a camera
    max_frames: int | None = None


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
    outputs: list[Output] = []
    detector = source = None
    bar = None
    try:
        source = open_source(job.source)
        if job.realtime:
            if source.live:
                raise SsdTrtError("--realtime is for files and images; live sources already are")
            source = PacedSource(source, source.fps or 25.0)
        detector = make_detector()
        log.info("backend: %s; source: %s", detector.backend_name, source.description)
        if job.output:
            outputs.append(VideoOutput(job.output, source.fps))
        if job.json:
            outputs.append(JsonLinesOutput(job.json))
        if job.serve:
            server = ServeOutput(*job.serve)
            outputs.append(server)
            log.info("serving the live view at %s", server.url)
        if job.show if job.show is not None else has_display():
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
        return pipeline.run()
    finally:
        if bar is not None:
            bar.close()
        for out in outputs:  # only those created before a failure
            out.abort()
        if source is not None:
            source.close()
        if detector is not None:
            detector.close()
