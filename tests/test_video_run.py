"""How a detect run behaves around its edges: the live page's token, the FPS it reports, a
window without a display, SIGTERM and Ctrl-C, bad sources and native library noise.

Every server here listens on 127.0.0.1 only; the non-loopback warning is tested on the decision
(host string and token), not on a socket others could reach.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, optional, read_frames
from conftest import run_cli as cli

cv2 = optional("cv2", "video")

COCO = "ssdlite_mobilenet_v2_coco"
TOKEN = "s3cret/+&token"  # characters a URL must quote


@pytest.fixture(scope="module")
def coco_onnx(exported) -> Path:
    return exported(COCO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """Status, headers and body; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssd_trt.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_stats(url: str, headers: dict[str, str], frames: int) -> dict:
    deadline = time.monotonic() + 120
    stats: dict = {}
    while time.monotonic() < deadline and stats.get("frame", -1) < frames:
        time.sleep(0.3)
        with contextlib.suppress(OSError, ValueError):
            status, _, body = get(url + "stats.json", headers)
            stats = json.loads(body) if status == 200 else {}
    assert stats.get("frame", -1) >= frames, "the app never published frames"
    return stats


def lines(text: str) -> list[str]:
    """Lines as a terminal shows them: what follows the last \\r of each (a progress bar
    redraws, and clears, its line with \\r; text written after it without a newline first
    shares the bar's line)."""
    return [ln.rsplit("\r", 1)[-1] for ln in text.split("\n")]


# ------------------------------------------------------------------------------ FPS (item 4)


@pytest.mark.fast
def test_fps_meter_counts_frames_over_elapsed_time() -> None:
    """Batches of 8 frames, emitted microseconds apart, 5 times a second: 40 FPS, not the
    thousands that averaging 1/dt between frames gives."""
    from ssd_trt.video.pipeline import FpsMeter

    meter = FpsMeter()
    t0 = meter.started
    readings = []
    for k in range(1, 26):  # 5 s of batches, the first one 0.2 s after the start
        for i in range(8):
            readings.append(meter.tick(t0 + 0.2 * k + i * 1e-6))
    # Never above the real rate; within one batch of it once the 2 s window is full.
    assert max(readings) <= 40.5 and min(readings[80:]) >= 36, (min(readings), max(readings))
    steady = FpsMeter()
    values = [steady.tick(steady.started + (i + 1) / 25) for i in range(100)]
    assert all(abs(v - 25) < 0.5 for v in values), values[:5]


def test_reported_fps_is_the_rate_frames_come_out(coco_onnx, bikes_video, tmp_path) -> None:
    """A real pipeline batching a file's frames: the FPS each frame reports (banner, page)
    matches frames over elapsed time, and the JSON lines say how big each batch was."""
    from ssd_trt.detector import Detector
    from ssd_trt.sources import open_source
    from ssd_trt.video.outputs import JsonLinesOutput
    from ssd_trt.video.pipeline import Pipeline

    done: list[tuple[float, float, int]] = []  # (when, reported fps, batch)

    def emitted(r) -> None:
        done.append((time.perf_counter(), r.fps, r.batch))
        # Output at most ~40 frames/s, whatever the machine: the run then outlasts the meter's
        # 2 s window, and frames pile up behind the output, so batches still form.
        time.sleep(0.025)

    jsonl = tmp_path / "f.jsonl"
    with Detector(coco_onnx, "cpu") as detector:
        source = open_source(str(bikes_video))
        try:
            pipeline = Pipeline(
                detector,
                source,
                [JsonLinesOutput(jsonl)],
                max_batch=4,
                max_frames=120,
                on_frame=emitted,
            )
            pipeline.run()
        finally:
            source.close()
    assert len(done) == 120
    batches = [b for _, _, b in done]
    assert max(batches) > 1, "no batching happened, so this test shows nothing"
    # Once the meter's 2 s window is full: each frame reports the frames of the last 2 s.
    checked = 0
    for when, fps, _ in done:
        if when - done[0][0] > 2.5:
            actual = sum(when - 2.0 < t <= when for t, _, _ in done) / 2.0
            assert 0.8 * actual <= fps <= 1.25 * actual, (fps, actual)
            checked += 1
    assert checked > 10
    # And the frame rate a viewer sees is the run's, not a multiple of it.
    shown = float(np.median([fps for _, fps, _ in done[60:]]))
    assert 0.6 * pipeline.stats.fps <= shown <= 1.5 * pipeline.stats.fps, (shown, pipeline.stats)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["batch"] for r in records] == batches
    assert all(r["batch"] >= 1 and r["inference_ms"] > 0 for r in records)


