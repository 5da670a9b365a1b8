"""FP16 and INT8 (Q/DQ) models: structure, accuracy on real COCO images, calibration cache,
TensorRT-RTX builds of every precision, and the TensorRT runtime's pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import iou
from conftest import run_cli as cli

from ssd_trt import Detector, SsdTrtError
from ssd_trt.model.export import POST_PREFIX
from ssd_trt.precision.quantize import CalibrationCache, calibration_key, prepare, to_fp16, to_int8
from ssd_trt.quality.evaluate import EVAL_SCORE_THRESHOLD, coco_map, load_annotations
from ssd_trt.runtime.tensorrt import GraphPolicy, TensorSpec, check_batch, plan_buffers

MODELS = ("ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person")


@pytest.fixture(scope="module")
def variants(exported, calib_dir, tmp_path_factory):
    """(model, precision) -> ONNX path, made once per module."""
    out = tmp_path_factory.mktemp("prepared")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, precision: str, nms: str = "onnx") -> Path:
        if (name, precision, nms) not in done:
            done[name, precision, nms] = prepare(
                exported(name, nms), precision, out, calib_images=str(calib_dir)
            )
        return done[name, precision, nms]

    return get


# ---------------------------------------------------------------------------------- structure


def test_fp16_keeps_io_decoding_and_nms_float32(variants):
    model = onnx.load(str(variants(MODELS[0], "fp16")))
    g = model.graph
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert g.input[0].type.tensor_type.elem_type == f32
    assert g.output[1].type.tensor_type.elem_type == f32  # detection_boxes
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *g.input)}
    for t in g.initializer:
        types[t.name] = t.data_type
    post = [n for n in g.node if n.name.startswith(POST_PREFIX)]
    assert any(n.op_type == "NonMaxSuppression" for n in post)
    assert any(n.op_type == "TopK" for n in post) and any(n.op_type == "Exp" for n in post)
    for node in post:
        for name in (*node.input, *node.output):
            assert types.get(name) != f16, f"{node.op_type} {name} is float16"
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.input[1]) == f16 for n in convs)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ssd_trt.precision"] == "fp16"


def test_int8_qdq_only_on_conv_inputs_symmetric_per_channel(variants):
    model = onnx.load(str(variants(MODELS[0], "int8")))
    g = model.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) > 100
    for dq in dqs:
        users = consumers[dq.output[0]]
        assert all(u.op_type == "Conv" and not u.name.startswith(POST_PREFIX) for u in users)
        zero_point = inits[dq.input[2]]
        assert not zero_point.any(), "zero points must be 0 (symmetric)"
        if dq.input[0] in inits:  # weights: int8, one scale per output channel
            weight = inits[dq.input[0]]
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
            assert inits[dq.input[1]].shape == (weight.shape[0],)
        else:  # activations: one scale
            assert inits[dq.input[1]].shape == ()
    for node in g.node:
        if node.op_type == "QuantizeLinear":
            assert inits[node.input[2]].dtype == np.int8
    assert not any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.name.startswith(POST_PREFIX)
        for n in g.node
    )
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert all(
        any(p.op_type == "DequantizeLinear" and p.output[0] == n.input[0] for p in dqs)
        for n in convs
    )


# ----------------------------------------------------------------------------------- accuracy


@pytest.fixture(scope="module")
def coco_results(variants, coco_mini):
    coco = load_annotations(coco_mini / "instances_train2017_small.json")
    results, detections = {}, {}
    images = [cv2.imread(str(p)) for p in sorted((coco_mini / "images").glob("*.jpg"))]
    for precision in ("fp32", "fp16", "int8"):
        with Detector(
            variants(MODELS[0], precision), "cpu", score_threshold=EVAL_SCORE_THRESHOLD
        ) as d:
            results[precision] = coco_map(coco, coco_mini / "images", d.detect, d.info.labels)
            detections[precision] = d.detect(images)
    return results, detections


def test_fp16_and_int8_map_close_to_fp32(coco_results):
    results, _ = coco_results
    ap = {p: r.metrics["AP"] for p, r in results.items()}
    print("COCO AP on coco_mini:", {p: round(v, 4) for p, v in ap.items()})
    assert ap["fp32"] > 0.1
    assert abs(ap["fp16"] - ap["fp32"]) <= 0.005, ap
    assert abs(ap["int8"] - ap["fp32"]) <= 0.02, ap


def test_fp16_and_int8_detections_agree_with_fp32(coco_results):
    _, dets = coco_results
    for precision in ("fp16", "int8"):
        matched = total = 0
        for ref, other in zip(dets["fp32"], dets[precision], strict=True):
            # Every confident FP32 detection is found again, allowing some score drift.
            other = other.filter(min_score=0.3)
            for d in ref.filter(min_score=0.5):
                total += 1
                matched += any(o.class_id == d.class_id and iou(o.box, d.box) >= 0.5 for o in other)
        assert total >= 20 and matched / total >= 0.9, (precision, matched, total)


# -------------------------------------------------------------------------- calibration cache


def test_calibration_cache_reused_and_invalidated(exported, calib_dir, tmp_path):
    src = exported(MODELS[1])
    cache = tmp_path / "person.calib.json"
    _, reused = to_int8(src, tmp_path / "a.onnx", str(calib_dir), cache_path=cache)
    assert not reused and CalibrationCache.load(cache).images == 50
    # Reused without any images at all.
    _, reused = to_int8(src, tmp_path / "b.onnx", None, cache_path=cache)
    assert reused
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    # Changed preprocessing (the model's input scaling) -> a different key -> recalibration.
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "ssd_trt.input_scale":
            prop.value = repr(1 / 127.5)
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    from ssd_trt.contract import ModelInfo

    meta = {p.key: p.value for p in model.metadata_props}
    key = calibration_key(changed.read_bytes(), ModelInfo.from_metadata(meta, "x").preprocess)
    assert key != CalibrationCache.load(cache).key
    with pytest.raises(SsdTrtError, match="--calib-images"):
        to_int8(changed, tmp_path / "c.onnx", None, cache_path=cache)


def test_already_converted_models_are_refused(variants, tmp_path):
    with pytest.raises(SsdTrtError, match="already fp16"):
        to_fp16(variants(MODELS[1], "fp16"), tmp_path / "x.onnx")
    with pytest.raises(SsdTrtError, match="already int8"):
        to_int8(variants(MODELS[1], "int8"), tmp_path / "y.onnx", None)


# ------------------------------------------------------------------ TensorRT-RTX engine builds


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cc", ["sm86", "sm89"])
def test_rtx_builds_every_precision(name, cc, exported, calib_dir, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    src = exported(name, "none")
    for flags in ([], ["--fp16"], ["--int8", "--calib-images", str(calib_dir)]):
        engine = tmp_path / f"{name}-{cc}-{flags[0][2:] if flags else 'fp32'}.engine"
        proc = cli(
            "build",
            str(src),
            "-o",
            str(engine),
            "--compute-capability",
            cc,
            "--trt",
            "tensorrt-rtx",
            "--max-batch",
            "4",
            *flags,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        meta = json.loads(Path(f"{engine}.json").read_text())
        assert engine.stat().st_size == meta["engine_bytes"] > 1_000_000
        assert meta["compute_capability"] == cc and meta["trt_flavour"] == "tensorrt-rtx"
        assert meta["precision"] == (flags[0][2:] if flags else "fp32")
        assert meta["input_profile"]["max"] == [4, 3, 300, 300]
        assert json.loads(meta["onnx_metadata"]["ssd_trt.labels"])["1"] == "person"


def test_second_int8_build_skips_calibration(exported, calib_dir, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    src = exported(MODELS[1], "none")
    args = [
        "build",
        str(src),
        "--int8",
        "--calib-images",
        str(calib_dir),
        "--trt",
        "tensorrt-rtx",
        "--compute-capability",
        "sm89",
        "--calib-cache",
        str(tmp_path / "c.json"),
    ]
    first = cli(*args, "-o", str(tmp_path / "a.engine"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "calibrating on" in first.stderr
    second = cli(*args, "-o", str(tmp_path / "b.engine"))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "skipping calibration" in second.stderr and "calibrating on" not in second.stderr


def test_rtx_refuses_graph_with_nms(exported, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    engine = tmp_path / "x.engine"
    proc = cli(
        "build",
        str(exported(MODELS[1])),
        "-o",
        str(engine),
        "--trt",
        "tensorrt-rtx",
        "--compute-capability",
        "sm89",
    )
    assert proc.returncode == 2 and "--nms none" in proc.stderr
    assert not engine.exists()


# --------------------------------------------------------- TensorRT runtime: the testable parts


def test_plan_buffers_sizes_for_the_profile_max_batch():
    specs = [
        TensorSpec("images", True, np.dtype(np.float32), (-1, 3, 300, 300)),
        TensorSpec("num_detections", False, np.dtype(np.int32), (-1, 1)),
        TensorSpec("detection_boxes", False, np.dtype(np.float32), (-1, 100, 4)),
        TensorSpec("raw_nms", False, np.dtype(np.int64), (-1, -1, 3)),
    ]
    plan = plan_buffers(specs, max_batch=8)
    assert plan["images"].shape == (8, 3, 300, 300) and plan["images"].nbytes == 8 * 270000 * 4
    assert plan["num_detections"].nbytes == 32 and not plan["detection_boxes"].data_dependent
    assert plan["detection_boxes"].nbytes == 8 * 100 * 4 * 4
    assert plan["raw_nms"].data_dependent  # goes through an output allocator
    with pytest.raises(SsdTrtError, match="dynamic dims"):
        plan_buffers([TensorSpec("images", True, np.dtype(np.float32), (-1, 3, -1, -1))], 4)


def test_check_batch_against_profile():
    profile = ((1, 3, 300, 300), (4, 3, 300, 300), (8, 3, 300, 300))
    check_batch((8, 3, 300, 300), profile)
    with pytest.raises(SsdTrtError, match="outside the engine's profile"):
        check_batch((9, 3, 300, 300), profile)
    with pytest.raises(SsdTrtError, match="image size"):
        check_batch((1, 3, 320, 320), profile)


def test_graph_policy_captures_replays_and_falls_back():
    calls: list[str] = []
    fail = {"capture": False}

    def capture():
        calls.append("capture")
        if fail["capture"]:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported")
        return object()

    policy = GraphPolicy(
        lambda: calls.append("enqueue"),
        capture,
        lambda g: calls.append("launch"),
        lambda g: calls.append("release"),
    )
    assert policy.run((1, 3, 300, 300)) == "captured"
    assert policy.run((1, 3, 300, 300)) == "graph"
    assert policy.run((4, 3, 300, 300)) == "captured"  # new shape: release, run, recapture
    assert calls == ["enqueue", "capture", "launch", "release", "enqueue", "capture"]
    fail["capture"] = True
    assert policy.run((2, 3, 300, 300)) == "direct"
    assert not policy.enabled and "StreamCapture" in policy.failure
    calls.clear()
    assert policy.run((2, 3, 300, 300)) == "direct" and calls == ["enqueue"]
