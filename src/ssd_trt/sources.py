"""Video sources: webcam, file, network stream, images, behind one small ``Source`` interface."""

from __future__ import annotations

import glob
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device_frames import DeviceFrame
from .errors import SsdTrtError, require

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
# A decoder that fails this many reads in a row is at the end (or hopelessly broken).
MAX_CONSECUTIVE_FAILURES = 100
# A camera read can block for seconds before failing, so give up on a camera sooner.
MAX_CAMERA_FAILURES = 5


def _thread_params(cv2: Any, threads: int | None) -> list[int]:
    """VideoCapture open params that fix FFmpeg's decoder thread count (None: its default, one
    thread per core, which many streams at once multiply into hundreds of threads)."""
    if threads is None or not hasattr(cv2, "CAP_PROP_N_THREADS"):
        return []
    return [cv2.CAP_PROP_N_THREADS, max(1, int(threads))]


class Frame:
    """One decoded frame. ``timestamp`` is seconds: the media time for files, else since start;
    ``name`` is the file name for image sources.

    A frame decoded on the GPU carries ``device`` (a :class:`DeviceFrame`) and no pixels on
    the host: ``image`` (BGR uint8 [H, W, 3]) is then downloaded by ``download`` (a callable
    the source sets) the first time something asks for it, and kept. ``size`` never
    downloads, so runs whose outputs need no pixels (``--json``) never touch them.
    """

    __slots__ = ("index", "timestamp", "name", "device", "_image", "_download")

    def __init__(
        self,
        index: int,
        timestamp: float,
        image: np.ndarray | None = None,
        name: str = "",
        *,
        device: DeviceFrame | None = None,
        download: Callable[[], np.ndarray] | None = None,
    ) -> None:
        if image is None and device is None:
            raise SsdTrtError("a frame needs an image or a device frame")
        self.index, self.timestamp, self.name = index, timestamp, name
        self.device = device
        self._image = image
        self._download = download

    @property
    def image(self) -> np.ndarray:
        """BGR uint8 [H, W, 3] on the host; a GPU frame is downloaded on first use."""
        if self._image is None:
            if self._download is None:
                raise SsdTrtError(
                    "this frame is in GPU memory and its source gives no way to download it"
                )
            self._image = self._download()
        return self._image

    @image.setter
    def image(self, value: np.ndarray) -> None:
        self._image = value

    @property
    def on_host(self) -> bool:
        """Whether the pixels are on the host already (reading ``image`` costs nothing)."""
        return self._image is not None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), without downloading anything."""
        if self._image is not None:
            return self._image.shape[0], self._image.shape[1]
        assert self.device is not None
        return self.device.size

    @property
    def detector_input(self) -> np.ndarray | DeviceFrame:
        """What a detector reads: the device frame where there is one (read in place on the
        GPU), else the host image."""
        return self.device if self.device is not None else self.image

    def __repr__(self) -> str:
        where = "host" if self.device is None else "device"
        h, w = self.size
        return f"Frame({self.index}, {self.timestamp:g}, {h}x{w} on {where}, name={self.name!r})"


class Source:
    """A stream of frames. ``read()`` returns None at the end; iterate or use as a context manager.

    ``live`` sources (webcams, network streams) run in real time, so consumers should drop stale
    frames rather than queue them.
    """

    live: bool = False

    def __init__(self, description: str) -> None:
        self.description = description
        self.fps: float | None = None  # nominal rate, if the container or device says
        self.frames_skipped = 0  # unreadable frames or images, counted and skipped
        self.skipped_names: list[str] = []  # the unreadable image files, by path
        self.reconnects = 0
        self.frame_count: int | None = None  # total frames, where known (files, images)

    def read(self) -> Frame | None:
        raise NotImplementedError

    def wrapped(self) -> Source | None:
        """The source this one reads from (pacing, looping), or None for a real source."""
        return None

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


def _capture_fps(cv2: Any, cap: Any) -> float | None:
    """Nominal fps of a capture; None where the backend reports nothing sane."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    # Streams without timing info report 0, -1 or absurd values like 90000 (the RTP clock).
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else None