# ------------------------------------------------------------------- the page's token (item 3)


@pytest.mark.fast
def test_bind_warning_is_for_reachable_hosts_without_a_token() -> None:
    from ssd_trt.video.serve import bind_warning, is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and bind_warning(host, None) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.20", "camera-box"):
        warning = bind_warning(host, None)
        assert warning and host in warning and "--token" in warning and "\n" not in warning
        assert bind_warning(host, "t") is None


@pytest.fixture(scope="module")
def frames(bikes_video: Path) -> list[np.ndarray]:
    return read_frames(bikes_video, limit=30)


@contextlib.contextmanager
def token_server(frames: list[np.ndarray]):
    """A started MjpegServer with a token on a free 127.0.0.1 port, publishing ~15 FPS."""
    from ssd_trt.video.serve import MjpegServer

    server = MjpegServer(port=0, token=TOKEN).start()
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.wait(1 / 15):
            jpeg = cv2.imencode(".jpg", frames[i % len(frames)])[1].tobytes()
            server.publish(jpeg, {"fps": 15.0, "latency_ms": 1.0, "frame": i})
            i += 1

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        yield server
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_token_guards_every_route(frames, caplog) -> None:
    from ssd_trt.errors import SsdTrtError
    from ssd_trt.video.serve import MjpegServer

    with pytest.raises(SsdTrtError, match="--token is empty"):
        MjpegServer(port=0, token="  ")
    with caplog.at_level(logging.INFO, logger="ssd_trt.video.serve"), token_server(frames) as s:
        quoted = urllib.parse.quote(TOKEN, safe="")
        assert s.page_url == f"{s.url}?token={quoted}"
        said = [r.getMessage() for r in caplog.records]
        assert said == [f"live view at {s.page_url}"]  # once, with the token; no warning
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for route in ("", "index.html", "stats.json", "frame.jpg"):
            status, headers, body = get(s.url + route)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", route
            assert b"Bearer TOKEN" in body
            assert get(s.url + route, {"Authorization": "Bearer wrong"})[0] == 401
            assert get(s.url + route + "?token=wrong")[0] == 401
            assert get(s.url + route, bearer)[0] == 200, route
            assert get(s.url + route + f"?token={quoted}")[0] == 200, route
        assert get(s.url + "stream.mjpg")[0] == 401
        with urllib.request.urlopen(s.url + f"stream.mjpg?token={quoted}", timeout=5) as resp:
            assert resp.status == 200 and resp.read(2048).count(b"\xff\xd8") >= 1


def test_page_opened_with_the_token_shows_stream_and_stats(frames, tmp_path) -> None:
    """Headless Chromium opens the logged URL: the page passes the token on to its MJPEG
    <img> and its stats requests (a browser cannot set headers on an <img>)."""
    from test_serve import FRAME_H, image_box, run_chromium, screenshot

    with token_server(frames) as server:
        dom = run_chromium(
            ["--dump-dom", "--virtual-time-budget=3000", server.page_url], tmp_path / "p1"
        )
        stats = re.search(r'<div id="stats">([^<]*)</div>', dom)
        assert stats and stats.group(1).startswith("FPS 15.0"), dom[-600:]
        shot = screenshot(server.page_url, tmp_path, "token")
        rows, _ = image_box(shot)
        assert abs((rows.stop - rows.start) - FRAME_H) <= 4, rows
        # Without the token the page loads nothing at all.
        plain = screenshot(server.url, tmp_path, "plain")
        assert np.abs(plain.astype(int) - plain[-1, -1].astype(int)).max(axis=2).mean() < 3


