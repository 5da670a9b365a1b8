"""Video sources against real media: bikes.mp4, JPEGs, broken files, and a live RTSP server."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import optional, read_frames

from ssd_trt.errors import SsdTrtError
from ssd_trt.sources import Frame, open_source

cv2 = optional("cv2", "video")


# ----------------------------------------------------------------------------- files and images


def test_video_file_yields_every_frame_in_order(bikes_video: Path) -> None:
    with open_source(str(bikes_video)) as source:
        assert not source.live
        assert source.fps and 20 <= source.fps <= 60
        frames = list(source)
        assert frames[0].image.shape == (272, 640, 3)
        assert source.read() is None  # stays ended
    assert [f.index for f in frames] == list(range(250))
    stamps = [f.timestamp for f in frames]
    assert stamps[0] == 0.0 and all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert all(f.image.shape == (272, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert source.frames_skipped == 0


def test_damaged_frames_mid_file_are_skipped(tmp_path: Path, bikes_video: Path) -> None:
    data = bytearray(bikes_video.read_bytes())
    middle = len(data) // 2  # inside mdat: the moov index is at the end of this file
    data[middle : middle + 20_000] = np.random.default_rng(1).bytes(20_000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))

    with open_source(str(damaged)) as source:
        frames = list(source)
    assert 100 < len(frames) < 250 and source.frames_skipped >= 1
    assert frames[-1].timestamp > 9.0  # read on past the damage to the end
    # Indices stay consecutive; timestamps are media times, which a decoder recovering from
    # damage may emit slightly out of order, so they are not checked for order here.
    assert [f.index for f in frames] == list(range(len(frames)))


@pytest.fixture
def image_dir(tmp_path: Path, bikes_video: Path) -> Path:
    """Three real JPEG frames of bikes.mp4, one corrupt JPEG and a text file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(read_frames(bikes_video, every=60, limit=3)):
        assert cv2.imwrite(str(folder / f"frame_{i:02d}.jpg"), image)
    (folder / "frame_01b_broken.jpg").write_bytes(b"this is not a JPEG\n" * 10)
    (folder / "notes.txt").write_text("ignored: not an image suffix\n")
    return folder


def test_image_directory_skips_corrupt_images(image_dir: Path) -> None:
    with open_source(str(image_dir)) as source:
        assert not source.live
        frames = list(source)
        assert source.frames_skipped == 1
    assert [f.name for f in frames] == ["frame_00.jpg", "frame_01.jpg", "frame_02.jpg"]
    assert [(f.index, f.timestamp) for f in frames] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert all(f.image.shape == (272, 640, 3) for f in frames)


def test_image_glob_and_single_image(image_dir: Path) -> None:
    with open_source(str(image_dir / "frame_0?.jpg")) as source:
        names = [f.name for f in source]
        assert source.frames_skipped == 0
    assert names == ["frame_00.jpg", "frame_01.jpg", "frame_02.jpg"]

    with open_source(str(image_dir / "frame_02.jpg")) as source:
        frames = list(source)
    assert len(frames) == 1 and frames[0].name == "frame_02.jpg"
    assert frames[0].image.shape == (272, 640, 3)


def _one_line_error(spec: str | int, *words: str) -> str:
    with pytest.raises(SsdTrtError) as info:
        open_source(spec)
    message = str(info.value)
    assert "\n" not in message and ";" in message  # what is wrong; what to do
    for word in words:
        assert word in message
    return message


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    _one_line_error(str(tmp_path / "nope.mp4"), "does not exist")

    text = tmp_path / "video.mp4"
    text.write_text("not a video, just text\n" * 100)
    _one_line_error(str(text), "cannot decode", "video.mp4")

    noise = tmp_path / "noise.avi"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    _one_line_error(str(noise), "cannot decode", "noise.avi")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    _one_line_error(str(broken), "cannot decode", "broken.png")

    (tmp_path / "empty").mkdir()
    _one_line_error(str(tmp_path / "empty"), "no images")
    _one_line_error(str(tmp_path / "empty" / "*.jpg"), "no image files match")


def test_directory_of_only_corrupt_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    with open_source(str(tmp_path)) as source, pytest.raises(SsdTrtError) as info:
        source.read()
    assert "\n" not in str(info.value) and "could be decoded" in str(info.value)


@pytest.mark.parametrize("spec", [7, "7"])
def test_missing_webcam(spec: str | int) -> None:
    assert _one_line_error(spec) == (
        "no camera at index 7; check that a webcam is connected or pass a video file"
    )


# ----------------------------------------------------------------------------- live RTSP stream

# GStreamer's RTSP server, run with Debian's python3 (the venv has no gi). Needs the apt packages
# python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good.
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(sys.argv[2])
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if not server.attach(None):
    sys.exit("cannot listen on port " + sys.argv[1])
print("ready", flush=True)
GLib.MainLoop().run()
"""


# A live camera: a moving ball, MJPEG (GStreamer's good plugins only).
BALL = (
    "( videotestsrc is-live=true pattern=ball"
    " ! video/x-raw,format=I420,width=320,height=240,framerate=25/1"
    " ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
)


def h264_file_launch(path: Path) -> str:
    """A file's H.264 stream served as it is (no re-encoding, B-frames kept), in real time."""
    return (
        f'( filesrc location="{path}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=-1 )'
    )


