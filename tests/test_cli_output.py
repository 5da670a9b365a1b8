"""What the CLI prints: results, summaries, progress, and no TensorFlow noise unless -v
(issue 10)."""

from __future__ import annotations

import re

import pytest
from conftest import PERSON, run_cli

NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "I0000")


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
