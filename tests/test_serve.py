"""Tests of ssd_trt.serve: a real server on 127.0.0.1, real bikes.mp4 frames, headless Chromium.

The browser test needs Debian's ``chromium`` package (``apt-get install -y chromium``); set
SSD_TRT_CHROMIUM to use another Chromium binary.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import optional, read_frames

from ssd_trt.errors import SsdTrtError
from ssd_trt.video.serve import MjpegServer

cv2 = optional("cv2", "video")

FPS = 15.0
FRAME_W, FRAME_H = 640, 272
HTTP_TIMEOUT_S = 5.0


# --- helpers -------------------------------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes annotated frames (index drawn on each) at about ``fps``, like a live pipeline."""

    def __init__(
        self,
        server: MjpegServer,
        frames: list[np.ndarray],
        fps: float = FPS,
        start_after: threading.Event | None = None,
    ) -> None:
        super().__init__(name="test-publisher", daemon=True)
        self.server, self.frames, self.period = server, frames, 1.0 / fps
        self.start_after = start_after
        self.stop = threading.Event()
        self.published = 0

    def publish_one(self, index: int, fps: float) -> None:
        t0 = time.perf_counter()
        frame = self.frames[index % len(self.frames)].copy()
        cv2.putText(frame, f"#{index}", (16, 56), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 255, 255), 3)
        ok, jpeg = cv2.imencode(".jpg", frame)
        assert ok
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self.server.publish(jpeg.tobytes(), {"fps": fps, "latency_ms": latency_ms, "frame": index})
        self.published += 1

    def run(self) -> None:
        if self.start_after is not None:
            self.start_after.wait(30)
        index, fps, last = 1, 0.0, time.perf_counter()
        while not self.stop.wait(self.period):
            now = time.perf_counter()
            fps = 1.0 / max(now - last, 1e-6) if fps == 0 else 0.8 * fps + 0.2 / (now - last)
            last = now
            self.publish_one(index, fps)
            index += 1


