"""The runtime seam: every backend a FrameDetector (submit/collect -> DetectionBatch), the
host stages composed once, the Detector on top, and bench measuring through it. Real models,
real ONNX Runtime, real photos and video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import read_frames

from ssd_trt import Detector
from ssd_trt.batching import HOST_MAX_BATCH
from ssd_trt.cli.args import build_parser
from ssd_trt.cli.verbs import _detector_factory
from ssd_trt.contract import DETECTION_OUTPUTS
from ssd_trt.detection_batch import HOST_STAGES, STAGES, DetectionBatch
from ssd_trt.errors import SsdTrtError, first_line
from ssd_trt.nms import NmsSettings, batched_nms
from ssd_trt.quality import bench
from ssd_trt.runtime.host import HostStages
from ssd_trt.runtime.ort import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def photos(coco_mini) -> list[np.ndarray]:
    paths = sorted((coco_mini / "images").glob("*.jpg"))[:6]
    return [cv2.imread(str(p)) for p in paths]


def test_detection_batch_owns_the_four_output_names(raw_onnx, photos):
    assert DETECTION_OUTPUTS is DetectionBatch.NAMES
    with Detector(raw_onnx, "cpu", threads=1) as d:
        raw = d.infer(d.preprocess(photos[:2]))
    found = batched_nms(raw["boxes"], raw["scores"], NmsSettings())
    assert isinstance(found, DetectionBatch) and found.images == 2
    # It reads like the graph's output dict, so code written against the names keeps working.
    assert list(found) == list(DETECTION_OUTPUTS) and dict(found).keys() == set(found.keys())
    assert found["detection_boxes"] is found.detection_boxes
    with pytest.raises(KeyError):
        found["boxes"]
    both = DetectionBatch.concat([found, found])
    assert both.images == 4 and both.detection_scores.shape == (4, 100)
    cut = found.cut(3)
    assert (cut.num_detections <= 3).all() and (cut.num_detections > 0).all()


def test_detect_is_collect_of_submit_and_the_host_stages_composed(graph_onnx, photos):
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.3) as d:
        assert d.has_host_stages and not d.supports_submit
        direct = d.detect(photos)
        got, stages = d.collect(d.submit(photos))
        by_stage = d.postprocess(
            d.nms(d.infer(d.preprocess(photos))), [p.shape[:2] for p in photos]
        )
    assert set(stages) == {*HOST_STAGES, "postprocess"} and set(stages) <= set(STAGES)
    assert sum(len(x) for x in direct) > 5
    for a, b, c in zip(direct, got, by_stage, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)
        assert a.labels == b.labels == c.labels


def test_host_stages_are_one_frame_detector(raw_onnx, photos):
    """The --nms none network behind the seam: preprocess, network, the project's NMS."""
    network = OnnxRuntimeBackend(raw_onnx, "cpu", threads=1)
    with HostStages(network, network.info.nms_settings, None, max_batch=4) as host:
        assert not host.queues and host.name == "cpu" and host.max_batch == 4
        first = host.submit(photos[:3], bgr=True)
        second = host.submit(photos[3:], bgr=True)  # two handles: each keeps its own result
        a, b = host.collect(first), host.collect(second)
        assert set(host.stage_ms) == set(HOST_STAGES)
        want = host.detect(photos, bgr=True)
    halves = DetectionBatch.concat([a, b])
    np.testing.assert_array_equal(halves.num_detections, want.num_detections)
    np.testing.assert_allclose(halves.detection_boxes, want.detection_boxes, atol=1e-4)


def test_max_batch_defaults_per_backend_and_is_checked(graph_onnx):
    with Detector(graph_onnx, "cpu", threads=1) as d:
        assert d.max_batch == HOST_MAX_BATCH  # resolved once the backend is known
    with Detector(graph_onnx, "cpu", threads=1, max_batch=3) as d:
        assert d.max_batch == 3
    with pytest.raises(SsdTrtError, match="max_batch 0 must be a whole number"):
        Detector(graph_onnx, "cpu", max_batch=0)


@pytest.mark.parametrize("verb", ["detect", "webcam"])
def test_max_batch_flag_reaches_the_detector(verb, graph_onnx, model_cache):
    args = build_parser().parse_args(
        [
            verb,
            "--model",
            str(graph_onnx),
            "--backend",
            "cpu",
            "--max-batch",
            "3",
            "--cache-dir",
            str(model_cache),
        ]  # fmt: skip
    )
    with _detector_factory(args)() as d:
        assert d.max_batch == 3


def test_first_line_of_an_exception():
    assert first_line(ValueError("bad thing\nsecond line")) == "bad thing"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(OSError("  x" * 200), limit=10) == "x  x  x  x"


def test_backends_side_by_side_through_the_seam(graph_onnx, bikes_video, tmp_path):
    """What 'bench --backend cuda' does with the GPU rows, here with CPU rows: every row
    measured alike, named by what it runs, in one report with a video run."""
    frames = read_frames(bikes_video, limit=4)
    rows = (
        bench.Row("onnxruntime-cpu fp32, NMS in graph", "cpu", "fp32", reference=True),
        bench.Row("onnxruntime-cpu fp16, NMS in graph", "cpu", "fp16", batched=False),
    )
    report = bench.compare_backends(
        str(graph_onnx), frames, video=str(bikes_video), rows=rows, batch_sizes=(1, 2),
        iterations=3, cache_dir=str(tmp_path), max_frames=8, needs="cpu",
    )  # fmt: skip
    data = json.loads(json.dumps(report.to_json()))
    assert [r["label"] for r in data["rows"]] == [r.label for r in rows]
    ref, fp16 = data["rows"]
    assert ref["error"] is None and ref["p50_ms"] > 0 and set(ref["images_per_s"]) == {"1", "2"}
    assert ref["speedup_vs_reference"] == 1.0 and fp16["images_per_s"] == {}
    assert set(ref["stages_ms"]) == {*HOST_STAGES, "postprocess"}
    assert data["video"]["frames"] == 8 and data["video"]["limited_by"] in ("decoding", "detection")
    table = report.table()
    assert "onnxruntime-cpu fp32, NMS in graph" in table and "b2 img/s" in table
