"""The jobs behind ``ssd-trt detect`` and ``ssd-trt webcam``: one source with the outputs asked
for (``run_video``), or many sources with per-source files in a folder (``run_multi``); both
run through the engine (video/engine.py), with everything closed on every exit."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import progress
from ..batching import check_max_batch
from ..detections import Detections
from ..detector import Detector
from ..errors import SsdTrtError
from ..source_names import unique_names
from ..sources import Frame, PacedSource, Source, StreamSettings, open_source
from .decode import shared_decoders
from .display import display_problem
from .engine import Engine
from .grid import GridView
from .outputs import (
    FrameResult,
    JsonLinesOutput,
    Output,
    ServeOutput,
    VideoOutput,
    WindowOutput,
    annotated_outputs,
)
from .stats import RunStats, track_count
from .tracks import LaneTracking, TrackSettings

if TYPE_CHECKING:  # the NVDEC module loads where a source decodes there
    from .nvdec import DecoderFactory

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
    max_batch: int | None = None  # frames per detector call; None: batching's default
    max_wait_ms: float | None = None  # the batch deadline; None: batching's default
    track: TrackSettings | None = None  # one tracker for the source (video/tracks.py)
    decode: str = "cpu"  # who decodes: cpu, or nvdec (video/decode.py chose it)


class LoopSource(Source):
    """Replays a file source forever, numbering frames on across passes (0, 1, ... N, N+1).

    Each pass reopens the file, so decoder state never carries over; a file that yields no
    frame on a pass ends the run instead of spinning.
    """

    def __init__(self, spec: str, opener: Callable[[str], Source] = open_source) -> None:
        self._spec, self._opener = spec, opener
        self._inner: Source | None = opener(spec)
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

    def wrapped(self) -> Source | None:
        return self._inner

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
        # In place: a frame decoded on the GPU stays there (no download to copy it).
        frame.index, frame.timestamp = self._index, self._offset + frame.timestamp
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
        self._inner = self._opener(self._spec)
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


def check_batching(max_batch: int | None, max_wait_ms: float | None) -> None:
    """Bad batch settings fail before any source or model work."""
    check_max_batch(max_batch)
    if max_wait_ms is not None and not max_wait_ms >= 0:
        raise SsdTrtError(f"--batch-wait-ms {max_wait_ms:g} must be >= 0")


def run_video(
    job: VideoJob,
    make_detector: Callable[[], Detector],
    on_result: Callable[[FrameResult], None] | None = None,
) -> RunStats:
    """Open the source first (a bad one fails before any model work), then the detector and
    the outputs; the engine owns and finalizes the outputs once it starts."""
    # A window asked for where none can open: say so now. OpenCV's Qt would abort the process
    # (SIGABRT) at the first frame, after the model loaded, leaving a temp video behind.
    problem = None if job.show is False else display_problem()
    if job.show and problem:
        raise SsdTrtError(
            f"--show needs a display, but {problem}; run with --no-show (add --serve "
            "127.0.0.1:8080 to watch in a browser)"
        )
    window = job.show is not False and problem is None  # by default: where one can open
    check_batching(job.max_batch, job.max_wait_ms)
    outputs: list[Output] = []
    detector = source = None
    bar = None
    try:
        decoders = shared_decoders([job.decode])  # --loop reopens the file

        def opener(spec: str | int) -> Source:
            return open_decoded(spec, job.decode, decoders=decoders)

        source = LoopSource(str(job.source), opener) if job.loop else opener(job.source)
        if job.realtime:
            if source.live:
                raise SsdTrtError("--realtime is for files and images; live sources already are")
            source = PacedSource(source, source.fps or 25.0)
        # A tracker (time-ordered sources only) and outputs before the model: a folder of
        # images with --track, an unwritable path or a taken port fails in a second.
        tracking = [LaneTracking.for_source(job.track, source, "")] if job.track else None
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

        engine = Engine(
            detector,
            [source],
            [outputs],
            sync=job.sync,
            max_batch=job.max_batch,
            max_wait_ms=job.max_wait_ms,
            max_frames=job.max_frames,
            draw=any(o.shows_image for o in outputs),
            on_frame=lambda _, result, __: on_frame(result),
            on_frame_image=False,  # the progress bar and on_result need no pixels
            tracking=tracking,
        )
        outputs = []  # the engine owns them now and finalizes them
        try:
            return engine.run()
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM is a normal way to end a live run: say what it did before the
            # exit, on a line of its own (the bar goes first).
            bar.close()
            log.info("%s", engine.stats.summary())
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
    max_batch: int | None = None  # frames per detector call; None: batching's default
    max_wait_ms: float | None = None  # the batch deadline; None: batching's default
    streams: StreamSettings = StreamSettings()
    decode_threads: int | None = None  # FFmpeg threads per source; None: decode_threads_for()
    track: TrackSettings | None = None  # one tracker per source, each with its own IDs
    decode: tuple[str, ...] = ()  # per source: cpu or nvdec (video/decode.py); () all cpu
    names: tuple[str, ...] = ()  # per source: its outputs' name; () from the sources


def decode_threads_for(sources: int, cores: int | None = None) -> int:
    """FFmpeg decoder threads per source: the cores shared out, at least one each. Many streams
    already keep every core busy, one decoder each; FFmpeg's default (a thread per core for
    every stream) only adds threads that fight for the same cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, sources))


