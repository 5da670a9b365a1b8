"""The README's Usage examples, run as written.

The shell block of the Usage section is read from README.md line by line; every line must have
an entry in ``EXPECTED`` below (so a new example without a check fails this test). Placeholder
inputs (video.mp4, photo.jpg, photos/ ...) are made from real data in a temp folder, and each
command runs there as a user would type it. Lines that cannot run here (no camera, no GPU, no
full TensorRT) still run: they must fail with the one documented line and exit code 2.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"


def usage_blocks() -> tuple[list[str], str]:
    """The commands of the Usage section's sh block (comments dropped) and its Python block."""
    text = README.read_text()
    section = text.split("\n## Usage\n", 1)[1].split("\n## ", 1)[0]
    sh = re.search(r"```sh\n(.*?)```", section, re.S)
    py = re.search(r"```python\n(.*?)```", section, re.S)
    assert sh and py, "the Usage section lost its sh or python block"
    commands = []
    for line in sh.group(1).splitlines():
        command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if command:
            commands.append(command)
    return commands, py.group(1)


@dataclass
class Expect:
    codes: tuple[int, ...] = (0,)
    check: Callable[[subprocess.CompletedProcess, Path], None] | None = None
    why: str = ""  # why a line cannot succeed here; it must then fail cleanly (exit 2, one line)
    interrupt_after_page: bool = False  # a run that lasts until Ctrl-C (--loop)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _video_outputs(proc, cwd: Path) -> None:
    assert len(_lines(cwd / "out.jsonl")) == 250
    assert (cwd / "out.mp4").stat().st_size > 100_000


def _tracked(proc, cwd: Path) -> None:
    dets = [d for r in _lines(cwd / "out.jsonl") for d in r["detections"]]
    assert dets and all("track_id" in d for d in dets)
    assert any(d["track_id"] > 0 for d in dets) and " tracks" in proc.stdout


def _photo(proc, cwd: Path) -> None:
    assert proc.stdout.startswith("photo.jpg: "), proc.stdout


def _same_size(name: str) -> Callable[[subprocess.CompletedProcess, Path], None]:
    def check(proc, cwd: Path) -> None:
        import cv2

        assert cv2.imread(str(cwd / name)).shape == cv2.imread(str(cwd / "photo.jpg")).shape

    return check


def _saved_photos(proc, cwd: Path) -> None:
    assert sorted(p.name for p in (cwd / "out").iterdir()) == sorted(
        p.name for p in (cwd / "photos").iterdir()
    )


def _file(name: str) -> Callable[[subprocess.CompletedProcess, Path], None]:
    def check(proc, cwd: Path) -> None:
        assert (cwd / name).is_file() and (cwd / name).stat().st_size > 0, proc.stderr[-2000:]

    return check