def _gst_rtsp_available() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import Gst; Gst.init(None)\n"
        "assert Gst.ElementFactory.find('jpegenc') and Gst.ElementFactory.find('rtpjpegpay')"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=60)
    return done.returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServer:
    """A GStreamer RTSP server process on a fixed local port, for the test to kill and restart."""

    def __init__(self, script: Path, port: int, launch: str = BALL) -> None:
        self.script, self.port, self.launch = script, port, launch
        self.url = f"rtsp://127.0.0.1:{port}/live"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # start() may run on a timer thread

    def start(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(self.script), str(self.port), self.launch],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self.proc = proc
            assert proc.stdout is not None
            # Wait for "ready" (listening) without hanging if the server dies first.
            ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
            line = proc.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                self.kill()
                raise RuntimeError(f"RTSP server did not start on port {self.port}")

    def kill(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)


@contextmanager
def serving(tmp_path: Path, launch: str = BALL) -> Iterator[RtspServer]:
    """A started GStreamer RTSP server streaming ``launch`` at rtsp://127.0.0.1:PORT/live."""
    if not _gst_rtsp_available():
        # Fail, not skip, like the other system-tool tests: CI installs these, so a skip
        # would only hide a broken reconnect path.
        pytest.fail(
            "GStreamer's RTSP server is missing: apt-get install -y python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good"
        )
    script = tmp_path / "rtsp_server.py"
    script.write_text(RTSP_SERVER)
    server = RtspServer(script, _free_port(), launch)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    with serving(tmp_path) as server:
        yield server


def _read_n(source, n: int, deadline: float) -> list[Frame]:
    frames = []
    while len(frames) < n:
        assert time.monotonic() < deadline, f"only {len(frames)} of {n} frames before the deadline"
        frame = source.read()
        assert frame is not None, f"stream ended after {len(frames)} of {n} frames"
        frames.append(frame)
    return frames


def test_rtsp_stream_reconnects_after_server_restart(rtsp_server: RtspServer) -> None:
    # Backoff capped low so the retries span the ~1 s outage plus a slow server start-up.
    source = open_source(
        rtsp_server.url, reconnect_attempts=12, backoff_s=0.2, max_backoff_s=0.5, timeout_s=3.0
    )
    restart: threading.Timer | None = None
    try:
        assert source.live
        deadline = time.monotonic() + 120
        before = _read_n(source, 10, deadline)
        assert before[0].image.shape == (240, 320, 3)

        # Kill the server and bring it back on the same port while the reader keeps reading.
        rtsp_server.kill()
        restart = threading.Timer(1.0, rtsp_server.start)
        restart.start()
        after = _read_n(source, 40, deadline)
        restart.join(timeout=90)
        assert source.reconnects >= 1
        frames = before + after
        assert [f.index for f in frames] == list(range(len(frames)))
        stamps = [f.timestamp for f in frames]
        assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False))
        assert stamps[-1] - stamps[10] >= 1.0  # the outage lies between these frames
        assert all(f.image.shape == (240, 320, 3) for f in frames)
    finally:
        if restart is not None:
            restart.cancel()
            restart.join(timeout=90)
        source.close()


def test_rtsp_stream_ends_when_server_dies(rtsp_server: RtspServer) -> None:
    with open_source(rtsp_server.url, reconnect_attempts=2, backoff_s=0.1, timeout_s=3.0) as source:
        _read_n(source, 5, time.monotonic() + 60)
        rtsp_server.kill()
        killed = time.monotonic()
        frames_after = sum(1 for _ in source)
        elapsed = time.monotonic() - killed
    assert elapsed < 20, f"took {elapsed:.1f} s to give up"
    assert frames_after < 200  # only what was buffered before the kill
    assert source.reconnects == 0


def test_rtsp_read_does_not_hang_on_a_frozen_server(rtsp_server: RtspServer) -> None:
    with open_source(rtsp_server.url, reconnect_attempts=2, backoff_s=0.1, timeout_s=2.0) as source:
        _read_n(source, 5, time.monotonic() + 60)
        assert rtsp_server.proc is not None
        rtsp_server.proc.send_signal(signal.SIGSTOP)  # alive, port open, but silent
        frozen = time.monotonic()
        try:
            for _ in source:
                assert time.monotonic() - frozen < 30
        finally:
            rtsp_server.proc.send_signal(signal.SIGCONT)
        elapsed = time.monotonic() - frozen
    # Read timeout (2 s), then two reconnects that each time out (2 s), with short sleeps.
    assert elapsed < 20, f"took {elapsed:.1f} s to give up"


def test_rtsp_url_that_never_connects() -> None:
    url = f"rtsp://127.0.0.1:{_free_port()}/live"
    start = time.monotonic()
    with pytest.raises(SsdTrtError) as info:
        open_source(url, reconnect_attempts=2, backoff_s=0.1, timeout_s=3.0)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot open stream URL: {url};")
