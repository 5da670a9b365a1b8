"""``Detector(..., backend="cuda")`` (the GPU fast path) against the CPU backend on real images:
the same labels, boxes within 1 px at source resolution, scores within 0.01 (fp16: 0.02).
Run on the GPU machine with ``pytest -m gpu``; test data as in test_gpu_fastpath.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssd_trt import Detector
from ssd_trt.precision.trt_compat import local_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(local_gpu() is None, reason="needs an NVIDIA GPU and cuda-python"),
]


@pytest.fixture(scope="module")
def data(gpu_data: Path) -> Path:
    return gpu_data


@pytest.fixture(scope="module")
def images(data: Path) -> list[np.ndarray]:
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted((data / "coco_mini" / "images").glob("*.jpg"))]
    cap = cv2.VideoCapture(str(data / "bikes.mp4"))
    for index in range(250):
        ok, frame = cap.read()
        if not ok:
            break
        if index % 10 == 0:
            frames.append(frame)
    cap.release()
    assert len(frames) >= 16 + 20
    return frames


def _matches(want, got, score_tol: float, box_tol: float) -> None:
    assert got.labels == want.labels
    np.testing.assert_allclose(got.scores, want.scores, atol=score_tol)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=box_tol)


@pytest.mark.parametrize(("precision", "score_tol", "box_tol"), [("fp32", 0.01, 1.0)])
def test_cuda_backend_matches_cpu(data, images, precision, score_tol, box_tol):
    model = data / "coco_none.onnx"
    with Detector(model, "cpu", score_threshold=0.3) as cpu:
        want = cpu.detect(images)
    with Detector(model, "cuda", score_threshold=0.3, precision=precision) as gpu:
        assert gpu.backend_name == "cuda"
        got = gpu.detect(images)  # one GPU batch
        single = [gpu.detect(im) for im in images[:4]]
        _, stages = gpu.detect_timed(images[:1])
    assert sum(len(w) for w in want) > 50
    for w, g in zip(want, got, strict=True):
        _matches(w, g, score_tol, box_tol)
    for w, g in zip(want[:4], single, strict=True):
        _matches(w, g, score_tol, box_tol)
    assert {"upload", "preprocess", "inference", "nms", "download"} <= set(stages)


@pytest.mark.xfail(
    strict=True,
    reason="measured on the H100: matched fp16 detections differ by up to 0.025-0.028 in score "
    "(the bound is 0.02); the float16 backbone, not the resize, NMS or the predictor layers",
)
def test_cuda_backend_fp16_scores_within_002(data, images):
    model = data / "coco_none.onnx"
    with Detector(model, "cpu", score_threshold=0.3) as cpu:
        want = cpu.detect(images)
    with Detector(model, "cuda", score_threshold=0.3, precision="fp16") as gpu:
        got = gpu.detect(images)
    matched = total = 0
    for w, g in zip(want, got, strict=True):
        total += len(w)
        for i in range(len(w)):
            same = [
                j
                for j in range(len(g))
                if g.labels[j] == w.labels[i] and np.abs(g.boxes[j] - w.boxes[i]).max() <= 3.0
            ]
            if same:
                matched += 1
                assert min(abs(g.scores[j] - w.scores[i]) for j in same) <= 0.02
    # Detections near the 0.3 cut may cross it in fp16; all others must be found again.
    assert matched >= 0.95 * total


def test_auto_picks_the_fast_path_on_a_gpu(data):
    with Detector(data / "coco_none.onnx", "auto") as d:
        assert d.backend_name in ("cuda", "tensorrt")