NO_TRT = "full TensorRT cannot be installed here (TensorRT-RTX has no NMS layer)"
EXPECTED: dict[str, Expect] = {
    "ssd-trt models": Expect(),
    "ssd-trt fetch ssdlite_mobilenet_v2_person": Expect(),
    "ssd-trt export ssdlite_mobilenet_v2_coco -o coco.onnx": Expect(check=_file("coco.onnx")),
    "ssd-trt export path/to/frozen_inference_graph.pb -o model.onnx --score-threshold 0.3": Expect(
        check=_file("model.onnx")
    ),
    "ssd-trt detect video.mp4 --output out.mp4 --json out.jsonl": Expect(check=_video_outputs),
    "ssd-trt detect video.mp4 --serve 127.0.0.1:8080": Expect(),
    "ssd-trt detect video.mp4 --loop --serve 127.0.0.1:8080": Expect(
        codes=(130,), interrupt_after_page=True
    ),
    "ssd-trt detect photo.jpg": Expect(check=_photo),
    "ssd-trt detect video.mp4 --iou 0.4 --max-det 20": Expect(),
    "ssd-trt detect video.mp4 --track --json out.jsonl": Expect(check=_tracked),
    "ssd-trt detect photo.jpg --output annotated.jpg": Expect(check=_same_size("annotated.jpg")),
    "ssd-trt detect photos/ --save-dir out/": Expect(check=_saved_photos),
    "ssd-trt webcam": Expect(codes=(2,), why="no camera (and no display) on this machine"),
    "SSD_TRT_TOKEN=secret ssd-trt detect 0 --serve 0.0.0.0:8080": Expect(
        codes=(2,), why="no camera here (and tests bind 127.0.0.1 only)"
    ),
    "ssd-trt build coco.onnx --fp16 -o coco_fp16.engine": Expect(codes=(2,), why=NO_TRT),
    "ssd-trt build coco.onnx --int8 --calib-images photos/ -o coco_int8.engine": Expect(
        codes=(2,), why=NO_TRT
    ),
    "ssd-trt build ssdlite_mobilenet_v2_coco --trt tensorrt-rtx "
    "--compute-capability sm89": Expect(),
    "ssd-trt compare coco.onnx --precisions fp32,fp16,int8 --images photos/ "
    "--calib-images frames/": Expect(codes=(0, 1)),  # 1: a precision beyond its tolerance
    "ssd-trt eval coco.onnx --coco-annotations ann.json --images val/ "
    "--precision fp32,fp16,int8 --calib-images frames/": Expect(),
    "ssd-trt bench --model coco.onnx --json bench.json": Expect(check=_file("bench.json")),
    "ssd-trt bench --backend cuda --json gpu.json": Expect(
        codes=(2,), why="no NVIDIA GPU here (the GPU fast path needs [gpu])"
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, registry_graphs, coco_mini, bikes_video, calib_dir) -> Path:
    """The placeholders of the examples, made from real data."""
    cwd = tmp_path_factory.mktemp("usage")
    shutil.copy(bikes_video, cwd / "video.mp4")
    images = sorted((coco_mini / "images").glob("*.jpg"))
    shutil.copy(images[0], cwd / "photo.jpg")
    shutil.copy(images[1], cwd / "street.jpg")
    shutil.copytree(coco_mini / "images", cwd / "photos")
    shutil.copytree(coco_mini / "images", cwd / "val")
    shutil.copy(coco_mini / "instances_train2017_small.json", cwd / "ann.json")
    shutil.copytree(calib_dir, cwd / "frames")
    pb = cwd / "path" / "to" / "frozen_inference_graph.pb"
    pb.parent.mkdir(parents=True)
    shutil.copy(registry_graphs["ssdlite_mobilenet_v2_person"], pb)
    return cwd


def test_every_usage_line_has_a_check():
    commands, _ = usage_blocks()
    assert sorted(commands) == sorted(EXPECTED), "README Usage and EXPECTED differ"


def _run(command: str, cwd: Path, cache: Path, expect: Expect) -> subprocess.CompletedProcess:
    # 8080 may be taken on a shared machine, and tests never bind beyond 127.0.0.1; the rest
    # is as written, a leading VAR=value included.
    port = _free_port()
    for host in ("127.0.0.1:8080", "0.0.0.0:8080"):
        command = command.replace(host, f"127.0.0.1:{port}")
    argv = shlex.split(command)
    env = {**os.environ, "SSD_TRT_CACHE": str(cache)}
    while "=" in argv[0]:
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    env.pop("DISPLAY", None)  # the examples must not need a display
    cmd = [sys.executable, "-m", "ssd_trt.cli", *argv[1:]]
    if not expect.interrupt_after_page:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "page never came up"
                time.sleep(1)
        time.sleep(3)  # a few looped frames
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(EXPECTED))
def test_usage_line_runs_as_written(command, workdir, model_cache):
    expect = EXPECTED[command]
    proc = _run(command, workdir, model_cache, expect)
    assert proc.returncode in expect.codes, (command, proc.stderr[-3000:])
    if proc.returncode == 2:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssd-trt: error:")]
        assert len(errors) == 1, proc.stderr
        assert expect.why, f"{command} failed: {errors[0]}"
    if expect.check is not None:
        expect.check(proc, workdir)


@pytest.mark.slow
def test_usage_python_example_runs(workdir, model_cache):
    _, code = usage_blocks()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env={**os.environ, "SSD_TRT_CACHE": str(model_cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the example printed no detection"
