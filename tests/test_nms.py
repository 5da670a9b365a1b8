"""The NMS candidate cap, in the graph and in the project's NMS, on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import optional
from test_export import CONFIG, assert_same_detections, run_onnx

from ssd_trt.model.export import ExportOptions, export
from ssd_trt.nms import NmsSettings, batched_nms, top_candidates
from ssd_trt.preprocess import preprocess

onnx = optional("onnx", "export")

COCO = "ssdlite_mobilenet_v2_coco"


@pytest.fixture(scope="module")
def coco_batch(coco_mini: Path) -> np.ndarray:
    import cv2

    photos = [cv2.imread(str(p)) for p in sorted((coco_mini / "images").glob("*.jpg"))]
    return preprocess(photos, CONFIG)


@pytest.fixture(scope="module")
def export_coco(registry_graphs, tmp_path_factory):
    """COCO model exports with non-default options, each once per module."""
    out_dir = tmp_path_factory.mktemp("nms_onnx")
    done: dict[ExportOptions, Path] = {}

    def get(options: ExportOptions) -> Path:
        if options not in done:
            path = out_dir / f"coco_{len(done)}.onnx"
            export(registry_graphs[COCO], path, options)
            done[options] = path
        return done[options]

    return get


@pytest.mark.fast
def test_top_candidates_keeps_best_and_breaks_ties_by_lower_index():
    flat = np.array([0.5, 0.9, 0.0, 0.5, 0.7, 0.5, 1e-9], np.float32)
    # Threshold is strict: 0.0 and 1e-9 are never candidates.
    assert top_candidates(flat, 1e-8, 0).tolist() == [0, 1, 3, 4, 5]
    assert top_candidates(flat, 1e-8, 10).tolist() == [0, 1, 3, 4, 5]
    assert top_candidates(flat, 1e-8, 3).tolist() == [0, 1, 4]  # ties at 0.5: index 0 wins
    assert top_candidates(flat, 1e-8, 4).tolist() == [0, 1, 3, 4]
    assert top_candidates(flat, 0.5, 1).tolist() == [1]


def test_default_graph_is_one_nms_over_capped_candidates(exported):
    model = onnx.load(str(exported(COCO)))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    (nms,) = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    topk = [int(inits[n.input[1]][0]) for n in model.graph.node if n.op_type == "TopK"]
    assert sorted(topk) == [100, 1000]  # candidates, then the output's K
    assert int(inits[nms.input[2]][0]) == 100  # per class 100 >= K 100: NMS may stop at K
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ssd_trt.nms_settings"])["max_candidates"] == 1000


def test_cap_changes_no_confident_detection(export_coco, exported, coco_batch):
    """Top-1000 candidates vs every candidate (the per-class graph), in the graph and in numpy."""
    capped = run_onnx(exported(COCO), coco_batch)
    uncapped = run_onnx(export_coco(ExportOptions(labels="coco", max_candidates=0)), coco_batch)
    assert assert_same_detections(capped, uncapped, min_score=0.3, tol=1e-5) >= 30
    # On these photos the cap changes nothing at all, down to the 1e-8 threshold.
    np.testing.assert_array_equal(capped["num_detections"], uncapped["num_detections"])
    np.testing.assert_allclose(capped["detection_scores"], uncapped["detection_scores"], atol=1e-6)

    raw = run_onnx(exported(COCO, "none"), coco_batch)
    ours = batched_nms(raw["boxes"], raw["scores"], NmsSettings())
    ours_all = batched_nms(raw["boxes"], raw["scores"], NmsSettings(max_candidates=0))
    assert assert_same_detections(ours, ours_all, min_score=0.3, tol=1e-6) >= 30
    assert assert_same_detections(ours, capped, min_score=0.05, tol=1e-5) > 0
    np.testing.assert_array_equal(ours["num_detections"], capped["num_detections"])


def test_per_class_limit_below_k_holds_in_graph_and_numpy(export_coco, exported, coco_batch):
    """The graph's rank-within-class filter against the project NMS's per-class count."""
    path = export_coco(ExportOptions(labels="coco", max_per_class=3, max_candidates=300))
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    settings = NmsSettings(**json.loads(meta["ssd_trt.nms_settings"]))
    assert (settings.max_per_class, settings.max_total, settings.max_candidates) == (3, 100, 300)
    graph = run_onnx(path, coco_batch)
    for i in range(len(coco_batch)):
        n = int(graph["num_detections"][i, 0])
        assert 0 < n < 100  # the limit binds: 3 per class of the few classes in 300 candidates
        assert np.bincount(graph["detection_classes"][i, :n]).max() <= 3
    raw = run_onnx(exported(COCO, "none"), coco_batch)
    ours = batched_nms(raw["boxes"], raw["scores"], settings)
    np.testing.assert_array_equal(ours["num_detections"], graph["num_detections"])
    assert assert_same_detections(ours, graph, min_score=0.0, tol=1e-5) > 0


def test_cap_below_k_is_raised_to_k(export_coco, exported, coco_batch):
    """TopK needs at least K candidates for static shapes; both NMS raise the cap to K."""
    options = ExportOptions(labels="coco", max_detections=20, max_candidates=5)
    out = run_onnx(export_coco(options), coco_batch[:4])
    assert out["detection_scores"].shape == (4, 20)
    raw = run_onnx(exported(COCO, "none"), coco_batch[:4])
    ours = batched_nms(raw["boxes"], raw["scores"], NmsSettings(max_total=20, max_candidates=5))
    np.testing.assert_array_equal(ours["num_detections"], out["num_detections"])
    # 20 candidates are mostly overlapping boxes of the best objects: few survive NMS.
    assert (out["num_detections"] > 0).all() and (out["num_detections"] < 20).all()
    assert assert_same_detections(ours, out, min_score=0.0, tol=1e-5) > 0
