"""Output stage: where annotated frames and detections go (window, video, JSON lines, browser)."""

from __future__ import annotations

import errno
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..detections import Detections
from ..errors import SsdTrtError, require
from ..sources import Frame
from .display import has_display as has_display  # re-exported: its old home
from .serve import MjpegServer

log = logging.getLogger(__name__)


class StopPipeline(Exception):
    """Raised by an output when the user asks to stop (q or Esc in the window)."""


@dataclass
class FrameResult:
    """Everything the output stage knows about one processed frame."""

    frame: Frame
    detections: Detections
    # This frame's share of its detector call (preprocess + engine + postprocess): the call's
    # time divided by ``batch``, the frames it detected together.
    inference_ms: float
    latency_ms: float  # capture -> output
    fps: float  # output rate: frames over the last seconds' elapsed time
    batch: int = 1


class Output(ABC):
    # Whether write() uses the annotated picture; when no output does, nothing is drawn.
    shows_image = True

    @abstractmethod
    def write(self, result: FrameResult, annotated: np.ndarray) -> None: ...

    def close(self) -> None:  # noqa: B027 - most outputs have nothing to finalize
        """Finalize: called once, also after Ctrl-C or an error."""

    def abort(self) -> None:
        """Called instead of close() when the run failed: drop partial files."""
        self.close()


def finalize(outputs: Iterable[Output], failed: bool) -> None:
    """Close every output (abort them after a failure, so no partial file is left); one that
    fails to close does not keep the others from finalizing."""
    for out in outputs:
        try:
            out.abort() if failed else out.close()
        except Exception as exc:
            log.warning("closing %s failed: %s", type(out).__name__, exc)


class WindowOutput(Output):
    """cv2.imshow window; q or Esc (or closing the window) stops the run."""

    def __init__(self, title: str = "ssd-trt") -> None:
        self.cv2 = require("cv2", "video")
        self.title = title
        self._opened = False

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        cv2 = self.cv2
        if not self._opened:
            try:
                cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            except cv2.error:
                raise SsdTrtError(
                    "this OpenCV build cannot open windows (opencv-python-headless?); install "
                    "opencv-python or run with --no-show"
                ) from None
            self._opened = True
        cv2.imshow(self.title, annotated)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            raise StopPipeline("quit key")
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            raise StopPipeline("window closed")

    def close(self) -> None:
        if self._opened:
            self.cv2.destroyWindow(self.title)
            self.cv2.waitKey(1)
            self._opened = False


class OutputWriteError(SsdTrtError):
    """An output stopped being writable mid-run (disk full, quota, file size limit).

    The run stops; every output keeps what it wrote up to the last good frame and is closed
    (not discarded), and the CLI prints this one line.
    """


_WRITE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EROFS: "the file system became read-only",
}


def _reason(exc: OSError) -> str:
    return _WRITE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__


def write_failed(path: Path, frames: int, exc: OSError) -> OutputWriteError:
    return OutputWriteError(
        f"writing {path} stopped after {frames} frames: {_reason(exc)}; the outputs were "
        "closed with what was written before (a video up to its last whole 2 s fragment); "
        "free some space or write to another disk"
    )


def _open_failed(path: Path, exc: OSError) -> SsdTrtError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SsdTrtError(
            f"cannot write {path}: permission denied in {path.parent}; choose a folder you can "
            "write to"
        )
    return SsdTrtError(f"cannot write {path}: {_reason(exc)}")


