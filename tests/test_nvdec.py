"""The NVDEC source's CPU-side half (video/nvdec.py), run for real on this machine: PyAV demuxes
real files to Annex-B packets; PyAV's CPU decoder (``CpuDecoder``, also the fallback for streams
NVDEC cannot decode) decodes those exact packets, and the frames must equal OpenCV's decode of
the same file. The RTSP server is the one tests/test_sources.py kills and restarts.

NOT RUN here: ``NvdecDecoder`` (PyNvVideoCodec needs NVIDIA's driver libraries).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from rtsp_h264 import H264RtspServer
from test_sources import (  # noqa: F401 - the fixture
    RtspServer,
    _free_port,
    _read_n,
    h264_file_launch,
    rtsp_server,
    serving,
)

from ssd_trt import Detector
from ssd_trt.errors import SsdTrtError
from ssd_trt.sources import StreamSettings
from ssd_trt.video.app import open_decoded
from ssd_trt.video.demux import Demuxer, colour_of
from ssd_trt.video.engine import Engine
from ssd_trt.video.nvdec import CpuDecoder, NvdecSource
from ssd_trt.video.outputs import Output

START_CODES = (b"\x00\x00\x00\x01", b"\x00\x00\x01")


def _opencv_frames(path: Path, count: int | None = None) -> list[np.ndarray]:
    """OpenCV's decode of the file (its first ``count`` frames, or all)."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    while count is None or len(frames) < count:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def _high_profile_with_b_frames(src: Path, dest: Path, codec: str = "libx264") -> Path:
    """A camera-like file made from real frames: H.264 High profile (or HEVC Main) with
    B-frames, in MP4 (length-prefixed NAL units, which the bitstream filter turns to Annex-B)."""
    import av

    frames = _opencv_frames(src)[:60]
    h, w = frames[0].shape[:2]
    with av.open(str(dest), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"profile": "high", "bf": "3", "g": "25", "crf": "23"}
        else:
            stream.options = {"x265-params": "bframes=3:keyint=25:log-level=error"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return dest


def _check_packets_and_decode(path: Path, codec: str) -> None:
    demuxer = Demuxer(str(path))
    packets = []
    while (packet := demuxer.read()) is not None:
        packets.append(packet)
    demuxer.close()
    info = demuxer.info
    assert info.codec == codec and info.has_b_frames
    assert packets[0].keyframe and packets[0].fresh and not any(p.fresh for p in packets[1:])
    assert all(p.data.startswith(START_CODES) for p in packets)  # Annex-B, not MP4's lengths
    pts = [p.pts for p in packets]
    assert pts != sorted(pts) and len(set(pts)) == len(pts)  # B-frames: decode order differs
    # Those exact packets, decoded: the frames OpenCV decodes from the file, in display order.
    decoder = CpuDecoder(info)
    pictures = [pic for p in packets for pic in decoder.decode(p)] + decoder.decode(None)
    expected = _opencv_frames(path)
    assert len(pictures) == len(expected) == len(packets)
    assert [pic.pts for pic in pictures] == sorted(pts)
    for pic, image in zip(pictures, expected, strict=True):
        assert np.array_equal(pic.image, image)


def test_bikes_packets_decode_to_opencvs_frames(bikes_video: Path) -> None:
    _check_packets_and_decode(bikes_video, "h264")  # bikes.mp4 is High profile with B-frames


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_camera_like_files_made_from_real_frames(
    bikes_video: Path, tmp_path: Path, codec: str
) -> None:
    path = _high_profile_with_b_frames(bikes_video, tmp_path / f"{codec}.mp4", codec)
    _check_packets_and_decode(path, "h264" if codec == "libx264" else "hevc")


def test_source_numbers_and_times_frames_as_the_file_source_does(bikes_video: Path) -> None:
    from ssd_trt.sources import open_source

    with (
        NvdecSource(str(bikes_video), decoder=CpuDecoder) as gpu_side,
        open_source(str(bikes_video)) as cpu,
    ):
        assert gpu_side.decoder_name == "cpu" and not gpu_side.live
        assert (gpu_side.fps, gpu_side.frame_count) == (cpu.fps, cpu.frame_count) == (25.0, 250)
        ours, theirs = list(gpu_side), list(cpu)
    assert [f.index for f in ours] == [f.index for f in theirs] == list(range(250))
    assert [round(f.timestamp, 6) for f in ours] == [round(f.timestamp, 6) for f in theirs]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(ours, theirs, strict=True))


def test_the_first_picture_is_decoded_when_the_source_opens(bikes_video: Path) -> None:
    """NVDEC makes its decoder on the stream's first sequence header: opening decodes up to
    the first picture, so cameras opened together do that before the run, not inside it."""
    packets: list = []

    class Counting(CpuDecoder):
        def decode(self, packet):
            packets.append(packet)
            return super().decode(packet)

    source = NvdecSource(str(bikes_video), decoder=Counting)
    try:
        opened = len(packets)
        assert opened >= 1
        first = source.read()
        assert first is not None and first.index == 0 and len(packets) == opened
        assert np.array_equal(first.image, _opencv_frames(bikes_video, 1)[0])
    finally:
        source.close()