def test_cli_serve_token_fps_sigterm_and_summary(coco_onnx, bikes_video) -> None:
    """detect --serve with $SSD_TRT_TOKEN: the page URL with the token is logged once, requests
    without it get 401, /stats.json's FPS is the rate frames advance; SIGTERM ends the run as
    SIGTERM, with the run's summary on a line of its own and what it found on stdout."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    app = start_cli(
        "detect",
        str(bikes_video),
        "--model",
        str(coco_onnx),
        "--serve",
        f"127.0.0.1:{port}",
        "--no-show",
        "--loop",
        env={"SSD_TRT_TOKEN": TOKEN},
    )
    try:
        first = wait_for_stats(url, bearer, 20)
        t0 = time.monotonic()
        assert get(url + "stats.json")[0] == 401
        time.sleep(4.0)
        later = json.loads(get(url + "stats.json", bearer)[2])
        advanced = (later["frame"] - first["frame"]) / (time.monotonic() - t0)
    finally:
        app.send_signal(signal.SIGTERM)
        out, err = app.communicate(timeout=60)
    assert app.returncode == 130, err
    assert 0.5 * advanced <= later["fps"] <= 1.6 * advanced, (later, advanced)
    assert later["batch"] >= 1
    quoted = urllib.parse.quote(TOKEN, safe="")
    shown = [ln for ln in lines(err) if f"127.0.0.1:{port}" in ln]
    assert shown == [f"live view at {url}?token={quoted}"], err[-2000:]
    assert "open to anyone" not in err
    summary = [ln for ln in lines(err) if "stopped by" in ln]
    assert len(summary) == 2, err[-2000:]
    assert re.fullmatch(r"\d+ frames in [\d.]+ s \([\d.]+ FPS\); stopped by SIGTERM", summary[0])
    assert summary[1] == "ssd-trt: stopped by SIGTERM" == lines(err.rstrip("\n"))[-1]
    assert re.search(r"^person: in \d+ of \d+ frames", out, re.M), out


def test_ctrl_c_prints_the_summary_and_what_was_found(coco_onnx, bikes_video, tmp_path) -> None:
    jsonl = tmp_path / "c.jsonl"
    app = start_cli(
        "detect",
        str(bikes_video),
        "--model",
        str(coco_onnx),
        "--no-show",
        "--loop",
        "--json",
        str(jsonl),
    )
    try:
        partial = tmp_path / f".c.{app.pid}.partial.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        app.send_signal(signal.SIGINT)
        out, err = app.communicate(timeout=60)
    assert app.returncode == 130, err
    assert any(re.fullmatch(r"\d+ frames in .*; stopped by Ctrl-C", ln) for ln in lines(err))
    assert lines(err.rstrip("\n"))[-1] == "ssd-trt: interrupted"
    assert re.search(r"^\w[\w ]*: in \d+ of \d+ frames|^found nothing", out, re.M), out


# ------------------------------------------------------------------ a window, no display (5)


def unused_display() -> str:
    """A display number nothing serves (no socket file, nothing on the abstract socket)."""
    for n in range(150, 400):
        path = f"/tmp/.X11-unix/X{n}"
        if os.path.exists(path):
            continue
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect("\0" + path)
            except OSError:
                return f":{n}"
    pytest.fail("no free X display number")


@pytest.mark.parametrize("display", [None, "unused"])
def test_show_without_a_usable_display_is_one_error_before_model_work(
    coco_onnx, bikes_video, tmp_path, display
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display:
        env["DISPLAY"] = unused_display()
    out = tmp_path / "out.mp4"
    args = ["detect", str(bikes_video), "--model", str(coco_onnx), "--show", "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_trt.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    line = error_line(proc)
    assert "--show needs a display" in line and "--no-show" in line
    assert (env.get("DISPLAY") or "DISPLAY is not set") in line
    assert "backend" not in proc.stderr, "the model was loaded first"
    assert list(tmp_path.iterdir()) == [], "a file was left behind"


@pytest.fixture
def xvfb_display():
    if not shutil.which("Xvfb"):
        pytest.fail("Xvfb is missing: apt-get install xvfb")
    display = unused_display()
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/tmp/.X11-unix/X{display[1:]}"):
            assert time.monotonic() < deadline and server.poll() is None, "Xvfb did not start"
            time.sleep(0.1)
        yield display
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_display_probe_dials_the_x_server(xvfb_display, monkeypatch) -> None:
    from ssd_trt.video.display import display_problem, has_display

    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for value in (xvfb_display, xvfb_display + ".0", "unix" + xvfb_display):
        monkeypatch.setenv("DISPLAY", value)
        assert has_display() and display_problem() is None, value
    for value in ("localhost" + xvfb_display, unused_display(), "nonsense", ":x"):
        monkeypatch.setenv("DISPLAY", value)  # Xvfb does not listen on TCP: -nolisten tcp
        assert not has_display(), value
        assert display_problem() == f"no X server answers on DISPLAY={value}"
    monkeypatch.delenv("DISPLAY")
    assert display_problem() == "DISPLAY is not set"


# ---------------------------------------------------------------- many sources, noise (14)


def test_every_bad_source_is_named_in_one_line(coco_onnx, bikes_video, tmp_path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(20000))
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "out"
    proc = cli(
        "detect",
        str(missing),
        str(bikes_video),
        str(garbage),
        "--model",
        str(coco_onnx),
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert "2 of 3 sources cannot be opened" in line
    assert f"{missing} does not exist" in line and f"cannot decode {garbage}" in line
    assert proc.stderr.strip() == line, "OpenCV or FFmpeg printed around the error"
    assert not out.exists()


def test_many_sources_sigterm_prints_the_summary(coco_onnx, bikes_video, coco_mini, tmp_path):
    app = start_cli(
        "detect",
        str(bikes_video),
        str(coco_mini / "images"),
        "--model",
        str(coco_onnx),
        "--output-dir",
        str(tmp_path / "out"),
        "--realtime",
    )
    time.sleep(8)
    app.send_signal(signal.SIGTERM)
    _, err = app.communicate(timeout=60)
    assert app.returncode == 130, err
    summary = [ln for ln in lines(err) if re.match(r"2 sources, \d+ frames in ", ln)]
    assert len(summary) == 1 and summary[0].endswith("stopped by SIGTERM"), err[-2000:]
    assert any(ln.startswith("bikes: ") for ln in lines(err)), err[-2000:]
    assert lines(err.rstrip("\n"))[-1] == "ssd-trt: stopped by SIGTERM"


@pytest.mark.parametrize("source", ["garbage.mp4", "rtsp://127.0.0.1:{port}/live"])
def test_opencv_and_ffmpeg_say_nothing_before_the_error(coco_onnx, tmp_path, source) -> None:
    """Only our line: FFmpeg's 'moov atom not found' / 'Connection refused' and OpenCV's
    [WARN] lines show with -v only."""
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(20000))
    spec = source.format(port=free_port())
    if "://" not in spec:
        spec = str(tmp_path / spec)
    proc = cli("detect", spec, "--model", str(coco_onnx), "--no-show")
    assert proc.returncode == 2
    assert proc.stderr.strip() == error_line(proc)
    loud = cli("-v", "detect", spec, "--model", str(coco_onnx), "--no-show")
    assert loud.returncode == 2 and re.search(
        r"moov atom not found|Connection refused", loud.stderr
    )
