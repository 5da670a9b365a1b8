"""FP16 and INT8 (Q/DQ) models: structure, accuracy on real COCO images, calibration cache,
TensorRT-RTX builds of every precision, and the TensorRT runtime's pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import iou, optional
from conftest import run_cli as cli

from ssd_trt import Detector, SsdTrtError
from ssd_trt.model.export import POST_PREFIX
from ssd_trt.precision.quantize import CalibrationCache, calibration_key, prepare, to_fp16, to_int8
from ssd_trt.quality.evaluate import EVAL_SCORE_THRESHOLD, coco_map, load_annotations
from ssd_trt.runtime.cuda import GraphPolicy
from ssd_trt.runtime.tensorrt import TensorSpec, check_batch, plan_buffers

cv2 = optional("cv2", "video")
onnx = optional("onnx", "export")

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


@pytest.mark.fast
def test_plan_buffers_sizes_for_the_profile_max_batch():
    # Shapes as the execution context resolves them with the input at the profile's max (8).
    specs = [
        TensorSpec("images", True, np.dtype(np.float32), (8, 3, 300, 300)),
        TensorSpec("num_detections", False, np.dtype(np.int32), (8, 1)),
        TensorSpec("detection_boxes", False, np.dtype(np.float32), (8, 100, 4)),
        TensorSpec("raw_nms", False, np.dtype(np.int64), (-1, 3)),  # NonMaxSuppression rows
    ]
    plan = plan_buffers(specs)
    assert plan["images"].shape == (8, 3, 300, 300) and plan["images"].nbytes == 8 * 270000 * 4
    assert plan["num_detections"].nbytes == 32 and not plan["detection_boxes"].data_dependent
    assert plan["detection_boxes"].nbytes == 8 * 100 * 4 * 4
    # [-1, 3]: only the first dimension is dynamic, and it is data-dependent, not the batch.
    assert plan["raw_nms"].data_dependent and not plan["images"].data_dependent
    with pytest.raises(SsdTrtError, match="dynamic dims"):
        plan_buffers([TensorSpec("images", True, np.dtype(np.float32), (4, 3, -1, -1))])


@pytest.mark.fast
def test_check_batch_against_profile():
    profile = ((1, 3, 300, 300), (4, 3, 300, 300), (8, 3, 300, 300))
    check_batch((8, 3, 300, 300), profile)
    with pytest.raises(SsdTrtError, match="outside the engine's profile"):
        check_batch((9, 3, 300, 300), profile)
    with pytest.raises(SsdTrtError, match="image size"):
        check_batch((1, 3, 320, 320), profile)


@pytest.mark.fast
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


# ------------------------------------------------------------------- INT8 for the CPU (issue 11)


def ort_optimized_ops(path: Path) -> dict[str, int]:
    """Op counts after ONNX Runtime's CPU graph optimizations: what its kernels really run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".ort-opt.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(options.optimized_model_filepath).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_cpu_int8_runs_as_qlinearconv_with_uint8_activations(exported, calib_dir, tmp_path):
    src = exported(MODELS[0])
    path = prepare(src, "int8", tmp_path, calib_images=str(calib_dir), flavour="cpu")
    assert path.name.endswith(".cpu.int8.onnx")
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[q.input[2]].dtype == np.uint8 for q in qs)
    weights = [
        inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].ndim == 4
    ]
    assert len(weights) == 88 and all(w.dtype == np.int8 for w in weights)
    # ReLU6 folds into the Conv before it (uint8 saturation clips); 59 Clips were there.
    clips = [
        n for n in model.graph.node if n.op_type == "Clip" and not n.name.startswith(POST_PREFIX)
    ]
    assert len(clips) <= 2, len(clips)
    assert not any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.name.startswith(POST_PREFIX)
        for n in model.graph.node
    )
    ops = ort_optimized_ops(path)
    assert ops.get("QLinearConv", 0) == 88 and ops.get("Conv", 0) == 0, ops
    # The TensorRT form from the same cache stays dequantize -> float Conv in ONNX Runtime.
    trt = prepare(src, "int8", tmp_path, calib_images=str(calib_dir))
    trt_ops = ort_optimized_ops(trt)
    float_convs = trt_ops.get("Conv", 0) + trt_ops.get("FusedConv", 0)
    assert float_convs >= 80 and trt_ops.get("QLinearConv", 0) <= 8, trt_ops


def test_cpu_int8_map_within_001_of_fp32(exported, calib_dir, coco_mini, tmp_path):
    coco = load_annotations(coco_mini / "instances_train2017_small.json")
    src = exported(MODELS[0])
    ap = {}
    for precision in ("fp32", "int8"):
        with Detector(
            src,
            "cpu",
            precision=precision,
            calib_images=str(calib_dir),
            cache_dir=tmp_path,
            score_threshold=EVAL_SCORE_THRESHOLD,
        ) as d:
            ap[precision] = coco_map(coco, coco_mini / "images", d.detect, d.info.labels)
            ap[precision] = ap[precision].metrics["AP"]
            if precision == "int8":
                assert d.model_path.name.endswith(".cpu.int8.onnx")
    print("COCO AP, CPU INT8 form:", ap)
    assert ap["fp32"] > 0.1 and abs(ap["int8"] - ap["fp32"]) <= 0.01, ap


