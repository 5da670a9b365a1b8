"""Issue 10: a new user's first hour (one test per rough edge) and faults under load."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, error_line, read_frames, run_cli

from ssd_trt.detector import Detector
from ssd_trt.video.overlay import banner_rect, banner_text, draw_frame, place_label
from ssd_trt.video.serve import MjpegServer

COCO = "ssdlite_mobilenet_v2_coco"
PERSON = "ssdlite_mobilenet_v2_person"
NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "I0000")


@pytest.fixture(scope="module")
def coco_onnx(exported) -> Path:
    return exported(COCO)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------ 1. labels visible, banner aside


def test_place_label_stays_inside_and_clear_of_the_banner():
    image = (640, 272)
    banner = (0, 250, 300, 272)
    # A box at the top-left corner: no room above, so the label goes inside its top.
    assert place_label((0, 0, 200, 200), (80, 18), image, [banner]) == (0, 0, 80, 18)
    # A box starting left of the image and one running off the right edge: shifted in whole.
    assert place_label((-30, 50, 100, 200), (80, 18), image)[0] == 0
    assert place_label((600, 50, 660, 200), (80, 18), image)[2] == 640
    # A box filling the bottom-left: every spot but one near its top is under the banner.
    rect = place_label((10, 240, 200, 272), (80, 18), image, [banner])
    assert rect[3] <= banner[1] or rect[0] >= banner[2]


@pytest.mark.parametrize("index", [9, 39, 249])
def test_labels_of_bikes_frames_are_whole_and_visible(coco_onnx, bikes_video, index, tmp_path):
    """Frames where the top-left banner used to hide labels ("erson 0.52", or nothing)."""
    frame = read_frames(bikes_video)[index]
    with Detector(coco_onnx, "cpu", score_threshold=0.5) as det:
        detections = det.detect(frame)
    assert len(detections) > 0
    image = frame.copy()
    rects = draw_frame(image, detections, 24.3, 38.1, "cpu")
    cv2.imwrite(str(tmp_path / f"frame{index}.png"), image)
    height, width = frame.shape[:2]
    banner = banner_rect((width, height), banner_text(24.3, 38.1, "cpu"))
    for d, rect in zip(detections, rects, strict=True):
        x1, y1, x2, y2 = rect
        assert 0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height, (d.label, rect)
        assert not (x1 < banner[2] and banner[0] < x2 and y1 < banner[3] and banner[1] < y2)
        # Drawn last: the label's own colour fills its corner, not the banner's black.
        assert image[y1, x1].tolist() != [0, 0, 0], (d.label, rect)
    for a in range(len(rects)):
        for b in range(a + 1, len(rects)):
            ra, rb = rects[a], rects[b]
            overlap = ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]
            assert not overlap, (ra, rb)


# ------------------------------------------------------ 2. checks before calibration (RTX)


def test_rtx_build_of_nms_onnx_fails_before_calibration(coco_onnx, calib_dir, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs pip install 'ssd-trt[rtx]' (CI has it)")
    start = time.monotonic()
    proc = run_cli(
        "build",
        str(coco_onnx),
        "--int8",
        "--calib-images",
        str(calib_dir),
        "--trt",
        "tensorrt-rtx",
        "--compute-capability",
        "sm89",
        "-o",
        str(tmp_path / "x.engine"),
        timeout=120,
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert "--nms none" in line and "ssd-trt build MODEL_NAME" in line, line
    assert "calibrat" not in proc.stderr.replace(line, ""), proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert took < 60, f"took {took:.0f} s: something long ran before the check"


# -------------------------------------------------- 4, 12. bad input: exit 2, one line, fast


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "--batch-sizes", "1,100000"), "GiB"),
        (("detect", "{video}", "--serve", "127.0.0.1:99999"), "port from 1 to 65535"),
        (("detect", "{video}", "--output", "/sys/out.mp4"), "permission denied"),
        (("detect", "{video}", "--json", "/sys/out.jsonl"), "permission denied"),
        (("detect", "{video}", "--score-threshold", "5"), "between 0 and 1"),
        (("export", PERSON, "--score-threshold", "5"), "between 0 and 1"),
        (("export", PERSON, "-o", "model.txt"), "should end in .onnx"),
        (("build", "x.onnx", "-o", "out.onnx"), "should end in"),
        (("webcam", "video.mp4"), "ssd-trt detect video.mp4"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, bikes_video, tmp_path):
    start = time.monotonic()
    args = [a.replace("{video}", str(bikes_video)) for a in args]
    proc = run_cli(*args, "--cache-dir", str(tmp_path / "cache"), timeout=60)
    assert proc.returncode == 2, proc.stderr
    text = proc.stderr if proc.stderr.startswith("usage:") else error_line(proc)
    assert message in text, text
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert time.monotonic() - start < 30  # before any download, export or model load
    assert not (tmp_path / "cache" / "models").exists()


def test_webcam_help_has_no_file_options():
    proc = run_cli("webcam", "--help")
    assert proc.returncode == 0 and "--realtime" not in proc.stdout and "--loop" not in proc.stdout


# --------------------------------------------------------------------- 7. results are shown


def test_detect_photo_prints_what_it_found(coco_onnx, coco_mini, tmp_path):
    photo = sorted((coco_mini / "images").glob("*.jpg"))[0]
    proc = run_cli("detect", str(photo), "--model", str(coco_onnx), "--no-show", "-q")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"{photo.name}: \d+ person \(0\.\d\d(, 0\.\d\d)*\).*\n", proc.stdout)


def test_detect_video_prints_a_summary(coco_onnx, bikes_video):
    args = ("detect", str(bikes_video), "--model", str(coco_onnx), "--no-show", "-q")
    proc = run_cli(*args, "--max-frames", "40")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^car: in \d+ of 40 frames \(best 0\.\d\d\)$", proc.stdout, re.M)


# --------------------------------------------------------- 8. TensorFlow noise, empty .pb


def test_empty_pb_is_rejected_before_importing_tensorflow(tmp_path):
    empty = tmp_path / "frozen_inference_graph.pb"
    empty.write_bytes(b"")
    start = time.monotonic()
    proc = run_cli("export", str(empty), "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and "is empty (0 bytes)" in error_line(proc)
    assert time.monotonic() - start < 8, "TensorFlow was imported (10+ s) for an empty file"


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_log_noise_only_with_verbose(verbose, tmp_path):
    bad = tmp_path / "graph.pb"
    bad.write_bytes(b"\x0a\x05hello, not a graph" * 10)  # parsed by TF, so TF is imported
    proc = run_cli("export", str(bad), *(["-v"] if verbose else []), timeout=300)
    assert proc.returncode == 2
    noisy = [n for n in NOISE if n in proc.stderr]
    assert bool(noisy) == verbose, proc.stderr


@pytest.mark.slow
def test_quiet_export_prints_only_the_summary(registry_graphs, tmp_path):
    out = tmp_path / "person.onnx"
    proc = run_cli("-q", "export", str(registry_graphs[PERSON]), "-o", str(out), "--nms", "none")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "no NMS in the graph; ssd_trt applies it after the network" in proc.stdout
    assert "NMS in the graph:" not in proc.stdout


# ------------------------------------------------------------------------ 10. bench progress


def test_bench_shows_progress(coco_onnx, bikes_video, tmp_path):
    args = ["bench", "--model", str(coco_onnx), "--backend", "cpu", "--video", str(bikes_video)]
    args += ["--batch-sizes", "1,2", "--iterations", "3", "--max-frames", "6"]
    proc = run_cli(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for step in ("latency at batch 2", "Detector.detect overhead", "video run 4/4"):
        assert step in proc.stderr, proc.stderr
    assert re.search(r"batch 2: +\d+%", proc.stderr), "no bar over the timed runs"
    assert re.search(r"async: +\d+%", proc.stderr), "no bar over the video runs"


# ------------------------------------------------------------- 11. H.264 that browsers play


@pytest.fixture(scope="module")
def h264_video(coco_onnx, bikes_video, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("h264") / "annotated.mp4"
    args = ("detect", str(bikes_video), "--model", str(coco_onnx), "--no-show")
    proc = run_cli(*args, "--max-frames", "50", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_mp4_output_is_h264_and_decodes(h264_video):
    import av

    path, stderr = h264_video
    assert "H.264 (libx264 via PyAV)" in stderr
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (640, 272)
        frames = list(container.decode(stream))
    assert len(frames) == 50 and frames[0].format.name == "yuv420p"
    cap = cv2.VideoCapture(str(path))  # and OpenCV, as the tests of other outputs read it
    assert cap.read()[0]
    cap.release()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(folder: Path):
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PLAYER = """<!DOCTYPE html><html><body>
<video id="v" src="video.mp4" muted autoplay playsinline></video><div id="s">waiting</div>
<script>
const v = document.getElementById("v"), s = document.getElementById("s");
v.addEventListener("error", () => { s.textContent = "error " + (v.error && v.error.code); });
v.play().catch((e) => { s.textContent = "failed " + e.name; });
(function tick() {
  if (v.currentTime > 0.5 && v.videoWidth > 0)
    s.textContent = "playing " + v.videoWidth + "x" + v.videoHeight;
  else setTimeout(tick, 100);
})();
</script></body></html>
"""


def play_in_chromium(video: Path, tmp_path: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("chromium is missing: apt-get install chromium (.ci/run does)")
    site = tmp_path / "site"
    site.mkdir(parents=True)
    shutil.copy(video, site / "video.mp4")
    (site / "index.html").write_text(PLAYER)
    with static_server(site) as url:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
            + ["--disable-background-networking", "--disable-component-update"]
            + [
                f"--user-data-dir={tmp_path / 'profile'}",
                "--autoplay-policy=no-user-gesture-required",
            ]
            + ["--virtual-time-budget=5000", "--dump-dom", f"{url}/index.html"],
            capture_output=True,
            text=True,
            timeout=90,
        )
    found = re.search(r'<div id="s">([^<]*)</div>', proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    return found.group(1)


def test_mp4_output_plays_in_headless_chromium(h264_video, tmp_path):
    assert play_in_chromium(h264_video[0], tmp_path / "h264") == "playing 640x272"
    # The control: what the writer made before (MPEG-4 Part 2) does not play there.
    old = tmp_path / "mp4v.mp4"
    writer = cv2.VideoWriter(str(old), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 272))
    for _ in range(25):
        writer.write(np.full((272, 640, 3), 128, np.uint8))
    writer.release()
    assert not play_in_chromium(old, tmp_path / "mp4v").startswith("playing")


# ------------------------------------------------------------------------- 12. housekeeping


def test_gitignore_covers_the_readme_outputs():
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    names = ["annotated.mp4", "detections.jsonl"]
    proc = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.split() == names


def test_ci_removes_its_venv_on_every_exit():
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"""trap 'rm -rf "\$work"' EXIT""", script)
    assert 'venv="$work/venv"' in script


# ---------------------------------------------------- reliability: clients that misbehave


def _stuck_reader(port: int) -> socket.socket:
    """Asks for the stream, then never reads: its socket buffer fills and stays full."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def _vanish(port: int) -> None:
    """Asks for the stream, reads a little, then resets the connection."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    with contextlib.suppress(OSError):
        sock.settimeout(0.5)
        sock.recv(1000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_stuck_and_vanishing_clients_neither_stall_nor_grow_the_server():
    rng = np.random.default_rng(0)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))[1].tobytes()
    with MjpegServer(port=0) as server:
        server.publish(jpeg, {"frame": 0})
        stuck = [_stuck_reader(server.port) for _ in range(3)]
        time.sleep(0.3)
        base = threading.active_count()
        worst = 0.0
        for i in range(300):
            if i % 10 == 0:
                _vanish(server.port)
            t0 = time.perf_counter()
            server.publish(jpeg, {"frame": i})
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.002)
        assert worst < 0.05, f"publish blocked for {worst * 1000:.0f} ms"
        deadline = time.monotonic() + 10
        while threading.active_count() > base and time.monotonic() < deadline:
            time.sleep(0.1)
        # The 30 vanished clients' threads are gone; the 3 stuck ones are still 3.
        assert threading.active_count() <= base, (threading.active_count(), base)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as ok:
            ok.sendall(b"GET /frame.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.recv(100).startswith(b"HTTP/1.0 200")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3, "close() waited on the stuck clients"
    for sock in stuck:
        sock.close()


def test_detect_serve_keeps_every_frame_with_stuck_and_vanishing_readers(
    coco_onnx, bikes_video, tmp_path
):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "d.jsonl"
    args = [sys.executable, "-m", "ssd_trt.cli", "detect", str(bikes_video), "--model"]
    args += [str(coco_onnx), "--no-show", "--serve", f"127.0.0.1:{port}", "--json", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stuck = []
    try:
        deadline = time.monotonic() + 120
        while not stuck and time.monotonic() < deadline and proc.poll() is None:
            try:
                stuck.append(_stuck_reader(port))
            except OSError:
                time.sleep(0.2)
        for _ in range(5):
            _vanish(port)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in stuck:
            sock.close()
    assert proc.returncode == 0, err
    assert [r["frame"] for r in lines_of(out)] == list(range(250))


# ---------------------------------------------------------------------- reliability: disk full


def _tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    return proc.returncode == 0


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_disk_full_stops_with_one_line_and_keeps_whole_frames(
    how, coco_onnx, bikes_video, tmp_path
):
    disk = tmp_path / "disk"
    disk.mkdir()
    limit = 256 * 1024
    mounted = how == "tmpfs" and _tmpfs(disk, "256k")
    if how == "tmpfs" and not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root); the rlimit case covers it")
    try:
        args = [sys.executable, "-m", "ssd_trt.cli", "detect", str(bikes_video), "--model"]
        args += [str(coco_onnx), "--no-show", "--output", str(disk / "a.mp4")]
        args += ["--json", str(disk / "d.jsonl")]
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=None if mounted else _limit_file_size(limit),
        )
        assert proc.returncode == 2, proc.stderr
        line = error_line(proc)
        reason = "no space left" if mounted else "file size limit"
        assert reason in line and "outputs were closed with what was written" in line, line
        assert "Traceback" not in proc.stderr
        records = lines_of(disk / "d.jsonl")  # every line whole
        assert 0 < len(records) < 250
        assert [r["frame"] for r in records] == list(range(len(records)))
        import av

        with av.open(str(disk / "a.mp4")) as container:  # ends cleanly: no torn fragment
            decoded = sum(1 for _ in container.decode(video=0))
        assert 0 < decoded <= len(records), (decoded, len(records))
        assert not list(disk.glob(".*partial*"))
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------- reliability: damaged videos


def _damage(video: Path, out: Path, how: str) -> Path:
    data = bytearray(video.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        rng = np.random.default_rng(1)
        start, end = len(data) * 2 // 5, len(data) * 3 // 5
        data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how", ["corrupted", "truncated"])
def test_video_damaged_in_the_middle_is_read_up_to_the_damage(
    how, coco_onnx, bikes_video, tmp_path
):
    """Damaged bytes: frames before them are detected, then the rest is skipped or the run
    stops, with a clear message; never a hang (the timeout) or a traceback."""
    video = _damage(bikes_video, tmp_path / f"{how}.mp4", how)
    out = tmp_path / "d.jsonl"
    proc = run_cli(
        "detect", str(video), "--model", str(coco_onnx), "--no-show", "--json", str(out),
        timeout=180,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:  # refused up front: the file's index is gone with its end
        assert "cannot decode" in error_line(proc)
        return
    assert proc.returncode == 0, proc.stderr
    frames = [r["frame"] for r in lines_of(out)]
    assert 50 <= len(frames) < 250 or "unreadable skipped" in proc.stderr, proc.stderr
    assert frames == list(range(len(frames)))
    # The user is told the file did not play to its end.
    assert re.search(r"could not be decoded|unreadable skipped", proc.stderr), proc.stderr


# ------------------------------------------------------------------------ reliability: fuzzing

FUZZ_CHILD = Path(__file__).with_name("fuzz_child.py")


def run_fuzz(kind: str, original: Path, tmp_path: Path, cases: int = 200, budget: float = 240):
    """A seeded mutation loop in a child process: a segfault or hang fails the test, naming
    the case, instead of taking pytest down with it."""
    proc = subprocess.run(
        [sys.executable, str(FUZZ_CHILD), kind, str(original), str(tmp_path)]
        + [str(cases), str(budget)],
        capture_output=True,
        text=True,
        timeout=budget + 120,
    )
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0, f"rc {proc.returncode} at {last}: {proc.stdout[-3000:]}"
    counts = json.loads(last[0].removeprefix("RESULT "))
    print(kind, counts)  # shown with -s: how many cases loaded and how many were refused
    assert sum(counts.values()) == cases, counts  # all cases ran within the budget
    return counts


@pytest.fixture(scope="module")
def person_raw_onnx(exported) -> Path:
    return exported(PERSON, "none")


def test_fuzz_onnx(person_raw_onnx, tmp_path):
    counts = run_fuzz("onnx", person_raw_onnx, tmp_path)
    assert counts["error"] > 0  # most mutations break the protobuf and must say so


def test_fuzz_engine_sidecar(person_raw_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs pip install 'ssd-trt[rtx]' (CI has it)")
    from ssd_trt.precision.engine import BuildOptions, build_engine
    from ssd_trt.precision.trt_compat import load_trt

    engine = tmp_path / "built" / "p.engine"
    engine.parent.mkdir()
    options = BuildOptions(compute_capability="sm89")
    build_engine(person_raw_onnx, engine, options, trt_api=load_trt("rtx"))
    counts = run_fuzz("sidecar", Path(f"{engine}.json"), tmp_path)
    assert counts["error"] > 0 and counts["ok"] > 0


def test_fuzz_calibration_cache(person_raw_onnx, calib_dir, tmp_path):
    from ssd_trt.store import ArtifactStore, Calibration

    store = ArtifactStore(tmp_path / "cache")
    calibration = Calibration(images=str(calib_dir), count=8, batch=8)
    store.prepared(person_raw_onnx, "int8", calibration, out_dir=tmp_path / "prepared")
    (cache,) = (tmp_path / "prepared").glob("*.calib.json")
    counts = run_fuzz("calib", cache, tmp_path)
    assert counts["refused"] > 0  # mutations that break the JSON are refused, never a crash


def test_errno_names_are_what_the_user_reads():
    from ssd_trt.video.outputs import write_failed

    err = write_failed(Path("a.mp4"), 7, OSError(errno.ENOSPC, "No space left on device"))
    assert str(err).startswith("writing a.mp4 stopped after 7 frames: no space left on the device")
    assert "\n" not in str(err)


# ------------------------------------------------------------------- --loop (the soak's source)


def test_loop_replays_a_file_and_numbers_frames_on(coco_onnx, bikes_video, tmp_path):
    out = tmp_path / "d.jsonl"
    proc = run_cli(
        "detect", str(bikes_video), "--model", str(coco_onnx), "--no-show", "--loop",
        "--max-frames", "300", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = lines_of(out)
    assert [r["frame"] for r in records] == list(range(300))
    stamps = [r["timestamp"] for r in records]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))  # media time goes on
    assert records[250]["detections"] == records[0]["detections"]  # the second pass = the first
    assert "stopped by --max-frames" in proc.stderr
