"""Output stage: where annotated frames and detections go (window, video, images, JSON lines,
browser). The shared parts are in output_base.py, the video file in videofile.py."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import fsutil
from ..detections import Detections
from ..errors import SsdTrtError, require
from ..fsutil import atomic_write
from ..sources import IMAGE_SUFFIXES, Frame, ImageSource, Source, innermost
from .display import has_display as has_display  # re-exported: its old home
from .output_base import (
    FrameResult,
    Output,
    OutputWriteError,
    StopPipeline,
    _AtomicFileOutput,
    _reason,
    finalize,
    write_failed,
)
from .serve import MjpegServer
from .videofile import VideoOutput, cut_to_whole_fragments, letterbox

__all__ = [
    "FrameResult",
    "ImageOutput",
    "JsonLinesOutput",
    "Output",
    "OutputWriteError",
    "ServeOutput",
    "StopPipeline",
    "VideoOutput",
    "WindowOutput",
    "annotated_outputs",
    "cut_to_whole_fragments",
    "finalize",
    "frame_record",
    "letterbox",
    "write_failed",
]

log = logging.getLogger(__name__)


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


def _unique_names(paths: Sequence[Path]) -> dict[str, list[str]]:
    """Output file names per input file name, in input order: ``a.jpg``, then ``a-2.jpg`` ...
    for inputs of the same name from different folders (a recursive glob)."""
    taken: set[str] = set()
    names: dict[str, list[str]] = {}
    for path in paths:
        name, n = path.name, 1
        while name.lower() in taken:
            n += 1
            name = f"{path.stem}-{n}{path.suffix}"
        taken.add(name.lower())
        names.setdefault(path.name, []).append(name)
    return names


class ImageOutput(Output):
    """Annotated still images, each at its own size, each written whole (temp file + rename).

    With ``folder`` set, one file per input image in ``path``, named like the input (a name
    seen twice gets ``-2``); else ``path`` is the one file for a single image, in the format
    its suffix names. The folder is created where missing; nothing is ever written over an
    input image or over anything that is not a regular file.
    """

    JPEG_QUALITY = 95

    def __init__(
        self, path: Path, inputs: Sequence[Path], folder: bool, flag: str = "--output"
    ) -> None:
        self.cv2 = require("cv2", "video")
        self.path, self.folder, self.frames = Path(path), folder, 0
        self._names = _unique_names(inputs)
        self._seen: dict[str, int] = {}  # how often each input name came (loops repeat them)
        if folder:
            if self.path.exists() and not self.path.is_dir():
                raise SsdTrtError(f"{flag} {self.path} is a file; pass a folder for the images")
            fsutil.writable_folder(self.path, flag)
            targets = [self.path / n for names in self._names.values() for n in names]
        else:
            if self.path.suffix.lower() not in IMAGE_SUFFIXES or not self.cv2.haveImageWriter(
                str(self.path)
            ):
                raise SsdTrtError(
                    f"cannot write image {self.path}: use a .jpg, .png, .bmp, .webp or .tif name"
                )
            if self.path.is_dir():
                raise SsdTrtError(f"output {self.path} is a directory; pass a file name")
            if not self.path.parent.exists():
                raise SsdTrtError(f"folder {self.path.parent} does not exist; create it first")
            targets = [self.path]
        originals = {p.resolve() for p in inputs}
        for target in targets:
            if target.resolve() in originals:
                raise SsdTrtError(
                    f"{flag} {self.path} would write over the input image {target}; "
                    "pass another folder or file name"
                )
            fsutil.check_writable(target)  # before any model work; links followed, folders refused

    def target(self, frame: Frame) -> Path:
        """Where ``frame``'s annotated image goes."""
        if not self.folder:
            return self.path
        name = frame.name or f"frame{frame.index:06d}.jpg"
        choices = self._names.get(name, [name])
        seen = self._seen.get(name, 0)
        self._seen[name] = seen + 1
        return self.path / choices[seen % len(choices)]

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        dest = self.target(result.frame)
        suffix = dest.suffix.lower() or ".jpg"
        params = [self.cv2.IMWRITE_JPEG_QUALITY, self.JPEG_QUALITY] if "jp" in suffix else []
        ok, data = self.cv2.imencode(suffix, annotated, params)
        if not ok:
            raise SsdTrtError(f"OpenCV cannot encode {dest.name}; use a .jpg or .png name")
        try:
            with atomic_write(dest) as f:
                f.write(data.tobytes())
        except OSError as exc:
            raise OutputWriteError(
                f"writing {dest} failed after {self.frames} images: {_reason(exc)}; the images "
                "written before are whole; free some space or write to another disk"
            ) from None
        self.frames += 1