class _AtomicFileOutput(Output):
    """Writes to a hidden temp file beside the target and renames it on close.

    The temp file is created up front, so an unwritable place fails before any model work,
    with the real reason (permission, read-only, missing folder).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SsdTrtError(f"output {self.path} is a directory; pass a file name")
        if not self.path.parent.exists():
            raise SsdTrtError(f"folder {self.path.parent} does not exist; create it first")
        # Keep the real suffix last (writers pick the container from it); the pid keeps two
        # runs writing the same file from clobbering each other's temp file.
        name = f".{self.path.stem}.{os.getpid()}.partial{self.path.suffix}"
        self.tmp = self.path.with_name(name)
        self.frames = 0  # written so far
        try:
            self._file: BinaryIO | None = open(self.tmp, "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise _open_failed(self.path, exc) from None

    def _finish(self) -> None:
        if self.tmp.exists():
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._release()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._release()
        self._finish()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _PyAvH264:
    """H.264 (libx264, yuv420p) in fragmented MP4 through PyAV's bundled FFmpeg.

    Browsers play it, and each fragment (2 s, starting at a keyframe) stands alone, so a file
    cut short by a full disk still plays up to its last whole fragment.
    """

    CODEC = "libx264"

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:

        import av

        self.container = av.open(
            str(path),
            "w",
            format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        )
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(
            self.CODEC, rate=rate, options={"preset": "veryfast", "crf": "23"}
        )
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = max(1, round(fps * 2))
        self._av = av
        self._pts = 0

    def write(self, bgr: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = self._pts
        self._pts += 1
        for packet in self.stream.encode(frame.reformat(format="yuv420p")):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()


def cut_to_whole_fragments(path: Path) -> int:
    """Cut a fragmented MP4 back to its last complete fragment (moof + mdat); returns its size.

    A write that failed mid-fragment (disk full) leaves a torn box at the end, which players
    and decoders report as an error; without it the file ends cleanly at the last good frame.
    """
    size, good = path.stat().st_size, 0
    with open(path, "r+b") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if length == 1 and len(head) >= 16:  # 64-bit box size
                length = int.from_bytes(head[8:16], "big")
            if length < 8 or pos + length > size:
                break  # the torn box
            pos += length
            if kind in (b"moov", b"mdat"):  # header complete, or a fragment's data complete
                good = pos
        f.truncate(good)
    return good


class _OpenCvWriter:
    def __init__(self, cv2: Any, path: Path, fourcc: str, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self.writer.isOpened():
            self.writer.release()
            raise SsdTrtError(f"OpenCV cannot write {path.name} with codec {fourcc}")

    def write(self, bgr: np.ndarray) -> None:
        self.writer.write(bgr)

    def close(self) -> None:
        self.writer.release()


def _has_pyav_h264() -> bool:
    try:
        import av

        av.codec.Codec(_PyAvH264.CODEC, "w")
        return True
    except Exception:  # not installed, or an FFmpeg built without libx264
        return False


class VideoOutput(_AtomicFileOutput):
    """Annotated video. .mp4/.m4v/.mov: H.264 through PyAV where it is installed (browsers play
    it), else OpenCV's MPEG-4 Part 2 with a warning; .avi/.mkv: OpenCV's MJPG."""

    SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
    MJPG_SUFFIXES = (".avi", ".mkv")

    def __init__(self, path: Path, fps: float | None) -> None:
        if Path(path).suffix.lower() not in self.SUFFIXES:
            raise SsdTrtError(
                f"cannot write video {path}: use a .mp4, .avi, .mkv or .mov file name"
            )
        self.cv2 = require("cv2", "video")
        super().__init__(path)
        self._release()  # the writer reopens the temp file by name
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        self.writer: _PyAvH264 | _OpenCvWriter | None = None
        self.size: tuple[int, int] = (0, 0)
        self.codec = ""
        self._torn = False  # a write failed: the file may end in a partial fragment

    def _open_writer(self, size: tuple[int, int]) -> None:
        suffix = self.path.suffix.lower()
        if suffix in self.MJPG_SUFFIXES:
            self.writer = _OpenCvWriter(self.cv2, self.tmp, "MJPG", self.fps, size)
            self.codec = "MJPG (OpenCV)"
        elif _has_pyav_h264():
            try:
                self.writer = _PyAvH264(self.tmp, self.fps, size)
            except OSError as exc:
                raise _open_failed(self.path, exc) from None
            self.codec = "H.264 (libx264 via PyAV)"
        else:
            log.warning(
                "PyAV with H.264 is not installed, so %s is MPEG-4 Part 2, which browsers do "
                "not play; pip install 'ssd-trt[video]' (PyAV) for H.264",
                self.path,
            )
            self.writer = _OpenCvWriter(self.cv2, self.tmp, "mp4v", self.fps, size)
            self.codec = "MPEG-4 Part 2 (mp4v via OpenCV)"
        log.info("writing %s: %s, %dx%d at %g fps", self.path, self.codec, *size, self.fps)

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        if self.writer is None:
            h, w = annotated.shape[:2]
            self.size = (w + w % 2, h + h % 2)  # 4:2:0 chroma needs even sizes
            self._open_writer(self.size)
        if annotated.shape[1::-1] != self.size:
            annotated = self._fit(annotated)
        assert self.writer is not None
        try:
            self.writer.write(annotated)
        except OSError as exc:
            self._torn = True
            raise write_failed(self.path, self.frames, exc) from None
        self.frames += 1

    def _finish(self) -> None:
        if not self.codec:  # no frame ever came: leave no empty video behind
            self.tmp.unlink(missing_ok=True)
            return
        super()._finish()

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Pad an odd-sized frame by one pixel; resize frames of another size (image folders)."""
        h, w = image.shape[:2]
        if (w + w % 2, h + h % 2) == self.size:
            return self.cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, self.cv2.BORDER_REPLICATE)
        return self.cv2.resize(image, self.size)

    def _release(self) -> None:
        super()._release()
        writer, self.writer = getattr(self, "writer", None), None
        if writer is None:
            return
        try:
            writer.close()
        except OSError as exc:  # the disk filled: what was written before stays
            log.debug("finishing %s: %s", self.path, _reason(exc))
            self._torn = True
        if self._torn and isinstance(writer, _PyAvH264) and self.tmp.exists():
            kept = cut_to_whole_fragments(self.tmp)
            log.info("%s keeps its whole fragments (%d bytes)", self.path, kept)