class _CaptureSource(Source):
    """Shared release logic for the sources backed by one ``cv2.VideoCapture``."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self._cv2 = require("cv2", "video")
        self._cap: Any = None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FileSource(_CaptureSource):
    """Every frame of a video file, in order; ``timestamp`` is the media time."""

    live = False

    def __init__(self, path: Path, decode_threads: int | None = None) -> None:
        super().__init__(str(path))
        cv2 = self._cv2
        # FFmpeg explicitly: the "any" backend may hand odd names to the image-sequence reader.
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, _thread_params(cv2, decode_threads))
        self._index = 0
        self._pending: np.ndarray | None = None
        ok, image = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            # FFmpeg "opens" some garbage files and then yields nothing: undecodable either way.
            self.close()
            raise SsdTrtError(
                f"cannot decode {path} as video or image; "
                "check that it is a complete video file in a format FFmpeg reads"
            )
        self._pending = image  # the probe frame is frame 0: hand it out on the first read
        self.fps = _capture_fps(cv2, self._cap)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None

    def read(self) -> Frame | None:
        if self._cap is None:
            return None
        image, self._pending = self._pending, None
        failures = 0
        while image is None:
            ok, image = self._cap.read()
            if ok:
                # Failed reads followed by a good frame were damaged frames, not the end.
                self.frames_skipped += failures
                break
            image = None
            failures += 1
            # FFmpeg cannot tell a damaged stretch from the end (POS_FRAMES stalls in both), so
            # keep reading through a bounded run of failures; at EOF each try costs microseconds.
            if failures >= MAX_CONSECUTIVE_FAILURES:
                self._finish()
                return None
        frame = Frame(self._index, self._media_time(), image)
        self._index += 1
        return frame

    def _finish(self) -> None:
        expected = self.frame_count
        if expected and self._index + self.frames_skipped < expected:
            log.warning(
                "%s: ended after %d of %d frames; the rest could not be decoded",
                self.description,
                self._index + self.frames_skipped,
                expected,
            )
        self.close()

    def _media_time(self) -> float:
        msec = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
        # Some containers report no position (0 after frame 0, or NaN); then derive it from fps.
        if math.isfinite(msec) and (msec > 0 or self._index == 0):
            return msec / 1000.0
        return self._index / self.fps if self.fps else float(self._index)


class WebcamSource(_CaptureSource):
    """A local camera by index; ``timestamp`` is seconds since it was opened."""

    live = True

    def __init__(self, index: int) -> None:
        super().__init__(f"camera {index}")
        self._cap = self._cv2.VideoCapture(index)
        if not self._cap.isOpened():
            self.close()
            raise SsdTrtError(
                f"no camera at index {index}; check that a webcam is connected or pass a video file"
            )
        self.fps = _capture_fps(self._cv2, self._cap)
        self._index = 0
        self._t0 = time.monotonic()

    def read(self) -> Frame | None:
        failures = 0
        while self._cap is not None:
            ok, image = self._cap.read()
            if ok:
                frame = Frame(self._index, time.monotonic() - self._t0, image)
                self._index += 1
                return frame
            # Cameras drop the odd frame; only a run of failures means it is gone.
            failures += 1
            self.frames_skipped += 1
            if failures >= MAX_CAMERA_FAILURES:
                log.warning("%s: no frames after %d reads; stopping", self.description, failures)
                self.close()
        return None


class StreamSource(_CaptureSource):
    """A network stream (RTSP, HTTP) that reconnects with exponential backoff when it drops."""

    live = True

    def __init__(
        self,
        url: str,
        *,
        reconnect_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 10.0,
        decode_threads: int | None = None,
    ) -> None:
        super().__init__(url)
        self._url = url
        self._decode_threads = decode_threads
        self._attempts = max(1, reconnect_attempts)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._timeout_ms = int(timeout_s * 1000)
        self._failures = 0  # consecutive failed (re)connections; reset by a good frame
        self._fresh = False  # connected, but no frame read on this connection yet
        self._index = 0
        self._t0 = time.monotonic()
        if not self._connect():
            raise SsdTrtError(
                f"cannot open stream URL: {url}; check the URL and that the server is up"
            )
        self.fps = _capture_fps(self._cv2, self._cap)

    def _open(self) -> Any | None:
        cv2 = self._cv2
        params: list[int] = []
        # Without these FFmpeg can block for a long time (30 s by default) on a dead server.
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._timeout_ms]
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms]
        params += _thread_params(cv2, self._decode_threads)
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _connect(self) -> bool:
        """(Re)open: at once, then with a doubling delay; False once the failure budget is spent."""
        self.close()
        while self._failures < self._attempts:
            if self._failures:
                delay = self._backoff_s * 2 ** (self._failures - 1)
                time.sleep(min(delay, self._max_backoff_s))
            self._cap = self._open()
            if self._cap is not None:
                self._fresh = True
                return True
            self._failures += 1
        return False

    def read(self) -> Frame | None:
        while self._cap is not None:
            ok, image = self._cap.read()
            if ok:
                self._failures, self._fresh = 0, False
                frame = Frame(self._index, time.monotonic() - self._t0, image)
                self._index += 1
                return frame
            # A connection that opens but yields nothing is a failed attempt too, so a server
            # that accepts and then stalls cannot keep us reconnecting forever.
            if self._fresh:
                self._failures += 1
            log.warning("%s: stream dropped; reconnecting", self.description)
            if not self._connect():
                log.warning(
                    "%s: giving up after %d failed reconnection attempts",
                    self.description,
                    self._failures,
                )
                return None
            self.reconnects += 1
        return None


class ImageSource(Source):
    """Still images in sorted path order; ``timestamp`` is the index, ``name`` the file name."""

    live = False

    def __init__(self, paths: list[Path], description: str) -> None:
        super().__init__(description)
        self._cv2 = require("cv2", "video")
        self._paths = paths
        self.frame_count = len(paths)
        self._next = 0
        self._index = 0

    @property
    def paths(self) -> list[Path]:
        """The image files, in the order they are read."""
        return list(self._paths)

    def read(self) -> Frame | None:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            image = self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)
            if image is None:
                log.warning("%s: cannot decode %s as an image; skipping it", self.description, path)
                self.frames_skipped += 1
                self.skipped_names.append(str(path))
                continue
            frame = Frame(self._index, float(self._index), image, name=path.name)
            self._index += 1
            return frame
        if self._index == 0 and self.frames_skipped:
            raise SsdTrtError(
                f"none of the {self.frames_skipped} images in {self.description} could be decoded; "
                "check that they are valid image files"
            )
        return None


def innermost(source: Source) -> Source:
    """The real source under pacing or looping wrappers."""
    inner = source.wrapped()
    return source if inner is None else innermost(inner)


class PacedSource(Source):
    """Plays another source at a fixed rate, as a camera would deliver it.

    Reading a file this way makes it behave like a live source (stale frames get dropped), which
    is what the async pipeline is for; the benchmark uses it so that capture costs what a
    camera's frame interval costs.
    """

    live = True

    def __init__(self, inner: Source, fps: float) -> None:
        super().__init__(f"{inner.description} at {fps:g} fps")
        self.inner, self.interval = inner, 1.0 / fps
        self.fps, self.frame_count = fps, inner.frame_count
        self._due: float | None = None

    def wrapped(self) -> Source:
        return self.inner

    def read(self) -> Frame | None:
        now = time.monotonic()
        if self._due is None:
            self._due = now
        elif now < self._due:
            time.sleep(self._due - now)
        self._due = max(self._due + self.interval, time.monotonic() - self.interval)
        frame = self.inner.read()
        self.frames_skipped = self.inner.frames_skipped
        self.skipped_names = self.inner.skipped_names
        return frame

    def close(self) -> None:
        self.inner.close()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


@dataclass(frozen=True)
class StreamSettings:
    """How network streams reconnect (``open_source``'s keywords; the NVDEC demuxer's too)."""

    reconnect_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    timeout_s: float = 10.0


def open_source(
    spec: str | int,
    *,
    reconnect_attempts: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
    timeout_s: float = 10.0,
    decode_threads: int | None = None,
) -> Source:
    """Open a webcam index, stream URL, video file, image file, image directory or glob pattern.

    ``reconnect_attempts``, ``backoff_s`` and ``max_backoff_s`` govern network streams: after a
    drop they retry with a doubling delay, ending the stream after that many failures in a row.
    ``timeout_s`` bounds each open and read of a stream. ``decode_threads`` sets FFmpeg's
    decoder threads of a file or stream (None: FFmpeg's default, about one per core).
    """
    if isinstance(spec, int) or (spec.isascii() and spec.isdigit()):
        return WebcamSource(int(spec))
    if spec.lower().startswith(STREAM_PREFIXES):
        return StreamSource(
            spec,
            reconnect_attempts=reconnect_attempts,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            timeout_s=timeout_s,
            decode_threads=decode_threads,
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if _is_image(p))
        if not images:
            raise SsdTrtError(f"no images in directory {path}; expected {_suffix_list()} files")
        return ImageSource(images, str(path))
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return FileSource(path, decode_threads)
        # Decode once up front so a broken image fails at open, not at the first read.
        if require("cv2", "video").imread(str(path)) is None:
            raise SsdTrtError(
                f"cannot decode {path} as video or image; check that it is a valid image file"
            )
        return ImageSource([path], str(path))
    if any(c in spec for c in "*?["):
        images = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if _is_image(Path(p)))
        if not images:
            raise SsdTrtError(f"no image files match {spec}; expected {_suffix_list()} files")
        return ImageSource(images, spec)
    raise SsdTrtError(
        f"{spec} does not exist; pass a video file, image, directory, glob, "
        "webcam index or stream URL"
    )


def _suffix_list() -> str:
    return "/".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
