"""Output stage: where annotated frames and detections go (window, video, JSON lines, browser)."""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..detections import Detections
from ..errors import SsdTrtError, require
from ..sources import Frame
from .serve import MjpegServer


class StopPipeline(Exception):
    """Raised by an output when the user asks to stop (q or Esc in the window)."""


@dataclass
class FrameResult:
    """Everything the output stage knows about one processed frame."""

    frame: Frame
    detections: Detections
    inference_ms: float  # preprocess + engine + postprocess for this frame
    latency_ms: float  # capture -> output
    fps: float  # output rate, smoothed


class Output(ABC):
    @abstractmethod
    def write(self, result: FrameResult, annotated: np.ndarray) -> None: ...

    def close(self) -> None:  # noqa: B027 - most outputs have nothing to finalize
        """Finalize: called once, also after Ctrl-C or an error."""

    def abort(self) -> None:
        """Called instead of close() when the run failed: drop partial files."""
        self.close()


def has_display() -> bool:
    """Whether a window can be shown (X11/Wayland on Linux; always on Windows and macOS)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


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


class _AtomicFileOutput(Output):
    """Writes to a hidden temp file beside the target and renames it on close."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SsdTrtError(f"output {self.path} is a directory; pass a file name")
        if not self.path.parent.exists():
            raise SsdTrtError(f"folder {self.path.parent} does not exist; create it first")
        # Keep the real suffix last (OpenCV picks the container from it); the pid keeps two
        # runs writing the same file from clobbering each other's temp file.
        name = f".{self.path.stem}.{os.getpid()}.partial{self.path.suffix}"
        self.tmp = self.path.with_name(name)

    def _finish(self) -> None:
        if self.tmp.exists():
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._release()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._release()
        self._finish()

    def _release(self) -> None:  # noqa: B027
        pass


class VideoOutput(_AtomicFileOutput):
    """Annotated video; the codec follows the suffix (.mp4: mp4v, .avi: MJPG)."""

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}

    def __init__(self, path: Path, fps: float | None) -> None:
        super().__init__(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise SsdTrtError(
                f"cannot write video {self.path}: use a .mp4, .avi, .mkv or .mov file name"
            )
        self.cv2 = require("cv2", "video")
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        self.writer = None

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        cv2 = self.cv2
        if self.writer is None:
            h, w = annotated.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise SsdTrtError(f"OpenCV cannot write {self.path}; try an .avi file name")
        if annotated.shape[1::-1] != self.size:  # image folders mix sizes
            annotated = cv2.resize(annotated, self.size)
        self.writer.write(annotated)

    def _release(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class JsonLinesOutput(_AtomicFileOutput):
    """One JSON object per frame: index, timestamp, detections (pixel boxes)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.file: IO[str] | None = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise SsdTrtError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        record = {
            "frame": result.frame.index,
            "timestamp": round(result.frame.timestamp, 4),
            "inference_ms": round(result.inference_ms, 2),
            "detections": result.detections.to_dicts(),
        }
        if result.frame.name:
            record["name"] = result.frame.name
        assert self.file is not None
        self.file.write(json.dumps(record) + "\n")

    def _release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ServeOutput(Output):
    """Publishes JPEGs and live stats to the MJPEG page (see serve.py)."""

    def __init__(self, host: str, port: int, quality: int = 80) -> None:
        self.cv2 = require("cv2", "video")
        self.server = MjpegServer(host, port)
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
                    "detections": len(result.detections),
                },
            )

    def close(self) -> None:
        self.server.close()
