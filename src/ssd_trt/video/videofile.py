"""The annotated video file: H.264 in fragmented MP4 through PyAV, or OpenCV's writers, cut
back to whole fragments when the disk fills; frames of another size are letterboxed."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .. import fsutil
from ..errors import SsdTrtError, require
from .output_base import FrameResult, _AtomicFileOutput, _reason, write_failed

log = logging.getLogger(__name__)


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
        tmp = self.tmp
        if tmp is None:  # refused when the output was checked; this keeps it so
            raise SsdTrtError("a video cannot be written to standard output; pass a file name")
        if self.container in self.MJPG_SUFFIXES:
            self.writer = _OpenCvWriter(self.cv2, tmp, "MJPG", self.fps, size)
            self.codec = "MJPG (OpenCV)"
        elif _has_pyav_h264():
            try:
                self.writer = _PyAvH264(tmp, self.fps, size)
            except OSError as exc:
                raise fsutil.cannot_write(self.path, exc) from None
            self.codec = "H.264 (libx264 via PyAV)"
        else:
            log.warning(
                "PyAV with H.264 is not installed, so %s is MPEG-4 Part 2, which browsers do "
                "not play; pip install 'ssd-trt[video]' (PyAV) for H.264",
                self.path,
            )
            self.writer = _OpenCvWriter(self.cv2, tmp, "mp4v", self.fps, size)
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