def open_decoded(
    spec: str | int,
    decode: str = "cpu",
    streams: StreamSettings = StreamSettings(),
    decode_threads: int | None = None,
    decoders: DecoderFactory | None = None,
) -> Source:
    """``open_source``, or an :class:`NvdecSource` where ``decode`` is ``nvdec`` (a file or
    RTSP stream on the GPU's decoder; video/decode.py decided it can). ``decoders``: the NVDEC
    factory to share between sources (None: a new ``nvdec_or_cpu()``)."""
    if decode != "nvdec":
        return open_source(spec, **asdict(streams), decode_threads=decode_threads)
    from .nvdec import NvdecSource

    return NvdecSource(str(spec), reconnect=streams, decoder=decoders)


def open_sources(
    specs: Sequence[str | int],
    realtime: bool = False,
    streams: StreamSettings = StreamSettings(),
    decode_threads: int | None = None,
    decode: Sequence[str] = (),
) -> list[Source]:
    """Open every source (bad ones fail before any model work, all named in one error); close
    all on a failure. ``decode_threads``: FFmpeg threads per file or stream (None:
    :func:`decode_threads_for`). ``decode[i]``: ``nvdec`` opens source i on the GPU's decoder
    (default: all on the CPU)."""
    threads = decode_threads or decode_threads_for(len(specs))
    opened: list[Source] = []
    bad: list[str] = []
    try:
        kinds = list(decode) or ["cpu"] * len(specs)
        decoders = shared_decoders(kinds)
        for spec, kind in zip(specs, kinds, strict=True):
            try:
                source = open_decoded(spec, kind, streams, threads, decoders)
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
) -> RunStats:
    """Open the sources, then the detector and each source's outputs in ``job.output_dir``,
    in this process (video/shards.py spreads them over several)."""
    if not job.sources:
        raise SsdTrtError("no sources given; pass one or more files, folders, URLs or cameras")
    check_batching(job.max_batch, job.max_wait_ms)
    out_dir = Path(job.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SsdTrtError(f"--output-dir {out_dir} is a file; pass a folder")
    names = list(job.names) or unique_names(job.sources)
    sources: list[Source] = []
    outputs: list[list[Output]] = []
    detector = grid = None
    try:
        sources = open_sources(
            job.sources, job.realtime, job.streams, job.decode_threads, job.decode
        )
        tracking = (
            [LaneTracking.for_source(job.track, s, n) for s, n in zip(sources, names, strict=True)]
            if job.track
            else None
        )
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

        engine = Engine(
            detector,
            sources,
            outputs,
            names,
            max_batch=job.max_batch,
            max_wait_ms=job.max_wait_ms,
            max_frames=job.max_frames,
            on_frame=frame_done,
            on_frame_image=grid is not None or on_frame is not None,
            tracking=tracking,
        )
        outputs = []  # the engine finalizes them now
        try:
            return engine.run()
        except KeyboardInterrupt:
            log.info("%s", engine.stats.summary())  # what the run did, before the exit
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

    def lines(self, tracks: dict[str, int] | None = None) -> list[str]:
        """The end-of-run summary: each class, in how many frames, best score; with
        ``tracks`` (--track) also its distinct tracks (``person: 14 tracks``)."""
        if not self.per_class:
            return [f"found nothing in {self.frames} frames above the score threshold"]
        ranked = sorted(self.per_class.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [
            f"{label}: in {seen} of {self.frames} frames (best {top:.2f})"
            + (f", {track_count(tracks.get(label, 0))}" if tracks is not None else "")
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
