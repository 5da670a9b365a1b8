"""COCO mAP: the exported ONNX against the original TF graph, and the ``ssd-trt eval`` verb."""

from __future__ import annotations

import json
import subprocess

from conftest import run_cli as cli

from ssd_trt import Detector
from ssd_trt.postprocess import to_detections
from ssd_trt.quality.evaluate import EVAL_SCORE_THRESHOLD, METRICS, coco_map, load_annotations

MODEL = "ssdlite_mobilenet_v2_coco"
ANNOTATIONS = "instances_train2017_small.json"


def test_onnx_fp32_map_equals_tensorflow_map(exported, registry_graphs, coco_mini):
    from test_export import run_tensorflow

    coco = load_annotations(coco_mini / ANNOTATIONS)
    images = coco_mini / "images"
    with Detector(exported(MODEL), "cpu", score_threshold=EVAL_SCORE_THRESHOLD) as detector:
        onnx_result = coco_map(coco, images, detector.detect, detector.info.labels)
        labels = detector.info.labels

        def detect_tf(batch: list) -> list:
            # The original graph (TF.js GraphDef + TF's combined NMS, zoo defaults) on the same
            # preprocessed input, turned into Detections the same way as the ONNX outputs.
            out = run_tensorflow(registry_graphs[MODEL], detector.preprocess(batch))
            sizes = [im.shape[:2] for im in batch]
            return to_detections(out, sizes, labels, min_score=EVAL_SCORE_THRESHOLD)

        tf_result = coco_map(coco, images, detect_tf, labels)
    print(f"\nTF   {tf_result.line()}  ({tf_result.detections} detections)")
    diff = {k: round(onnx_result.metrics[k] - tf_result.metrics[k], 5) for k in METRICS}
    print(f"ONNX {onnx_result.line()}  ({onnx_result.detections} detections); diff {diff}")
    assert onnx_result.images == tf_result.images == 16
    assert tf_result.metrics["AP"] > 0.1
    for metric in ("AP", "AP50", "AP75"):
        assert abs(onnx_result.metrics[metric] - tf_result.metrics[metric]) <= 0.005, metric


def test_eval_cli_reports_every_precision(exported, coco_mini, calib_dir, model_cache, tmp_path):
    out = tmp_path / "eval.json"
    proc = cli(
        "eval",
        str(exported(MODEL)),
        "--coco-annotations",
        str(coco_mini / ANNOTATIONS),
        "--images",
        str(coco_mini / "images"),
        "--precision",
        "fp32,fp16,int8",
        "--calib-images",
        str(calib_dir),
        "--cache-dir",
        str(model_cache),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    data = json.loads(out.read_text())
    assert list(data["precisions"]) == ["fp32", "fp16", "int8"]
    assert data["images"] == 16 and data["score_threshold"] == EVAL_SCORE_THRESHOLD
    assert "cores" in data["machine"] and "python" in data["machine"]
    ap = {}
    for precision, result in data["precisions"].items():
        assert set(result["metrics"]) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
        assert result["images"] == 16 and result["detections"] > 0
        ap[precision] = result["metrics"]["AP"]
        assert precision in proc.stdout
    assert ap["fp32"] > 0.1
    assert abs(ap["fp16"] - ap["fp32"]) <= 0.01, ap
    assert abs(ap["int8"] - ap["fp32"]) <= 0.03, ap
    assert data["precisions"]["int8"]["model_path"].endswith(".int8.onnx")


def _one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssd-trt: error:") and text in lines[0], lines


def test_eval_cli_bad_annotations_and_images(exported, coco_mini, tmp_path):
    model = str(exported(MODEL))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2')
    proc = cli("eval", model, "--coco-annotations", str(bad), "--images", str(coco_mini))
    _one_line_error(proc, "is not a COCO annotation file")
    ann = str(coco_mini / ANNOTATIONS)
    proc = cli("eval", model, "--coco-annotations", ann, "--images", str(tmp_path / "nope"))
    _one_line_error(proc, "does not exist")
    proc = cli("eval", model, "--coco-annotations", ann, "--images", str(tmp_path))
    _one_line_error(proc, "annotated images are missing")