def _image_paths(source: Source) -> list[Path] | None:
    """The files of an image source (also looped or paced); None for videos, streams, cameras."""
    inner = innermost(source)
    return inner.paths if isinstance(inner, ImageSource) else None


def annotated_outputs(
    source: Source, output: Path | str | None, save_dir: Path | str | None = None
) -> list[Output]:
    """The outputs that write annotated pictures for ``detect``, checked against the source.

    ``output``: a video name (.mp4, .avi ...), an image name for a single image, or a folder
    (an existing one, or a name ending in a slash) for images; ``save_dir``: a folder for
    images. Folders get one annotated image per input image, at its own size, named like it.
    Refused in one line, before anything is written, where they do not fit the source.
    """
    images = _image_paths(source)
    what = source.description
    folders = [(Path(save_dir), "--save-dir")] if save_dir is not None else []
    video = image = None
    if output is not None:
        text, output = str(output), Path(output)
        if text.endswith(("/", os.sep)) or output.is_dir():
            folders.append((output, "--output"))
        elif output.suffix.lower() in IMAGE_SUFFIXES:
            image = output
        else:
            video = output
    for folder, flag in folders:
        if images is None:
            raise SsdTrtError(
                f"{flag} {folder} writes annotated images, but {what} is a video, stream or "
                "camera; pass --output NAME.mp4 for an annotated video"
            )
    if image is not None and images is None:
        raise SsdTrtError(
            f"--output {image} is an image name, but {what} is a video, stream or camera; "
            "pass a .mp4, .avi, .mkv or .mov name for the annotated video"
        )
    if image is not None and images is not None and len(images) > 1:
        raise SsdTrtError(
            f"--output {image} names one image, but {what} holds {len(images)} images; "
            "pass a folder (--output DIR/ or --save-dir DIR) for one annotated image each, "
            "or a .mp4 name for one video"
        )
    outputs: list[Output] = []
    try:
        if video is not None:
            outputs.append(VideoOutput(video, source.fps))
        if image is not None:
            outputs.append(ImageOutput(image, images or [], folder=False))
        for folder, flag in folders:
            outputs.append(ImageOutput(folder, images or [], folder=True, flag=flag))
    except BaseException:
        finalize(outputs, failed=True)
        raise
    return outputs


def frame_record(
    frame: Frame, detections: Detections, inference_ms: float, batch: int
) -> dict[str, Any]:
    """One frame's JSON-lines record, the same on one host and on Ray: index, timestamp,
    inference_ms (this frame's share of its detector call: the call's time divided by
    ``batch``), batch (the frames detected in that call), detections (pixel boxes), and name
    for an image."""
    record: dict[str, Any] = {
        "frame": frame.index,
        "timestamp": round(frame.timestamp, 4),
        "inference_ms": round(inference_ms, 2),
        "batch": batch,
        "detections": detections.to_dicts(),
    }
    if frame.name:
        record["name"] = frame.name
    return record


class JsonLinesOutput(_AtomicFileOutput):
    """One JSON object per frame (:func:`frame_record`).

    Each line goes to the file whole before the next frame: a write that fails (disk full) is
    cut back to the last complete line, so the file ends at the last good frame. ``-`` writes
    the lines to standard output.
    """

    shows_image = False

    def write(self, result: FrameResult, annotated: np.ndarray) -> None:
        record = frame_record(result.frame, result.detections, result.inference_ms, result.batch)
        self.write_line(json.dumps(record))

    def write_line(self, line: str) -> None:
        """One record already in JSON (a Ray worker's), written as :meth:`write` writes."""
        assert self._file is not None
        data = memoryview((line + "\n").encode())
        good = None if self.target.streams else self._file.tell()  # a pipe cannot seek
        try:
            while data:
                data = data[self._file.write(data) :]
        except OSError as exc:
            if good is not None:
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
