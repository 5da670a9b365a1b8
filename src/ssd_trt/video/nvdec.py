"""Video decoded on the GPU's hardware decoder (NVDEC, through PyNvVideoCodec): frames stay in
device memory and reach the fast path as NV12 ``DeviceFrame`` s.

Three parts, each replaceable:

* :class:`Demuxer` (PyAV): compressed packets of the video stream, as Annex-B for H.264/HEVC
  (the ``h264_mp4toannexb`` / ``hevc_mp4toannexb`` bitstream filter; NVDEC's parser reads
  start codes), with the stream's codec, size, rate, time base and declared colour. A live
  stream (RTSP) that drops is reopened with the same doubling backoff as ``StreamSource``, and
  packets are skipped up to the next keyframe, so the decoder never sees a broken reference.
* a packet decoder: :class:`NvdecDecoder` (PyNvVideoCodec, frames in GPU memory) or
  :class:`CpuDecoder` (PyAV/FFmpeg on the CPU: the fallback for a stream NVDEC cannot decode,
  and the decoder that lets everything around NVDEC run on a machine without a GPU);
* :class:`NvdecSource`, a ``Source``: numbers the frames, times them (media time for files,
  seconds since open for live streams, as the other sources do), ends files, reconnects streams.

Why PyAV demuxes, not PyNvVideoCodec's own demuxer: PyAV opens the files and RTSP URLs as the
CPU path does (same options, timeouts), and reconnecting needs each failed read, which PyAV
reports per packet. Dropping stale live frames is the engine's, for these frames as for any.
And the demux half is tested without a GPU: the CPU decoder decodes the packets NVDEC gets.

:class:`NvdecDecoder` and :func:`download_nv12` need an NVIDIA GPU with PyNvVideoCodec; they ran
on an H200 and an H100 with PyNvVideoCodec 2.2.4 (Dec 2026, tests/test_gpu_nvdec.py). The rest
also runs on the CPU.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..colour import nv12_to_bgr
from ..device_frames import DeviceFrame
from ..errors import SsdTrtError, first_line, require
from ..runtime import cuda
from ..sources import Frame, Source, StreamSettings
from .demux import Demuxer, Packet, StreamInfo

log = logging.getLogger(__name__)

# FFmpeg codec name -> PyNvVideoCodec's cudaVideoCodec member; NVDEC is asked at open whether
# this GPU decodes it (GetDecoderCaps).
NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8",
                "mpeg2video": "MPEG2", "mpeg4": "MPEG4", "mpeg1video": "MPEG1",
                "vc1": "VC1"}  # fmt: skip


# ------------------------------------------------------------------------- decoders


class Decoded(Protocol):
    """One decoded picture: its pts, and a Frame built from it."""

    pts: int | None

    def frame(self, index: int, timestamp: float) -> Frame: ...


class PacketDecoder(Protocol):
    """Decodes :class:`Packet` s in decode order into pictures in display order."""

    name: str

    def decode(self, packet: Packet | None) -> list[Decoded]:
        """Pictures ready after ``packet``; None drains the decoder at the end."""
        ...

    def reset(self) -> None:
        """Start over (after a reconnect): drop references to earlier pictures."""
        ...

    def close(self) -> None: ...


@dataclass
class _HostPicture:
    pts: int | None
    image: np.ndarray

    def frame(self, index: int, timestamp: float) -> Frame:
        return Frame(index, timestamp, self.image)


class CpuDecoder:
    """PyAV (FFmpeg) on the CPU, fed the same packets: frames in host memory (BGR, converted by
    FFmpeg as OpenCV's capture converts them)."""

    name = "cpu"

    def __init__(self, info: StreamInfo, threads: int | None = None) -> None:
        self._av = require("av", "video")
        self.info = info
        self._threads = threads
        self._ctx = self._context()

    def _context(self) -> Any:
        ctx = self._av.CodecContext.create(self.info.codec, "r")
        if self._threads:
            ctx.thread_count = self._threads
        return ctx

    def decode(self, packet: Packet | None) -> list[Decoded]:
        if packet is None:
            raw = None
        else:
            raw = self._av.Packet(packet.data)
            raw.pts = packet.pts
        try:
            frames = self._ctx.decode(raw)
        except self._av.error.FFmpegError as exc:  # a damaged packet: skip what it held
            log.debug("decode error: %s", first_line(exc))
            return []
        return [_HostPicture(f.pts, f.to_ndarray(format="bgr24")) for f in frames]

    def reset(self) -> None:
        self._ctx = self._context()

    def close(self) -> None:
        self._ctx = None


def download_nv12(frame: DeviceFrame) -> np.ndarray:
    """An NV12 DeviceFrame's pixels as host BGR (colour.nv12_to_bgr with the frame's colour):
    its two pitched planes copied to the host, after the stream that wrote them (from any
    thread: eight decoding threads at once on an H100)."""
    h, w = frame.size
    host = cuda.download_rows(frame.planes, (h, h // 2), w, frame.device_id or 0, frame.stream)
    assert frame.matrix is not None
    return nv12_to_bgr(host, frame.matrix, frame.full_range)


class NvdecUnsupported(SsdTrtError):
    """NVDEC on this GPU cannot decode the stream (codec, size or bit depth)."""


def nvdec_caps(codec: str, gpu_id: int = 0) -> dict[str, int]:
    """PyNvVideoCodec's ``GetDecoderCaps`` for an FFmpeg codec name ({} where NVDEC has no such
    codec). Each call makes and destroys a CUDA context (and 2.2.4 asks GPU 0 whatever
    ``gpuid`` says), so callers keep the answer per codec."""
    nvc = require("PyNvVideoCodec", "gpu")
    member = NVDEC_CODECS.get(codec)
    if member is None:
        return {}
    return dict(nvc.GetDecoderCaps(gpuid=gpu_id, codec=getattr(nvc.cudaVideoCodec, member)))


class _Session:
    """One PyNvVideoCodec decoder and the CUDA stream its output copies run on (None: the
    legacy default stream, which the decoder synchronises after every picture).

    Only the decoding thread calls the decoder: pictures released elsewhere (the batcher, an
    emitter) queue their buffer in ``released``, and the decoding thread unlocks them before
    its next packet. PyNvVideoCodec's ``UnlockFrame`` changes vectors that a decode running
    without the GIL also changes, without a common lock. The decoder's surfaces keep their
    session, so the decoder outlives every picture it handed out; the last one to go unlocks
    the rest, then the decoder goes, then the stream (the decoder's teardown may still use it).
    """

    def __init__(self, decoder: Any, stream: int | None, gpu_id: int) -> None:
        self.decoder, self.stream, self.gpu_id = decoder, stream, gpu_id
        self.released: deque[int] = deque()  # deque.append is atomic: any thread may add

    def unlock_released(self) -> None:
        """Give the buffers of released pictures back to the decoder (decoding thread only)."""
        while self.released:
            self.decoder.UnlockFrame(self.released.popleft())

    def __del__(self) -> None:
        try:
            self.unlock_released()  # no decode can run: whoever decoded dropped us
        except Exception as exc:  # interpreter exit: the decoder may be half gone
            log.debug("unlocking NVDEC buffers at teardown: %s", first_line(exc))
        self.decoder = None  # its C++ destructor runs here
        if self.stream is not None:
            try:
                cuda.destroy_stream(self.stream, self.gpu_id)
            except Exception as exc:  # interpreter exit: the driver may be gone already
                log.debug("destroying an NVDEC stream: %s", first_line(exc))
            self.stream = None


class _Surface:
    """A decoded picture in one of the decoder's output buffers, locked (GetLockedFrame) so
    the decoder writes no later picture into it; handed back (``_Session.released``) when the
    last reference (the DeviceFrame's ``owner``) goes. The fast path keeps frames until the GPU
    work reading them completed, so a buffer is never reused while a batch that reads it is in
    flight."""

    def __init__(self, session: _Session, ptr: int) -> None:
        self._session: _Session | None = session
        self.ptr = ptr

    def release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.released.append(self.ptr)

    def __del__(self) -> None:
        self.release()


@dataclass
class _DevicePicture:
    pts: int | None
    device: DeviceFrame

    def frame(self, index: int, timestamp: float) -> Frame:
        device = self.device
        return Frame(index, timestamp, device=device, download=lambda: download_nv12(device))


class NvdecDecoder:
    """PyNvVideoCodec's decoder: NV12 pictures in GPU memory (ran on an H200, Dec 2026).

    Written against PyNvVideoCodec 2.2.4: ``CreateDecoder(gpuid, codec, cudastream,
    usedevicememory=True, latency=...)``; packets go in as ``PacketData`` (``bsl_data``
    pointer, ``bsl`` size, ``pts``); ``GetNumDecodedFrame(packet)`` decodes (without the GIL)
    and says how many pictures are ready; ``GetLockedFrame()`` hands each out, in display
    order, as a device pointer to a packed NV12 buffer (pitch = width, chroma after H rows),
    which the decoder does not reuse until ``UnlockFrame(ptr)``; an empty packet (size 0)
    drains it. Its pool of output buffers grows when all are locked, so frames held by batches
    in flight cost memory, never correctness. The locked path reports no pts, so each picture
    takes the smallest pts of the packets sent and not yet matched (pictures leave in display
    order, i.e. ascending pts). Latency: LOW (a picture per packet at once) for streams without
    B-frames, NATIVE otherwise (B-frames need reordering).

    ``own_stream`` (default): pictures are copied out of NVDEC on a non-blocking stream of the
    decoder's own, not waited for; each DeviceFrame names it and its readers (``ProducerWaits``,
    ``download_nv12``) order themselves after it. Else PyNvVideoCodec copies on the legacy
    default stream, shared by all decoders, and waits for it after every picture
    (``SSD_TRT_NVDEC_STREAM=legacy``). Both give FFmpeg's planes, also with eight decoders at
    once (H100, Dec 5). ``caps``: ``nvdec_caps``'s answer where the caller has it.
    """

    name = "nvdec"

    def __init__(
        self,
        info: StreamInfo,
        gpu_id: int = 0,
        *,
        own_stream: bool = True,
        caps: dict[str, int] | None = None,
    ) -> None:
        nvc = require("PyNvVideoCodec", "gpu")
        self._nvc, self.info, self.gpu_id = nvc, info, gpu_id
        member = NVDEC_CODECS.get(info.codec)
        if member is None:
            raise NvdecUnsupported(f"NVDEC does not decode {info.codec}")
        self._codec = getattr(nvc.cudaVideoCodec, member)
        self.caps = caps = nvdec_caps(info.codec, gpu_id) if caps is None else caps
        if not caps.get("supported"):
            raise NvdecUnsupported(f"this GPU's NVDEC does not decode {info.codec}")
        too_big = info.width > caps.get("width_max", 1 << 30) or info.height > caps.get(
            "height_max", 1 << 30
        )
        if too_big:
            raise NvdecUnsupported(
                f"NVDEC decodes {info.codec} up to {caps['width_max']}x{caps['height_max']}, "
                f"the stream is {info.width}x{info.height}"
            )
        self._low = not info.has_b_frames
        self._own_stream = own_stream
        self._pending: list[int] = []  # pts of packets sent, not yet matched to a picture
        # Any wait left (the legacy mode's per-picture sync, NVDEC's own) sleeps, never spins
        # a core per stream (the first decoder of the process makes the context).
        cuda.block_on_waits(gpu_id)
        self._session = self._create()

    def _create(self) -> _Session:
        latency = self._nvc.DisplayDecodeLatencyType
        stream = cuda.new_stream(self.gpu_id) if self._own_stream else None
        try:
            decoder = self._nvc.CreateDecoder(
                gpuid=self.gpu_id,
                codec=self._codec,
                cudastream=stream or 0,
                usedevicememory=True,
                latency=latency.LOW if self._low else latency.NATIVE,
            )
        except BaseException:
            if stream is not None:
                with suppress(Exception):  # the decoder's error is the one to report
                    cuda.destroy_stream(stream, self.gpu_id)
            raise
        return _Session(decoder, stream, self.gpu_id)

    def _send(self, data: np.ndarray | None, pts: int) -> int:
        self._session.unlock_released()  # this thread's turn with the decoder
        packet = self._nvc.PacketData()
        packet.bsl_data = 0 if data is None else data.ctypes.data
        packet.bsl = 0 if data is None else data.size
        packet.pts = pts
        if self._low and data is not None:
            packet.decode_flag = self._nvc.VideoPacketFlag.ENDOFPICTURE
        return int(self._session.decoder.GetNumDecodedFrame(packet))

    def decode(self, packet: Packet | None) -> list[Decoded]:
        if packet is None:
            ready = self._send(None, 0)
        else:
            data = np.frombuffer(packet.data, np.uint8)  # alive through the call
            if packet.pts is not None:
                heapq.heappush(self._pending, packet.pts)
            ready = self._send(data, packet.pts or 0)
        pictures: list[Decoded] = []
        h, w = self.info.height, self.info.width
        session = self._session
        for _ in range(ready):
            ptr = int(session.decoder.GetLockedFrame())
            device = DeviceFrame(
                "nv12",
                h,
                w,
                ((ptr, w), (ptr + h * w, w)),
                device_id=self.gpu_id,
                stream=session.stream,
                matrix=self.info.matrix,
                full_range=self.info.full_range,
                owner=_Surface(session, ptr),
            )
            pts = heapq.heappop(self._pending) if self._pending else None
            pictures.append(_DevicePicture(pts, device))
        return pictures

    def reset(self) -> None:
        # A fresh decoder (and stream): locked surfaces of the old one stay valid until
        # released (each holds its session).
        self._pending.clear()
        self._session = self._create()

    def close(self) -> None:
        # The session goes with its last surface.
        self._session = None  # type: ignore[assignment]


# ------------------------------------------------------------------------- the source


DecoderFactory = Callable[[StreamInfo], PacketDecoder]


def nvdec_or_cpu(gpu_id: int = 0, *, own_stream: bool = True) -> DecoderFactory:
    """NVDEC where it can decode the stream, else the CPU with a one-line warning. The decoder
    capabilities are asked once per codec (each ask makes a CUDA context), also where the
    answer is no. ``own_stream``: see :class:`NvdecDecoder`."""
    known: dict[str, dict[str, int]] = {}

    def make(info: StreamInfo) -> PacketDecoder:
        if info.codec not in known:
            known[info.codec] = nvdec_caps(info.codec, gpu_id)
        try:
            return NvdecDecoder(info, gpu_id, own_stream=own_stream, caps=known[info.codec])
        except NvdecUnsupported as exc:
            log.warning("%s; decoding this stream on the CPU", exc)
            return CpuDecoder(info)

    return make


class NvdecSource(Source):
    """A video file or RTSP stream decoded by a packet decoder (NVDEC by default): each Frame
    carries ``device`` (and downloads its pixels only when asked) when NVDEC decodes it.

    ``decoder``: builds the decoder for the stream (default :func:`nvdec_or_cpu`); given
    :class:`CpuDecoder` it is the same source decoding on the CPU. ``timestamp``: media time
    (pts from the stream's start) for files, seconds since open for live streams.
    """

    def __init__(
        self,
        spec: str,
        *,
        reconnect: StreamSettings = StreamSettings(),
        decoder: DecoderFactory | None = None,
    ) -> None:
        super().__init__(spec)
        self._demuxer = Demuxer(spec, reconnect)
        self.live = self._demuxer.live
        info = self._demuxer.info
        self.fps, self.frame_count = info.fps, info.frame_count
        self._make = decoder or nvdec_or_cpu()
        try:
            self._decoder: PacketDecoder | None = self._make(info)
        except BaseException:
            self._demuxer.close()
            raise
        self.decoder_name = self._decoder.name
        self._ready: deque[Decoded] = deque()
        self._index = 0
        self._t0 = time.monotonic()
        self._drained = False
        # The first picture now, not in the run: NVDEC makes its decoder on the stream's first
        # sequence header (context-wide work), which for many cameras opened together would
        # otherwise all happen at the run's start, beside the detector's graph captures.
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    @property
    def info(self) -> StreamInfo:
        return self._demuxer.info

    def _fill(self) -> None:
        """Decode until a picture is ready or the stream ended."""
        while not self._ready:
            if self._decoder is None or self._drained:
                return
            packet = self._demuxer.read()
            self.reconnects = self._demuxer.reconnects  # the demuxer counts them
            if packet is not None and packet.fresh and self._index:
                self._decoder.reset()  # a reconnect: earlier pictures are no references
            pictures = self._decoder.decode(packet)
            if packet is None:
                self._drained = True
            self._ready.extend(pictures)

    def read(self) -> Frame | None:
        self._fill()
        if not self._ready:
            return None
        picture = self._ready.popleft()
        frame = picture.frame(self._index, self._timestamp(picture.pts))
        self._index += 1
        return frame

    def _timestamp(self, pts: int | None) -> float:
        if self.live:
            return time.monotonic() - self._t0
        info = self.info
        if pts is not None:
            return float((pts - info.start_pts) * info.time_base)
        return self._index / self.fps if self.fps else float(self._index)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self._ready.clear()
        self._demuxer.close()