class RequestLog(logging.Handler):
    """Collects the paths the server logs at debug level: the server's own view of its clients."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.paths: list[str] = []
        self.first_stats = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r'"GET (\S+) ', record.getMessage())
        if match:
            self.paths.append(match.group(1))
            if match.group(1) == "/stats.json":
                self.first_stats.set()


@contextlib.contextmanager
def request_log() -> Iterator[RequestLog]:
    logger = logging.getLogger(MjpegServer.__module__)
    handler, level = RequestLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def live_server(frames: list[np.ndarray]) -> Iterator[tuple[MjpegServer, Publisher]]:
    """A started server on a free 127.0.0.1 port with a first frame already published."""
    server = MjpegServer(port=0).start()
    publisher = Publisher(server, frames)
    try:
        publisher.publish_one(0, FPS)  # so no request ever sees the 503 "no frame yet"
        publisher.start()
        yield server, publisher
    finally:
        publisher.stop.set()
        publisher.join(timeout=5)
        server.close()


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def read_parts(resp: http.client.HTTPResponse, count: int) -> list[bytes]:
    """The bodies of the next ``count`` parts of a multipart/x-mixed-replace response."""
    match = re.search(r"boundary=(\S+)", resp.headers["Content-Type"])
    assert match, resp.headers["Content-Type"]
    boundary = b"--" + match.group(1).encode()
    parts: list[bytes] = []
    while len(parts) < count:
        line = resp.readline()
        assert line, "stream ended early"
        if line.strip() != boundary:
            continue
        headers: dict[str, str] = {}
        while (line := resp.readline().strip()) != b"":
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        parts.append(resp.read(int(headers["content-length"])))
    return parts


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


@pytest.fixture(scope="module")
def frames(bikes_video: Path) -> list[np.ndarray]:
    frames = read_frames(bikes_video, limit=90)
    assert len(frames) == 90 and frames[0].shape == (FRAME_H, FRAME_W, 3)
    return frames


# --- browser -------------------------------------------------------------------------------


def chromium_binary() -> str:
    found = os.environ.get("SSD_TRT_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("chromium not found; install Debian's package: apt-get install -y chromium")
    return found


def run_chromium(args: list[str], profile: Path, timeout: float = 60.0) -> str:
    """Run headless Chromium once; kill its whole process group however it ends."""
    cmd = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # the tests run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so no renderer or helper outlives it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(cmd)}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err[-3000:]}"
    return out


def screenshot(url: str, tmp_path: Path, name: str) -> np.ndarray:
    png = tmp_path / f"{name}.png"
    run_chromium(
        [f"--screenshot={png}", "--window-size=800,600", "--virtual-time-budget=2000", url],
        tmp_path / f"profile-{name}",
    )
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (600, 800, 3), f"bad screenshot {png}"
    return image


def image_box(shot: np.ndarray) -> tuple[slice, slice]:
    """Where the video is on the page: the rows and columns mostly unlike the page background."""
    background = shot[-1, -1].astype(int)  # the page's bottom-right corner is plain background
    mask = np.abs(shot.astype(int) - background).max(axis=2) > 6
    rows = np.flatnonzero(mask.mean(axis=1) > 0.5)
    assert rows.size, "no image on the page"
    # Columns at a frame's edge can be dark road or sky close to the page colour: a fifth of the
    # rows differing is enough to count a column as image.
    cols = np.flatnonzero(mask[rows].mean(axis=0) > 0.2)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def test_page_shows_live_stream_in_chromium(frames: list[np.ndarray], tmp_path: Path) -> None:
    with live_server(frames) as (server, publisher):
        first = screenshot(server.url, tmp_path, "first")
        time.sleep(1.0)  # at 15 fps, well over 10 new frames
        second = screenshot(server.url, tmp_path, "second")
        assert publisher.is_alive() and publisher.published > 20

    # The stats line: publishing starts only once the page has fetched /stats.json, so numbers
    # in it prove the page keeps polling, not just that it loaded stats once.
    with request_log() as requests, MjpegServer(port=0) as server:
        publisher = Publisher(server, frames, start_after=requests.first_stats)
        publisher.start()
        try:
            dom = run_chromium(
                ["--dump-dom", "--virtual-time-budget=3000", server.url], tmp_path / "profile-dom"
            )
        finally:
            publisher.stop.set()
            publisher.join(timeout=5)
    polls = requests.paths.count("/stats.json")
    assert polls >= 3, f"the page fetched /stats.json {polls} times: {requests.paths}"
    assert "/stream.mjpg" in requests.paths

    for shot in (first, second):
        rows, cols = image_box(shot)
        height, width = rows.stop - rows.start, cols.stop - cols.start
        assert abs(height - FRAME_H) <= 4 and abs(width - FRAME_W) <= 4, (height, width)
        assert shot[rows, cols].std() > 20, "the image area is blank"
    rows, cols = image_box(first)
    change = np.abs(first[rows, cols].astype(int) - second[rows, cols].astype(int)).mean()
    assert change > 5, f"the image did not change between screenshots (mean diff {change:.1f})"

    assert "<title>ssd-trt live</title>" in dom
    stats = re.search(r'<div id="stats">(.*?)</div>', dom, re.S)
    assert stats, dom[-2000:]
    text = stats.group(1)
    assert re.search(r"FPS \d+\.\d", text), text
    assert re.search(r"latency \d+\.\d ms", text), text
    assert re.search(r"frame \d+", text), text


# --- HTTP ----------------------------------------------------------------------------------


def test_routes_stream_and_close(frames: list[np.ndarray]) -> None:
    with live_server(frames) as (server, _):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.url) and server.port != 0

        status, ctype, body = get(server.url)
        assert status == 200 and ctype.startswith("text/html")
        page = body.decode()
        assert "<title>ssd-trt live</title>" in page
        assert '<img id="stream" src="/stream.mjpg"' in page
        assert "/stats.json" in page and "://" not in page, "the page must be self-contained"

        status, ctype, body = get(server.url + "stats.json")
        stats = json.loads(body)
        assert status == 200 and ctype == "application/json"
        assert set(stats) == {"fps", "latency_ms", "frame"} and stats["frame"] >= 0

        status, ctype, body = get(server.url + "frame.jpg")
        assert status == 200 and ctype == "image/jpeg"
        assert decode(body).shape == (FRAME_H, FRAME_W, 3)

        with pytest.raises(urllib.error.HTTPError) as info:
            get(server.url + "nope")
        assert info.value.code == 404

        # A second server on the same port fails with a one-line, actionable message.
        with pytest.raises(SsdTrtError) as err:
            MjpegServer(port=server.port).start()
        message = str(err.value)
        assert "\n" not in message
        assert message == (
            f"cannot listen on 127.0.0.1:{server.port}: address in use; pass another --serve port"
        )

        stream = urllib.request.urlopen(server.url + "stream.mjpg", timeout=HTTP_TIMEOUT_S)
        try:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            parts = read_parts(stream, 4)
            assert len(set(parts)) >= 3, "the stream repeated frames instead of sending new ones"
            for part in parts:
                assert decode(part).shape == (FRAME_H, FRAME_W, 3)

            # close() with the client still connected returns promptly and ends its stream.
            t0 = time.monotonic()
            server.close()
            elapsed = time.monotonic() - t0
            assert elapsed < 2.0, f"close() took {elapsed:.2f} s with a client connected"
            with contextlib.suppress(OSError, http.client.HTTPException):
                while stream.read(65536):
                    pass
            assert time.monotonic() - t0 < 3.0, "the client stream did not end after close()"
        finally:
            stream.close()

        server.close()  # idempotent
        with pytest.raises(urllib.error.URLError):
            get(server.url)


@pytest.mark.fast
def test_no_frame_yet() -> None:
    with MjpegServer(port=0) as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            get(server.url + "frame.jpg")
        assert info.value.code == 503
        assert json.loads(get(server.url + "stats.json")[2]) == {}


@pytest.mark.fast
def test_close_ends_waiting_streams() -> None:
    """Streams waiting for a frame that never comes end on close(), and their threads with them."""
    threads_before = threading.active_count()
    server = MjpegServer(port=0).start()
    streams = []
    try:
        for _ in range(3):
            # urlopen returns once the headers arrived: the handler is then waiting for a frame.
            streams.append(urllib.request.urlopen(server.url + "stream.mjpg", timeout=5))
        t0 = time.monotonic()
        server.close()
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"close() took {elapsed:.2f} s with clients waiting"
        for stream in streams:
            assert stream.read() == b""  # a clean end of stream, no frame
        assert threading.active_count() == threads_before, threading.enumerate()
    finally:
        server.close()
        for stream in streams:
            stream.close()


def test_slow_client_blocks_neither_publish_nor_close(frames: list[np.ndarray]) -> None:
    """A client that stops reading must not stall the pipeline, nor outlive close()."""
    threads_before = threading.active_count()
    server = MjpegServer(port=0).start()
    jpeg = cv2.imencode(".jpg", frames[0])[1].tobytes()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(HTTP_TIMEOUT_S)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(16).startswith(b"HTTP/1.0 200")  # then never read again
            # Far more data than the socket buffers hold, so the handler's write blocks.
            slowest = 0.0
            for i in range(300):
                t0 = time.monotonic()
                server.publish(jpeg, {"frame": i})
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.002)  # let the handler thread run into the full socket
            assert slowest < 0.1, f"publish() was held up by a slow client ({slowest:.3f} s)"
            t0 = time.monotonic()
            server.close()
            elapsed = time.monotonic() - t0
            assert elapsed < 2.0, f"close() took {elapsed:.2f} s with a stuck client"
            assert threading.active_count() == threads_before, threading.enumerate()
    finally:
        server.close()


# --- end to end: ssd-trt detect --serve ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_detect_serves_annotated_video(exported, bikes_video: Path, tmp_path: Path) -> None:
    """The real app: detect on bikes.mp4 with --serve, watched in headless Chromium."""
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssd_trt.cli",
            "detect",
            str(bikes_video),
            "--model",
            str(exported("ssdlite_mobilenet_v2_coco")),
            "--serve",
            f"127.0.0.1:{port}",
            "--no-show",
            "--sync",
            "--loop",  # keeps serving until the test stops it, however fast this machine is
            "-q",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        stats: dict = {}
        while time.monotonic() < deadline and stats.get("frame", 0) < 5:
            time.sleep(0.5)
            with contextlib.suppress(OSError, ValueError):
                stats = json.loads(get(url + "stats.json")[2] or b"{}")
        assert stats.get("frame", 0) >= 5, "the app never published frames"
        first = screenshot(url, tmp_path, "app-first")
        time.sleep(1.5)
        second = screenshot(url, tmp_path, "app-second")
        later = json.loads(get(url + "stats.json")[2])
    finally:
        app.send_signal(signal.SIGINT)
        _, err = app.communicate(timeout=60)
    assert app.returncode in (0, 130), err
    assert later["frame"] > stats["frame"] and later["fps"] > 0
    assert {"latency_ms", "inference_ms", "detections"} <= set(later)
    rows, cols = image_box(first)
    assert abs((rows.stop - rows.start) - FRAME_H) <= 4, (rows, cols)
    change = np.abs(first[rows, cols].astype(int) - second[rows, cols].astype(int)).mean()
    assert change > 5, f"the served image did not change (mean diff {change:.1f})"
    # The FPS banner is drawn into the frame: light text on black at the bottom-left.
    banner = first[rows.stop - 22 : rows.stop, cols.start : cols.start + 200]
    assert (banner.max(axis=2) > 200).sum() > 30 and (banner.max(axis=2) < 40).sum() > 300