class JsonLinesOutput(_AtomicFileOutput):
    """One JSON object per frame: index, timestamp, inference_ms (this frame's share of its
    detector call: the call's time divided by ``batch``), batch (the frames detected in that
    call), detections (pixel boxes), and name for an image.

    Each line goes to the file whole before the next frame: a write that fails (disk full) is
    cut back to the last complete line, so the file ends at the last good frame.
    """

    shows_image = False

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        record = {
            "frame": result.frame.index,
            "timestamp": round(result.frame.timestamp, 4),
            "inference_ms": round(result.inference_ms, 2),
            "batch": result.batch,
            "detections": result.detections.to_dicts(),
        }
        if result.frame.name:
            record["name"] = result.frame.name
        assert self._file is not None
        data = memoryview((json.dumps(record) + "\n").encode())
        good = self._file.tell()
        try:
            while data:
                data = data[self._file.write(data) :]
        except OSError as exc:
            self._file.truncate(good)
            raise write_failed(self.path, self.frames, exc) from None
        self.frames += 1


class ServeOutput(Output):
    """Publishes JPEGs and live stats to the MJPEG page (see serve.py); ``token``: the page
    answers only requests that carry it."""

    def __init__(self, host: str, port: int, quality: int = 80, token: str | None = None) -> None:
        self.cv2 = require("cv2", "video")
        self.server = MjpegServer(host, port, token=token)
        self.server.start()
        self.quality = quality

    @property
    def url(self) -> str:
        return self.server.url

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        ok, jpeg = self.cv2.imencode(
            ".jpg", annotated, [self.cv2.IMWRITE_JPEG_QUALITY, self.quality]
        )
        if ok:
            self.server.publish(
                jpeg.tobytes(),
                {
                    "frame": result.frame.index,
                    "fps": round(result.fps, 1),
                    "latency_ms": round(result.latency_ms, 1),
                    "inference_ms": round(result.inference_ms, 1),
                    "batch": result.batch,
                    "detections": len(result.detections),
                },
            )

    def close(self) -> None:
        self.server.close()
