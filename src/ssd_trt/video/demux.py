"""Compressed video packets from files and RTSP streams, for a decoder of our own (NVDEC).

:class:`Demuxer` (PyAV) yields the video stream's packets as Annex-B for H.264/HEVC (the
``h264_mp4toannexb`` / ``hevc_mp4toannexb`` bitstream filter; NVDEC's parser reads start
codes), with the stream's codec, size, rate, time base and declared colour (:class:`StreamInfo`).
A live stream (RTSP) that drops is reopened with the same doubling backoff as
``sources.StreamSource``, and packets are skipped up to the next keyframe, so the decoder never
sees a broken reference. Everything here runs without a GPU (tests/test_nvdec.py decodes these
very packets with FFmpeg on the CPU). Why PyAV and not PyNvVideoCodec's demuxer: video/nvdec.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..colour import Matrix
from ..device_frames import DEFAULT_MATRIX
from ..errors import SsdTrtError, first_line, require
from ..sources import StreamSettings

log = logging.getLogger(__name__)

LIVE_PREFIXES = ("rtsp://", "rtsps://")
ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
# FFmpeg's AVColorSpace / AVColorRange values the stream may declare.
_BT709_SPACES = {1}  # AVCOL_SPC_BT709
_BT601_SPACES = {5, 6}  # AVCOL_SPC_BT470BG, AVCOL_SPC_SMPTE170M
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


@dataclass(frozen=True)
class StreamInfo:
    """The video stream as the container and codec parameters describe it."""

    codec: str  # FFmpeg's name: h264, hevc ...
    width: int
    height: int
    fps: float | None
    time_base: Fraction
    start_pts: int  # the stream's first timestamp (media time counts from it)
    frame_count: int | None
    matrix: Matrix  # declared, else DEFAULT_MATRIX
    full_range: bool
    has_b_frames: bool


@dataclass(frozen=True)
class Packet:
    """One compressed video packet, Annex-B for H.264/HEVC."""

    data: bytes
    pts: int | None  # in ``time_base`` units
    keyframe: bool
    codec: str
    time_base: Fraction
    fresh: bool = False  # the first packet after a (re)connect: decoders start over

    @property
    def seconds(self) -> float | None:
        return None if self.pts is None else float(self.pts * self.time_base)


def colour_of(colorspace: int, color_range: int) -> tuple[Matrix, bool]:
    """The matrix and range a stream declares (FFmpeg's enums), with DEFAULT_MATRIX for
    streams that declare none."""
    if colorspace in _BT709_SPACES:
        matrix: Matrix = "bt709"
    elif colorspace in _BT601_SPACES:
        matrix = "bt601"
    else:
        matrix = DEFAULT_MATRIX
    return matrix, color_range == _FULL_RANGE


class Demuxer:
    """The video packets of a file or RTSP stream, through PyAV; live streams reconnect.

    ``read()`` returns the next :class:`Packet`, or None at the end of a file or when a live
    stream's reconnects ran out. ``reconnects`` counts successful reconnects.
    """

    def __init__(self, spec: str, reconnect: StreamSettings = StreamSettings()) -> None:
        self._av = require("av", "video")
        self.spec = spec
        self.live = spec.lower().startswith(LIVE_PREFIXES)
        self.reconnect = reconnect
        self.reconnects = 0
        self._failures = 0
        self._container: Any = None
        self._packets: Any = None
        self._filter: Any = None
        self._queue: deque[Packet] = deque()
        self._fresh = False  # connected, no packet handed out on this connection yet
        self._wait_key = False
        self.info = self._open_first()

    # --------------------------------------------------------------------- opening

    def _open(self) -> StreamInfo:
        options = {"rtsp_transport": "tcp"} if self.live else {}
        t = self.reconnect.timeout_s
        container = self._av.open(self.spec, options=options, timeout=(t, t))
        try:
            if not container.streams.video:
                raise SsdTrtError(f"{self.spec} has no video stream")
            stream = container.streams.video[0]
            info = self._describe(stream)
            bsf = ANNEXB_FILTERS.get(info.codec)
            self._filter = self._av.bitstream.BitStreamFilterContext(bsf, stream) if bsf else None
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._packets = container.demux(stream)
        self._fresh, self._wait_key = True, True
        return info

    def _describe(self, stream: Any) -> StreamInfo:
        cc = stream.codec_context
        width, height = int(cc.width), int(cc.height)
        if width <= 0 or height <= 0:
            raise SsdTrtError(f"{self.spec}: the video stream has no picture size")
        matrix, full = colour_of(int(cc.colorspace or 2), int(cc.color_range or 0))
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and 0 < float(rate) <= 1000 else None
        frames = int(stream.frames or 0)
        return StreamInfo(
            codec=cc.name,
            width=width,
            height=height,
            fps=fps,
            time_base=Fraction(stream.time_base or Fraction(1, 90000)),
            start_pts=int(stream.start_time or 0),
            frame_count=frames if frames > 0 and not self.live else None,
            matrix=matrix,
            full_range=full,
            has_b_frames=bool(cc.has_b_frames),
        )

    def _open_first(self) -> StreamInfo:
        try:
            return self._open()
        except SsdTrtError:
            raise
        except Exception as exc:
            what = "stream URL" if self.live else "video"
            raise SsdTrtError(
                f"cannot open {what} {self.spec}: {first_line(exc)}; check the "
                + ("URL and that the server is up" if self.live else "file")
            ) from None

    def _reconnect(self) -> bool:
        """Reopen with a doubling delay; False once the failure budget is spent."""
        self._close_container()
        r = self.reconnect
        while self._failures < max(1, r.reconnect_attempts):
            if self._failures:
                time.sleep(min(r.backoff_s * 2 ** (self._failures - 1), r.max_backoff_s))
            try:
                info = self._open()
            except Exception as exc:
                log.debug("%s: reconnect failed: %s", self.spec, first_line(exc))
                self._failures += 1
                continue
            if (info.width, info.height, info.codec) != (
                self.info.width,
                self.info.height,
                self.info.codec,
            ):
                log.warning(
                    "%s: the stream came back as %s %dx%d (was %s %dx%d)",
                    self.spec,
                    info.codec,
                    info.width,
                    info.height,
                    self.info.codec,
                    self.info.width,
                    self.info.height,
                )
            self.info = info
            return True
        return False

    # --------------------------------------------------------------------- reading

    def _next_raw(self) -> Any | None:
        """The next demuxed packet with data; None at the end or on a read error."""
        assert self._packets is not None
        try:
            for packet in self._packets:
                if packet.size:
                    return packet
        except self._av.error.EOFError:
            return None
        except (self._av.error.FFmpegError, OSError) as exc:
            log.warning("%s: read failed: %s", self.spec, first_line(exc))
            return None
        return None

    def _filtered(self, raw: Any | None) -> list[Any]:
        if self._filter is None:
            return [] if raw is None else [raw]
        return list(self._filter.filter(raw))

    def read(self) -> Packet | None:
        while not self._queue:
            if self._container is None:
                return None
            raw = self._next_raw()
            out = self._filtered(raw)  # None flushes the filter at the end
            for p in out:
                key = bool(p.is_keyframe)
                if self._wait_key and not key:
                    continue  # nothing decodes before a keyframe (a stream joined mid-GOP)
                self._queue.append(
                    Packet(
                        bytes(p),
                        None if p.pts is None else int(p.pts),
                        key,
                        self.info.codec,
                        self.info.time_base,
                        fresh=self._fresh,
                    )
                )
                self._fresh = self._wait_key = False
            if raw is not None:
                continue
            if not self.live:
                self._close_container()
                continue
            # A connection that opened but gave nothing is a failed attempt too, so a server
            # that accepts and then stalls cannot keep us reconnecting forever.
            if self._fresh:
                self._failures += 1
            log.warning("%s: stream dropped; reconnecting", self.spec)
            if not self._reconnect():
                log.warning(
                    "%s: giving up after %d failed reconnection attempts",
                    self.spec,
                    self._failures,
                )
                return None
            self.reconnects += 1
        packet = self._queue.popleft()
        if self.live and not packet.fresh:
            self._failures = 0  # packets flow again
        return packet

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = self._packets = self._filter = None

    def close(self) -> None:
        self._close_container()
        self._queue.clear()
