"""The pipeline's live path (drop the oldest frame when inference falls behind), a file played at
its own rate (--realtime, PacedSource), and the bench verb, on real video and a real model."""

from __future__ import annotations

import json
import time

import pytest
from conftest import error_line
from conftest import run_cli as cli

from ssd_trt import Detector
from ssd_trt.runtime.ort import available_providers
from ssd_trt.sources import PacedSource, open_source
from ssd_trt.video.pipeline import STAGES, Pipeline

COCO = "ssdlite_mobilenet_v2_coco"


@pytest.fixture(scope="module")
def coco_onnx(exported):
    return exported(COCO)


def test_live_source_drops_the_oldest_frames_and_keeps_order(coco_onnx, bikes_video):
    delivered = []

    class Counting(PacedSource):
        def read(self):
            frame = super().read()
            if frame is not None:
                delivered.append(frame.index)
            return frame

    seen = []
    with Detector(coco_onnx, "cpu", threads=1) as detector:
        # 250 fps is far faster than one CPU thread detects: frames must be dropped.
        source = Counting(open_source(str(bikes_video)), 250.0)
        with source:
            pipeline = Pipeline(detector, source, [], on_frame=lambda r: seen.append(r.frame.index))
            stats = pipeline.run()
    assert stats.dropped > 0 and stats.frames == len(seen) > 0
    assert stats.frames + stats.dropped == len(delivered) == 250
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # in order, none twice
    assert seen[-1] == 249  # the newest frame is never the one dropped


def test_file_source_never_drops(coco_onnx, bikes_video):
    with Detector(coco_onnx, "cpu", threads=1) as detector, open_source(str(bikes_video)) as src:
        stats = Pipeline(detector, src, [], max_frames=60).run()
    assert stats.frames == 60 and stats.dropped == 0
    assert all(stats.mean_ms(s) > 0 for s in ("decode", "preprocess", "inference", "nms"))


def test_waiting_frames_of_a_file_are_detected_together_in_order(coco_onnx, bikes_video):
    """A file's frames queue up while one CPU thread detects: they go to the detector in
    batches (at most max_batch), and come out once each, in order, equal to frame-by-frame."""
    seen: list[tuple[int, int]] = []
    with Detector(coco_onnx, "cpu", threads=1) as detector:
        with open_source(str(bikes_video)) as src:
            stats = Pipeline(
                detector,
                src,
                [],
                max_batch=6,
                max_frames=48,
                on_frame=lambda r: seen.append((r.frame.index, len(r.detections))),
            ).run()
        with open_source(str(bikes_video)) as src:
            frames = [src.read() for _ in range(48)]
        alone = [(f.index, len(detector.detect(f.image))) for f in frames]
    assert stats.frames == 48 and stats.dropped == 0
    assert 48 / 6 <= stats.batches < 48  # batched, never above max_batch
    assert seen[: len(alone)] == alone[: len(seen)]


def test_realtime_plays_a_file_at_its_frame_rate(coco_onnx, bikes_video, tmp_path):
    out = tmp_path / "rt.jsonl"
    t0 = time.monotonic()
    proc = cli(
        "detect", str(bikes_video), "--model", str(coco_onnx), "--backend", "cpu", "--realtime",
        "--max-frames", "40", "--no-show", "--json", str(out),
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [r["frame"] for r in lines]
    assert frames == sorted(frames) and len(frames) == 40
    # bikes.mp4 is 25 fps: 40 frames take at least ~1.6 s when paced, whatever the CPU.
    assert elapsed >= 1.5


def test_bench_verb_writes_every_section(coco_onnx, bikes_video, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli(
        "bench", "--model", str(coco_onnx), "--backend", "cpu", "--video", str(bikes_video),
        "--batch-sizes", "1,2", "--iterations", "3", "--max-frames", "12", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "batch" in proc.stdout and "FPS" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["batch"] for r in report["latency"]] == [1, 2]
    assert all(r["p50_ms"] > 0 and r["images_per_s"] > 0 for r in report["latency"])
    assert set(report["stages_ms"]) == set(STAGES) and report["stages_ms"]["nms"] >= 0
    assert report["video"]["sync_fps"] > 0 and report["video"]["async_fps"] > 0
    assert report["backend"] == "cpu" and report["machine"]["cores"] >= 1


@pytest.mark.fast
def test_bench_rejects_bad_batch_sizes():
    proc = cli("bench", "--batch-sizes", "0,x")
    assert proc.returncode == 2 and "--batch-sizes" in proc.stderr


@pytest.mark.skipif(
    "CUDAExecutionProvider" in available_providers(), reason="checks machines without a GPU stack"
)
def test_cuda_backend_without_gpu_names_the_extra(coco_onnx, bikes_video):
    for args in (
        ("bench", "--backend", "cuda", "--video", str(bikes_video)),
        ("detect", str(bikes_video), "--backend", "cuda", "--model", str(coco_onnx)),
    ):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert error_line(proc).endswith("pip install 'ssd-trt[gpu]'"), proc.stderr
