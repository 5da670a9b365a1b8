"""Export of real pretrained SSDs, checked against the original graph run in TensorFlow."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import error_line, optional
from conftest import run_cli as cli

from ssd_trt.contract import DETECTION_OUTPUTS
from ssd_trt.model.export import ExportOptions, export
from ssd_trt.model.tfgraph import load_graph_def
from ssd_trt.nms import NmsSettings, batched_nms
from ssd_trt.preprocess import PreprocessConfig, preprocess

onnx = optional("onnx", "export")

MODELS = ("ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person")
CONFIG = PreprocessConfig()


# ------------------------------------------------------------------------------------- helpers


def run_onnx(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"images": batch}), strict=False))


def run_tensorflow(graph_path: Path, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """The original graph in TensorFlow on the same preprocessed input.

    Frozen zoo graphs carry TF's own postprocessing and NMS, so their detection outputs are used
    as they are. The TF.js graph ends at decoded boxes and scores (its NMS ran in JavaScript), so
    TF's combined NMS with the zoo defaults follows it, on boxes clipped to the image as the TF
    OD API postprocessor does.
    """
    import tensorflow as tf

    graph_def = load_graph_def(graph_path)
    names = {n.name for n in graph_def.node}
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    nhwc = batch_nchw.transpose(0, 2, 3, 1)
    image = graph.get_tensor_by_name("image_tensor:0")
    feed = {
        "Preprocessor/sub:0": nhwc,
        "image_tensor:0": np.zeros(nhwc.shape, image.dtype.as_numpy_dtype),
    }
    with tf.compat.v1.Session(graph=graph) as sess:
        if "detection_boxes" in names:
            out = sess.run({k: f"{k}:0" for k in DETECTION_OUTPUTS}, feed)
            out["num_detections"] = out["num_detections"].astype(np.int32).reshape(-1, 1)
            out["detection_classes"] = out["detection_classes"].astype(np.int32)
            return out
        boxes, scores = sess.run(["Postprocessor/ExpandDims_1:0", "Postprocessor/Slice:0"], feed)
    s = NmsSettings()
    nmsed = tf.image.combined_non_max_suppression(
        np.clip(boxes, 0.0, 1.0),
        scores,
        s.max_per_class,
        s.max_total,
        s.iou_threshold,
        s.score_threshold,
        clip_boxes=False,
    )
    return {
        "num_detections": nmsed.valid_detections.numpy().astype(np.int32).reshape(-1, 1),
        "detection_boxes": nmsed.nmsed_boxes.numpy(),
        "detection_scores": nmsed.nmsed_scores.numpy(),
        "detection_classes": nmsed.nmsed_classes.numpy().astype(np.int32) + 1,
    }


def detections(out: dict[str, np.ndarray], i: int, min_score: float) -> list[tuple]:
    n = int(out["num_detections"][i, 0])
    return [
        (
            float(out["detection_scores"][i, j]),
            int(out["detection_classes"][i, j]),
            out["detection_boxes"][i, j],
        )
        for j in range(n)
        if out["detection_scores"][i, j] >= min_score
    ]


def assert_same_detections(got, want, min_score=0.3, tol=1e-3) -> int:
    """Same set of detections scoring >= min_score; boxes and scores within tol.

    A detection within tol of the threshold may fall on either side of it in the other set.
    Returns how many detections were matched.
    """
    matched = 0
    for i in range(got["num_detections"].shape[0]):
        a = detections(got, i, min_score - tol)
        b = detections(want, i, min_score - tol)
        used = set()
        for score, cls, box in b:
            hit = next(
                (
                    j
                    for j, (s2, c2, b2) in enumerate(a)
                    if j not in used
                    and c2 == cls
                    and abs(s2 - score) <= tol
                    and np.abs(b2 - box).max() <= tol
                ),
                None,
            )
            if hit is None:
                assert score < min_score + tol, f"image {i}: missing {cls} {score:.4f} {box}"
                continue
            used.add(hit)
            matched += score >= min_score
        extra = [d for j, d in enumerate(a) if j not in used and d[0] >= min_score + tol]
        assert not extra, f"image {i}: extra detections {extra}"
    return matched


# --------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_tensorflow(name, exported, registry_graphs, test_images):
    path = exported(name)
    batch = preprocess(test_images, CONFIG)
    got = {k: [] for k in DETECTION_OUTPUTS}
    for start in range(0, len(batch), 8):
        for k, v in run_onnx(path, batch[start : start + 8]).items():
            got[k].append(v)
    got = {k: np.concatenate(v) for k, v in got.items()}
    want = run_tensorflow(registry_graphs[name], batch)
    matched = assert_same_detections(got, want)
    # A real detector finds real objects in these photos and the cyclist video.
    assert matched >= 10, matched
    assert (got["num_detections"] > 0).all()
    scores = got["detection_scores"]
    assert (np.diff(scores, axis=1) <= 0).all(), "scores must be descending"
    n = got["num_detections"][:, 0]
    valid = np.arange(scores.shape[1])[None, :] < n[:, None]
    assert ((got["detection_classes"] >= 1) & (got["detection_classes"] <= 90))[valid].all()
    assert (got["detection_classes"][~valid] == 0).all() and (scores[~valid] == 0).all()
    assert (got["detection_boxes"] >= 0).all() and (got["detection_boxes"] <= 1).all()


@pytest.mark.parametrize("name", MODELS)
def test_output_contract(name, exported):
    model = onnx.load(str(exported(name)))
    g = model.graph

    def sig(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims

    assert [(i.name, *sig(i)) for i in g.input] == [("images", "float32", ["N", 3, 300, 300])]
    assert [(o.name, *sig(o)) for o in g.output] == [
        ("num_detections", "int32", ["N", 1]),
        ("detection_boxes", "float32", ["N", 100, 4]),
        ("detection_scores", "float32", ["N", 100]),
        ("detection_classes", "int32", ["N", 100]),
    ]
    ops = {n.op_type for n in g.node}
    assert "NonMaxSuppression" in ops and "TopK" in ops
    # TF's decoding/resizing subgraph is gone: no image decoding, resize or loops.
    assert not ops & {"Resize", "Loop", "Scan"}
    meta = {p.key: p.value for p in model.metadata_props}
    labels = json.loads(meta["ssd_trt.labels"])
    assert labels["1"] == "person"
    if name.endswith("coco"):
        assert len(labels) == 90 and labels["18"] == "dog" and labels["90"] == "toothbrush"
    assert json.loads(meta["ssd_trt.input_size"]) == [300, 300]
    assert float(meta["ssd_trt.input_offset"]) == -1.0


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_four_equals_four_single_runs(name, exported, test_images):
    path = exported(name)
    batch = preprocess(test_images[:2] + test_images[-2:], CONFIG)
    together = run_onnx(path, batch)
    for i in range(4):
        alone = run_onnx(path, batch[i : i + 1])
        n = int(alone["num_detections"][0, 0])
        assert n == together["num_detections"][i, 0]
        np.testing.assert_allclose(
            alone["detection_scores"][0], together["detection_scores"][i], atol=1e-5
        )
        np.testing.assert_allclose(
            alone["detection_boxes"][0], together["detection_boxes"][i], atol=1e-5
        )
        # Near-equal scores may swap places; compare the classes as a multiset.
        assert sorted(alone["detection_classes"][0]) == sorted(together["detection_classes"][i])


@pytest.mark.parametrize("name", MODELS)
def test_nms_none_then_project_nms_equals_graph_nms(name, exported, test_images):
    batch = preprocess(test_images[::3], CONFIG)
    raw = run_onnx(exported(name, "none"), batch)
    assert set(raw) == {"boxes", "scores"}
    assert raw["boxes"].shape == (len(batch), 1917, 4)
    assert raw["scores"].shape[:2] == (len(batch), 1917)
    ours = batched_nms(raw["boxes"], raw["scores"], NmsSettings())
    graph = run_onnx(exported(name), batch)
    assert assert_same_detections(ours, graph, min_score=0.05, tol=1e-5) > 0
    np.testing.assert_array_equal(ours["num_detections"], graph["num_detections"])


def test_efficient_nms_graph(registry_graphs, tmp_path):
    out = tmp_path / "eff.onnx"
    summary = export(
        registry_graphs["ssdlite_mobilenet_v2_person"],
        out,
        ExportOptions(nms="efficient", max_detections=50),
    )
    assert summary.nms == "efficient"
    model = onnx.load(str(out))
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["max_output_boxes"] == 50 and attrs["background_class"] == -1
    assert abs(attrs["iou_threshold"] - 0.6) < 1e-6
    assert [o.name for o in model.graph.output] == list(DETECTION_OUTPUTS)
    # The plugin is TensorRT-only; ONNX Runtime refuses the graph, which the docs say.
    with pytest.raises(Exception, match="EfficientNMS_TRT"):
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_export_is_deterministic(registry_graphs, exported, tmp_path):
    again = tmp_path / "again.onnx"
    export(
        registry_graphs["ssdlite_mobilenet_v2_person"],
        again,
        ExportOptions(labels="person"),
    )
    assert again.read_bytes() == exported("ssdlite_mobilenet_v2_person").read_bytes()


def test_saved_model_directory_exports_like_frozen_graph(
    registry_graphs, exported, tmp_path, test_images
):
    import tensorflow as tf

    graph_def = load_graph_def(registry_graphs["ssdlite_mobilenet_v2_person"])
    saved = tmp_path / "saved_model"
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = tf.compat.v1.saved_model.Builder(str(saved))
            sig = tf.compat.v1.saved_model.predict_signature_def(
                {"inputs": graph.get_tensor_by_name("image_tensor:0")},
                {k: graph.get_tensor_by_name(f"{k}:0") for k in DETECTION_OUTPUTS},
            )
            builder.add_meta_graph_and_variables(sess, ["serve"], {"serving_default": sig})
            builder.save()
    out = tmp_path / "from_saved.onnx"
    export(saved, out, ExportOptions(labels="person"))
    batch = preprocess(test_images[:4], CONFIG)
    assert_same_detections(
        run_onnx(out, batch),
        run_onnx(exported("ssdlite_mobilenet_v2_person"), batch),
        min_score=0.05,
        tol=1e-6,
    )


# ------------------------------------------------------------------------------------ the CLI


def test_cli_export_by_registry_name_prints_summary(model_cache, registry_graphs, tmp_path):
    out = tmp_path / "person.onnx"
    proc = cli(
        "export",
        "ssdlite_mobilenet_v2_person",
        "-o",
        str(out),
        "--max-detections",
        "20",
        "--cache-dir",
        str(model_cache),
    )
    assert proc.returncode == 0, proc.stderr
    assert "images float32[N,3,300,300]" in proc.stdout
    assert "detection_classes int32[N,20]" in proc.stdout
    assert "opset: 17" in proc.stdout and "nms: onnx" in proc.stdout and "nodes: " in proc.stdout
    assert "[3/4] converting with tf2onnx" in proc.stderr  # progress
    assert out.is_file() and not list(tmp_path.glob(".*tmp"))


def test_cli_rejects_file_that_is_not_a_tf_graph(tmp_path):
    bad = tmp_path / "model.pb"
    bad.write_bytes(os.urandom(4096))
    out = tmp_path / "out.onnx"
    proc = cli("export", str(bad), "-o", str(out), "-q")
    assert proc.returncode == 2
    assert "not a TensorFlow frozen graph" in error_line(proc)
    assert list(tmp_path.iterdir()) == [bad]


def test_cli_rejects_tf_graph_that_is_not_an_ssd(tmp_path):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        tf.identity(x * 2.0, name="y")
    pb = tmp_path / "classifier.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    out = tmp_path / "out.onnx"
    proc = cli("export", str(pb), "-o", str(out), "-q")
    assert proc.returncode == 2
    assert "not a TF Object Detection API SSD" in error_line(proc)
    assert not out.exists() and list(tmp_path.iterdir()) == [pb]


def test_cli_rejects_unknown_model_name(tmp_path):
    proc = cli(
        "export",
        "ssd_resnet9000_coco",
        "-o",
        str(tmp_path / "o.onnx"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert proc.returncode == 2
    assert "unknown model 'ssd_resnet9000_coco'" in error_line(proc)
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------- TF model zoo tarball, over HTTP


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PIPELINE_CONFIG = """model {
  ssd {
    num_classes: 1
    image_resizer { fixed_shape_resizer { height: 300 width: 300 } }
    box_coder {
      faster_rcnn_box_coder { y_scale: 10.0 x_scale: 10.0 height_scale: 5.0 width_scale: 5.0 }
    }
    post_processing {
      batch_non_max_suppression {
        score_threshold: 0.05
        iou_threshold: 0.5
        max_detections_per_class: 30
        max_total_detections: 40
      }
      score_converter: SIGMOID
    }
  }
}
"""


def test_zoo_tarball_fetch_and_export_use_pipeline_config(registry_graphs, http_dir, tmp_path):
    """A zoo-shaped tarball (a real frozen SSD + pipeline.config) served on 127.0.0.1."""
    root, base = http_dir
    name = "ssd_inception_v2_coco_2017_11_17"
    with tarfile.open(root / f"{name}.tar.gz", "w:gz") as tar:
        tar.add(registry_graphs["ssdlite_mobilenet_v2_person"], f"{name}/frozen_inference_graph.pb")
        data = PIPELINE_CONFIG.encode()
        info = tarfile.TarInfo(f"{name}/pipeline.config")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    url = f"{base}/{name}.tar.gz"
    proc = cli("fetch", name, "--url", url, "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "checksum" in proc.stderr.lower()  # no published checksum: the recorded one is shown
    out = tmp_path / "zoo.onnx"
    proc = cli("export", name, "-o", str(out), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "top-K 40, score >= 0.05, IoU 0.5, per class 30" in proc.stdout
    model = onnx.load(str(out))
    assert model.graph.output[1].type.tensor_type.shape.dim[1].dim_value == 40


def test_cli_checksum_mismatch_leaves_nothing(http_dir, tmp_path):
    root, base = http_dir
    name = "ssd_mobilenet_v1_coco_2018_01_28"  # has a pinned checksum
    with tarfile.open(root / "tampered.tar.gz", "w:gz") as tar:
        data = b"not the real graph"
        info = tarfile.TarInfo(f"{name}/frozen_inference_graph.pb")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    proc = cli("fetch", name, "--url", f"{base}/tampered.tar.gz", "--cache-dir", str(cache))
    assert proc.returncode == 2
    assert "checksum" in error_line(proc).lower()
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_store_exports_again_when_the_cached_export_is_from_an_older_format(
    model_cache, registry_graphs
):
    """A cached export without this version's export format (an older ssd_trt wrote it, e.g.
    before the candidate cap) is made again instead of being used as is."""
    import onnx

    from ssd_trt.contract import is_current_export, metadata_of
    from ssd_trt.store import ArtifactStore

    store = ArtifactStore(model_cache)
    path = store.onnx("ssdlite_mobilenet_v2_person", nms="none")
    fresh = path.read_bytes()
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "ssd_trt.export_format"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    assert not is_current_export(metadata_of(onnx.load(str(path), load_external_data=False)))
    assert store.onnx("ssdlite_mobilenet_v2_person", nms="none") == path
    assert path.read_bytes() == fresh  # exported again, deterministically
