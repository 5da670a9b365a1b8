""".mp4 output is H.264 that decodes and plays in a browser (issue 10)."""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import optional, run_cli

cv2 = optional("cv2", "video")


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
