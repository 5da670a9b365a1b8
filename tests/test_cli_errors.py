"""Bad input to the CLI: one line, exit 2, before any long work (issue 10)."""

from __future__ import annotations

import time

import pytest
from conftest import PERSON, error_line, run_cli


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


@pytest.mark.fast
def test_webcam_help_has_no_file_options():
    proc = run_cli("webcam", "--help")
    assert proc.returncode == 0 and "--realtime" not in proc.stdout and "--loop" not in proc.stdout


@pytest.mark.fast
def test_empty_pb_is_rejected_before_importing_tensorflow(tmp_path):
    empty = tmp_path / "frozen_inference_graph.pb"
    empty.write_bytes(b"")
    start = time.monotonic()
    proc = run_cli("export", str(empty), "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and "is empty (0 bytes)" in error_line(proc)
    assert time.monotonic() - start < 8, "TensorFlow was imported (10+ s) for an empty file"
