"""Output stage: where annotated frames and detections go (window, video, JSON lines, browser)."""

from __future__ import annotations

import errno
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import fsutil
from ..detections import Detections
from ..errors import SsdTrtError, require
from ..fsutil import PartialFile, atomic_write
from ..sources import IMAGE_SUFFIXES, Frame, ImageSource, Source
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


def _reason(exc: OSError) -> str:
    reason = fsutil.reason(exc)
    return "the file system became read-only" if exc.errno == errno.EROFS else reason


def write_failed(path: Path, frames: int, exc: OSError) -> OutputWriteError:
    return OutputWriteError(
        f"writing {path} stopped after {frames} frames: {_reason(exc)}; the outputs were "
        "closed with what was written before (a video up to its last whole 2 s fragment); "
        "free some space or write to another disk"
    )


class _AtomicFileOutput(Output):
    """Writes through ``fsutil.PartialFile``: a hidden temp file beside the target, renamed on
    close; a character device, FIFO or ``-`` (stdout) is written through instead.

    The temp file is created up front, so an unwritable place fails before any model work,
    with the real reason (permission, read-only, missing folder).
    """

    opens_file = True  # False: the writer opens ``tmp`` by name itself

    def __init__(self, path: Path) -> None:
        self.target = PartialFile(path)
        self.path = self.target.name
        self.tmp = self.target.path  # what a writer opens by name (None for stdout)
        self.frames = 0  # written so far
        self._file: BinaryIO | None = self.target.open() if self.opens_file else None

    def _finish(self) -> None:
        self.target.commit()

    def abort(self) -> None:
        self._release()
        self.target.discard()

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

    opens_file = False  # PyAV and OpenCV open the temp file by name

    def __init__(self, path: Path, fps: float | None) -> None:
        where = fsutil.destination(path)
        if where.kind == "stdout":
            raise SsdTrtError(
                "a video cannot go to standard output (-); write it to a file or a FIFO, or "
                "watch it live with --serve"
            )
        self.container = where.path.suffix.lower()  # a link's target's: the temp file's
        if self.container not in self.SUFFIXES:
            if not where.streams:
                raise SsdTrtError(
                    f"cannot write video {path}: use a .mp4, .avi, .mkv or .mov file name"
                )
            self.container = ".mp4"  # a device or FIFO: fragmented MP4 streams
        self.cv2 = require("cv2", "video")
        super().__init__(path)
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        self.writer: _PyAvH264 | _OpenCvWriter | None = None
        self.size: tuple[int, int] = (0, 0)
        self.codec = ""
        self._torn = False  # a write failed: the file may end in a partial fragment
        self._letterboxed = False  # said once that frames of other sizes are letterboxed

    def _open_writer(self, size: tuple[int, int]) -> None:
        if self.container in self.MJPG_SUFFIXES:
            self.writer = _OpenCvWriter(self.cv2, self.tmp, "MJPG", self.fps, size)
            self.codec = "MJPG (OpenCV)"
        elif _has_pyav_h264():
            try:
                self.writer = _PyAvH264(self.tmp, self.fps, size)
            except OSError as exc:
                raise fsutil.cannot_write(self.path, exc) from None
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
            self.target.discard()
            return
        super()._finish()

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Pad an odd-sized frame by one pixel; letterbox frames of another size (image
        folders): scaled to fit whole, never stretched, centred on black."""
        h, w = image.shape[:2]
        if (w + w % 2, h + h % 2) == self.size:
            return self.cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, self.cv2.BORDER_REPLICATE)
        if not self._letterboxed:
            self._letterboxed = True
            log.warning(
                "%s: images of another size than the first (%dx%d) are scaled to fit it and "
                "padded with black bars; --save-dir DIR keeps each image at its own size",
                self.path,
                *self.size,
            )
        return letterbox(self.cv2, image, self.size)

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
        torn_file = self._torn and not self.target.streams and isinstance(writer, _PyAvH264)
        if torn_file and self.tmp is not None and self.tmp.exists():
            kept = cut_to_whole_fragments(self.tmp)
            log.info("%s keeps its whole fragments (%d bytes)", self.path, kept)


def letterbox(cv2: Any, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to fit ``size`` (w, h) with its aspect ratio kept, centred on black."""
    h, w = image.shape[:2]
    width, height = size
    scale = min(width / w, height / h)
    fw, fh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = np.zeros((height, width, 3), np.uint8)
    x, y = (width - fw) // 2, (height - fh) // 2
    out[y : y + fh, x : x + fw] = cv2.resize(image, (fw, fh), interpolation=interp)
    return out


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
    seen = 0
    while source is not None and seen < 4:
        if isinstance(source, ImageSource):
            return source.paths
        source = getattr(source, "inner", None) or getattr(source, "_inner", None)
        seen += 1
    return None


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


class JsonLinesOutput(_AtomicFileOutput):
    """One JSON object per frame: index, timestamp, inference_ms (this frame's share of its
    detector call: the call's time divided by ``batch``), batch (the frames detected in that
    call), detections (pixel boxes), and name for an image.

    Each line goes to the file whole before the next frame: a write that fails (disk full) is
    cut back to the last complete line, so the file ends at the last good frame. ``-`` writes
    the lines to standard output.
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
