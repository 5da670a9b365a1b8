"""``ssd-trt compare``: FP16/INT8 variants against FP32, on real models and real COCO photos."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import run_cli as cli

from ssd_trt.detections import Detections
from ssd_trt.quality.report import agreement, match

MODELS = ("ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person")
ANNOTATIONS = "instances_train2017_small.json"


@pytest.fixture
def run_compare(exported, coco_mini, model_cache, tmp_path):
    """Run the verb on the 16 coco_mini photos (both models see people there); returns
    (process, parsed JSON or None)."""

    def run(name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        out = tmp_path / f"{name}.json"
        proc = cli(
            "compare",
            str(exported(name)),
            "--images",
            str(coco_mini / "images"),
            "--cache-dir",
            str(model_cache),
            "--json",
            str(out),
            *extra,
        )
        print(proc.stdout)
        return proc, json.loads(out.read_text()) if out.exists() else None

    return run


def assert_sane(variant: dict) -> None:
    a = variant["agreement"]
    assert (
        a["matched"] + a["lost"] == a["reference"] and a["matched"] + a["gained"] == a["detections"]
    )
    assert 0.0 <= a["match_rate"] <= 1.0
    assert a["matched"] == 0 or 0.5 <= a["mean_iou"] <= 1.0
    assert 0.0 <= a["mean_score_drift"] <= a["max_score_drift"] <= 1.0
    tensors = variant["tensors"]
    assert set(tensors) == {
        "num_detections",
        "detection_boxes",
        "detection_scores",
        "detection_classes",
    }
    for t in tensors.values():
        assert 0.0 <= t["median_abs"] <= t["max_abs"] and 0.0 <= t["mean_abs"] <= t["max_abs"]
        assert not t["gating"]  # no tolerance given: reported, not gating
    assert tensors["detection_scores"]["max_abs"] <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_fp16_passes(name, run_compare, coco_mini):
    extra = []
    if name == MODELS[0]:  # COCO labels: the mAP-drop check applies too
        extra = ["--coco-annotations", str(coco_mini / ANNOTATIONS)]
    proc, data = run_compare(name, "--precisions", "fp32,fp16", *extra)
    # The person model finds only ~14 people in these 16 photos: too few to judge a match
    # rate (one lost box moves it by 0.07), so compare says so instead of PASS or FAIL.
    judgeable = data["variants"]["fp16"]["agreement"]["reference"] >= 30
    assert proc.returncode == (0 if judgeable else 2), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == ("PASS" if judgeable else "INCONCLUSIVE")
    assert judgeable or "too few detections to judge fp16" in proc.stdout
    assert "engines not compared" in proc.stdout  # no engine runs on this machine
    fp16 = data["variants"]["fp16"]
    assert_sane(fp16)
    a = fp16["agreement"]
    assert a["reference"] >= 10 and a["match_rate"] >= 0.9 and a["mean_score_drift"] <= 0.02
    assert fp16["tensors"]["num_detections"]["max_abs"] == 0
    assert data["passed"] and data["images"] == 16
    assert data["verdict"] == ("PASS" if judgeable else "INCONCLUSIVE")
    if extra:
        checks = {c["name"]: c for c in fp16["checks"]}
        assert checks["mAP drop"]["passed"] and data["reference_coco"]["AP"] > 0.1


@pytest.mark.parametrize("name", MODELS)
def test_int8_drift_is_reported(name, run_compare, calib_dir):
    proc, data = run_compare(
        name, "--precisions", "fp32,int8", "--calib-images", str(calib_dir), "-q"
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    int8 = data["variants"]["int8"]
    assert_sane(int8)
    print(f"{name} int8 vs fp32:", json.dumps(int8["agreement"]))
    # Quantization moves scores, but the model still finds most of the same objects.
    assert int8["agreement"]["matched"] >= 0.5 * int8["agreement"]["reference"] > 0
    assert int8["tensors"]["detection_scores"]["mean_abs"] > 0
    verdict = data["verdict"]
    assert proc.stdout.strip().splitlines()[-1] == verdict
    assert proc.returncode == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 2}[verdict]
    assert data["passed"] == all(c["passed"] for c in int8["checks"])


def test_person_int8_passes_on_its_own_domain(exported, vtest_video, calib_dir, tmp_path):
    """The person model's INT8 "FAIL" on 16 COCO photos was 14 detections judged; on 48 frames
    of pedestrians (vtest.avi, not the calibration images) it passes the default tolerances."""
    out = tmp_path / "person.json"
    proc = cli(
        "compare", str(exported(MODELS[1])), "--precisions", "fp32,int8",
        "--images", str(vtest_video), "--max-images", "48",
        "--calib-images", str(calib_dir), "--json", str(out), "-q",
    )  # fmt: skip
    data = json.loads(out.read_text())
    int8 = data["variants"]["int8"]
    print(json.dumps(int8["agreement"]))
    assert int8["agreement"]["reference"] >= 100
    assert proc.returncode == 0 and data["verdict"] == "PASS", proc.stdout[-3000:]


def test_impossible_tolerances_fail(run_compare):
    proc, data = run_compare(
        MODELS[1],
        "--precisions",
        "fp32,fp16",
        "--min-match",
        "1.01",
        "--max-drift",
        "fp16=0",
        "--atol",
        "detection_boxes=0",
        "--rtol",
        "detection_boxes=0",
        "--error-stat",
        "max",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "FAIL"
    checks = {c["name"]: c["passed"] for c in data["variants"]["fp16"]["checks"]}
    assert checks == {
        "detection_boxes within atol/rtol": False,
        "match rate": False,
        "mean score drift": False,
    }
    assert data["variants"]["fp16"]["tensors"]["detection_boxes"]["gating"]


def _one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssd-trt: error:") and text in lines[0], lines


def test_bad_input_is_one_line(exported, coco_mini, tmp_path):
    model = str(exported(MODELS[1]))
    _one_line_error(cli("compare", model, "--images", str(tmp_path / "nope")), "does not exist")
    _one_line_error(cli("compare", model), "pass --images DIR")
    _one_line_error(cli("compare", model, "--images", str(tmp_path)), "no images")
    images = str(coco_mini / "images")
    proc = cli("compare", model, "--images", images, "--precisions", "fp32,int8")
    _one_line_error(proc, "--calib-images")
    _one_line_error(
        cli("compare", model, "--images", images, "--max-map-drop", "0.01"), "--coco-annotations"
    )


def _dets(boxes, scores, classes) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int32),
        [str(c) for c in classes],
    )


@pytest.mark.fast
def test_matching_is_greedy_by_score_within_class():
    ref = _dets([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 1, 2])
    # One candidate for the two overlapping class-1 boxes: the higher-scoring one takes it.
    other = _dets([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0.85, 0.6, 0.5], [1, 3, 2])
    assert match(ref, other) == [(0, 0, 1.0)]
    a = agreement([ref], [other])
    assert (a.matched, a.lost, a.gained) == (1, 2, 2)
    assert a.match_rate == pytest.approx(1 / 5) and a.mean_score_drift == pytest.approx(0.05)