def test_declared_colour_and_defaults() -> None:
    assert colour_of(1, 1) == ("bt709", False)  # declared BT.709, limited
    assert colour_of(6, 2) == ("bt601", True)  # declared SMPTE 170M, full
    assert colour_of(2, 0) == ("bt601", False)  # unspecified: BT.601 (as OpenCV reads it)


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    for spec, expected in (
        (str(junk), "cannot open video "),
        (str(tmp_path / "missing.mp4"), "cannot open video "),
    ):
        with pytest.raises(SsdTrtError) as info:
            NvdecSource(spec, decoder=CpuDecoder)
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    url = f"rtsp://127.0.0.1:{_free_port()}/live"
    with pytest.raises(SsdTrtError, match="cannot open stream URL rtsp://.*server is up"):
        NvdecSource(url, reconnect=StreamSettings(timeout_s=2.0), decoder=CpuDecoder)


def test_open_decoded_keeps_cpu_sources_and_refuses_nvdec_without_the_package(
    bikes_video: Path,
) -> None:
    from ssd_trt.sources import FileSource
    from ssd_trt.video.decode import nvdec_missing

    with open_decoded(str(bikes_video)) as source:
        assert isinstance(source, FileSource)
    if nvdec_missing() is not None:  # this machine: PyNvVideoCodec does not load
        with pytest.raises(SsdTrtError, match=r"PyNvVideoCodec is not installed|ssd-trt\[gpu\]"):
            open_decoded(str(bikes_video), "nvdec")


def test_rtsp_demux_reconnects_after_server_restart(rtsp_server: RtspServer) -> None:  # noqa: F811
    """The live path: packets, then the server is killed and restarted on the same port; the
    demuxer reconnects, starts again at a keyframe, the decoder starts over (``fresh``) and
    frames go on numbered and timed in order."""
    source = NvdecSource(
        rtsp_server.url,
        reconnect=StreamSettings(
            reconnect_attempts=12, backoff_s=0.2, max_backoff_s=0.5, timeout_s=3.0
        ),
        decoder=CpuDecoder,
    )
    restart: threading.Timer | None = None
    try:
        assert source.live and source.info.codec == "mjpeg"
        assert source.info.time_base == Fraction(1, 90000)  # RTP's clock
        deadline = time.monotonic() + 120
        frames = []
        while len(frames) < 10:
            frame = source.read()
            assert frame is not None and time.monotonic() < deadline
            frames.append(frame)
        rtsp_server.kill()
        restart = threading.Timer(1.0, rtsp_server.start)
        restart.start()
        while len(frames) < 50:
            frame = source.read()
            assert frame is not None, f"stream ended after {len(frames)} frames"
            assert time.monotonic() < deadline
            frames.append(frame)
        restart.join(timeout=90)
        assert source.reconnects >= 1
        assert [f.index for f in frames] == list(range(50))
        stamps = [f.timestamp for f in frames]
        assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
        assert stamps[-1] - stamps[10] >= 1.0  # the outage lies between these frames
        assert all(f.size == (240, 320) for f in frames)
    finally:
        if restart is not None:
            restart.cancel()
            restart.join(timeout=90)
        source.close()


@contextmanager
def h264_camera(tmp_path: Path, video: Path, server: str) -> Iterator[str]:
    """An RTSP URL serving ``video``'s H.264 stream as it is (no re-encoding, B-frames kept):
    GStreamer's RTSP server (``gstreamer``) or the tests' own Python one (``python``,
    tests/rtsp_h264.py, for machines without GStreamer)."""
    if server == "gstreamer":
        with serving(tmp_path, h264_file_launch(video)) as gst:
            yield gst.url
    else:
        with H264RtspServer(video) as ours:
            yield ours.url


def rtsp_h264_pictures(url: str, decoder, count: int) -> list[np.ndarray]:
    """The first ``count`` pictures of the H.264 stream at ``url`` (RTP over TCP, as the
    demuxer asks) read by an NvdecSource with ``decoder``, as host BGR."""
    source = NvdecSource(url, reconnect=StreamSettings(timeout_s=10.0), decoder=decoder)
    try:
        assert source.live and source.info.codec == "h264" and source.info.has_b_frames
        return [f.image for f in _read_n(source, count, time.monotonic() + 120)]
    finally:
        source.close()