def test_backends_get_their_int8_form(exported, calib_dir, tmp_path):
    from ssd_trt.detector import flavour_for

    assert flavour_for("cpu") == "cpu"
    assert {flavour_for(b) for b in ("tensorrt", "cuda", "onnxruntime-tensorrt")} == {"tensorrt"}
    # auto resolves to the CPU here and so gets the CPU form, never the slower TensorRT form.
    with Detector(
        exported(MODELS[1]),
        "auto",
        precision="int8",
        calib_images=str(calib_dir),
        cache_dir=tmp_path,
    ) as d:
        assert d.backend_name == "cpu" and d.model_path.name.endswith(".cpu.int8.onnx")


def test_fp16_on_this_cpu_logs_one_note(exported, tmp_path, caplog):
    from ssd_trt.precision.cpu import cpu_has_fast_fp16

    assert not cpu_has_fast_fp16()  # x86: ONNX Runtime has no fast float16 CPU kernels
    with caplog.at_level("WARNING", logger="ssd_trt"):
        Detector(exported(MODELS[1]), "cpu", precision="fp16", cache_dir=tmp_path).close()
        Detector(exported(MODELS[1]), "cpu", cache_dir=tmp_path).close()
    notes = [r.getMessage() for r in caplog.records if "FP16 is for GPUs" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]


def test_calibration_cache_keyed_by_the_image_set(exported, calib_dir, tmp_path):
    src = exported(MODELS[1])
    cache = tmp_path / "c.json"

    def run(images: str | None, count: int = 64) -> bool:
        return to_int8(src, tmp_path / "x.onnx", images, cache_path=cache, count=count)[1]

    assert not run(str(calib_dir))
    assert run(str(calib_dir))  # same images: reused
    assert not run(str(calib_dir), count=10)  # another count: recalibrated
    assert CalibrationCache.load(cache).images == 10
    other = tmp_path / "other"
    other.mkdir()
    for i, image in enumerate(sorted(calib_dir.glob("*.jpg"))[::7]):
        (other / f"{i}.jpg").write_bytes(image.read_bytes())
    assert not run(str(other))  # other images: recalibrated
    assert run(None)  # no images: the cache as it is, said in the log
    # Bad calibration inputs are errors even though a matching cache exists.
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not images")
    for bad in (empty, text):
        with pytest.raises(SsdTrtError):
            run(str(bad))


def test_person_int8_in_domain_calibration_keeps_person_ap(
    exported, vtest_video, coco_mini, tmp_path
):
    """The person model calibrated on pedestrians (vtest.avi), evaluated on COCO's people."""
    from conftest import read_frames
    from pycocotools.coco import COCO

    calib = tmp_path / "vtest"
    calib.mkdir()
    for i, frame in enumerate(read_frames(vtest_video, every=16)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), frame)
    coco = load_annotations(coco_mini / "instances_train2017_small.json")
    people = COCO()
    anns = [a for a in coco.dataset["annotations"] if a["category_id"] == 1]
    ids = {a["image_id"] for a in anns}
    people.dataset = {
        "images": [im for im in coco.dataset["images"] if im["id"] in ids],
        "annotations": anns,
        "categories": [c for c in coco.dataset["categories"] if c["id"] == 1],
    }
    people.createIndex()
    ap = {}
    for precision in ("fp32", "int8"):
        with Detector(
            exported(MODELS[1]),
            "cpu",
            precision=precision,
            calib_images=str(calib),
            cache_dir=tmp_path,
            score_threshold=EVAL_SCORE_THRESHOLD,
        ) as d:
            ap[precision] = coco_map(people, coco_mini / "images", d.detect, d.info.labels)
            ap[precision] = ap[precision].metrics["AP"]
    print("person AP on coco_mini people:", ap)
    assert ap["fp32"] > 0.2 and abs(ap["int8"] - ap["fp32"]) <= 0.02, ap


def test_bench_compares_precisions_in_one_run(exported, calib_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli(
        "bench",
        "--model",
        str(exported(MODELS[1])),
        "--precision",
        "fp32,int8",
        "--calib-images",
        str(calib_dir),
        "--threads",
        "1",
        "--iterations",
        "5",
        "--cache-dir",
        str(tmp_path),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["precision"]: r for r in data["results"]}
    assert list(rows) == ["fp32", "int8"] and data["threads"] == 1
    assert rows["fp32"]["network_speedup"] == 1.0 and rows["fp32"]["detect_speedup"] == 1.0
    assert rows["int8"]["model_path"].endswith(".cpu.int8.onnx")
    for r in rows.values():
        assert 0 < r["network_ms"] and 0 < r["detect_ms"]
    assert "speed-up" in proc.stdout and "int8" in proc.stdout