def rtsp_h264_across_a_restart(video: Path, decoder, before: int = 10, total: int = 40) -> None:
    """A camera that dies and comes back: ``video``'s H.264 served by the Python RTSP server,
    read by an NvdecSource with ``decoder``; after ``before`` frames the server cuts every
    connection and listens again on the same port a second later. The source reconnects and
    goes on numbered and timed in order; its pictures are the file's up to the cut, then the
    file's again from the first (the restarted camera starts over at a keyframe): no picture
    of the old session mixed into the new one, none decoded from a stale reference."""
    want = _opencv_frames(video, total)
    settings = StreamSettings(reconnect_attempts=12, backoff_s=0.2, max_backoff_s=0.5, timeout_s=3)
    with H264RtspServer(video) as server:
        source = NvdecSource(server.url, reconnect=settings, decoder=decoder)
        restart = threading.Timer(1.0, server.start)
        try:
            deadline = time.monotonic() + 120
            frames = _read_n(source, before, deadline)
            server.kill()
            restart.start()
            frames += _read_n(source, total - before, deadline)
            assert source.reconnects >= 1
        finally:
            restart.cancel()
            if restart.is_alive():
                restart.join(timeout=30)
            source.close()
    assert [f.index for f in frames] == list(range(total))
    stamps = [f.timestamp for f in frames]
    assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[-1] - stamps[before - 1] >= 1.0  # the outage lies between these frames
    first = [np.array_equal(f.image, want[0]) for f in frames]
    assert True in first[before:], "the restarted stream's first picture never came"
    again = first.index(True, before)  # before it: what the old session had sent (buffered)
    old, new = frames[:again], frames[again:]
    assert all(np.array_equal(f.image, want[i]) for i, f in enumerate(old))
    assert all(np.array_equal(f.image, want[i]) for i, f in enumerate(new))


def test_rtsp_h264_reconnects_and_starts_over_cleanly(bikes_video: Path) -> None:
    rtsp_h264_across_a_restart(bikes_video, CpuDecoder)


class _Paced(Output):
    """An output that takes ``seconds`` per frame (a slow disk or remote sink) and records the
    frame numbers it wrote."""

    shows_image = False

    def __init__(self, seconds: float) -> None:
        self.seconds, self.frames = seconds, []

    def write(self, result, annotated) -> None:
        time.sleep(self.seconds)
        self.frames.append(result.frame.index)


def two_cameras_one_slow_output(video: Path, decoder, detector, frames: int = 15) -> None:
    """Two cameras, each serving ``video``'s H.264 in real time, read by NvdecSources with
    ``decoder`` into one engine; one camera's output takes 0.2 s a frame. That camera's lane
    drops its stale frames (it writes its newest ones, in order); the other camera's lane is
    not held back by it. The detector is warmed up first: cameras opened before a GPU warm-up
    of seconds would start with a backlog that the lanes drop as stale (as they should)."""
    detector.warm_up()
    with H264RtspServer(video) as one, H264RtspServer(video) as two:
        settings = StreamSettings(timeout_s=10)
        sources = [NvdecSource(s.url, reconnect=settings, decoder=decoder) for s in (one, two)]
        slow, fast = _Paced(0.2), _Paced(0.0)
        try:
            stats = Engine(
                detector,
                sources,
                [[slow], [fast]],
                ["slow", "fast"],
                max_frames=frames,
                draw=False,
            ).run()
        finally:
            for source in sources:
                source.close()
    for out in (slow, fast):
        assert len(out.frames) == frames and out.frames == sorted(set(out.frames))
    # ~3 s for its 15 frames while the camera sends 25 a second: most of them go stale.
    assert stats.sources["slow"].dropped >= 2 * frames, stats.sources["slow"]
    assert slow.frames[-1] >= 3 * frames  # what it wrote is recent, not the first frames
    # The other camera: what piled up while the run started goes stale too (its first frame,
    # then the newest); from then on it writes frame after frame. Held back by the slow output
    # it would write one frame in five (every step ~5). A loaded 2-core machine skips a few
    # frames as the run starts (CI: steps of 9 and 14 before an unbroken run), so the test
    # asks that most steps are 1.
    steps = np.diff(fast.frames[1:])
    assert np.count_nonzero(steps == 1) >= len(steps) * 2 // 3, fast.frames


def test_a_slow_output_drops_only_its_own_cameras_stale_frames(
    coco_onnx: Path, bikes_video: Path
) -> None:
    with Detector(coco_onnx, "cpu", threads=1) as detector:
        two_cameras_one_slow_output(bikes_video, CpuDecoder, detector)


@pytest.mark.parametrize("server", ["gstreamer", "python"])
def test_rtsp_h264_with_b_frames_gives_the_files_pictures(
    tmp_path: Path, bikes_video: Path, server: str
) -> None:
    """What NVDEC gets from a camera: H.264 (High profile, B-frames) depacketized from RTP by
    the demuxer, decoded here by the CPU decoder from those very packets. Every picture equals
    the decode of the file it was streamed from, in display order from the first: no packet
    lost, reordered or cut at a wrong boundary. With the Python server, this also checks that
    server against FFmpeg's RTSP client (the GPU machine's RTSP test relies on it)."""
    with h264_camera(tmp_path, bikes_video, server) as url:
        got = rtsp_h264_pictures(url, CpuDecoder, 60)
    want = _opencv_frames(bikes_video, 60)
    assert [i for i in range(60) if not np.array_equal(got[i], want[i])] == []
