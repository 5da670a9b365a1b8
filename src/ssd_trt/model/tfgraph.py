"""Load a TF OD API SSD (frozen .pb, SavedModel or TF.js model.json) and find its parts.

The result is an :class:`SsdGraph`: a GraphDef cut down to preprocessed image -> raw box encodings
and converted class scores, plus everything the rest of the graph did that we re-implement in ONNX
(anchors, box-coder scale factors, NMS settings, preprocessing constants).
"""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import progress
from ..errors import SsdTrtError, require
from ..nms import NmsSettings

# Tensor names that every TF OD API SSD export shares (TF1 zoo graphs and the TF.js conversion).
PREPROCESSED = "Preprocessor/sub"
BOX_ENCODINGS = "Squeeze"  # [N, A, 4] (ty, tx, th, tw)
CLASS_SCORES = "Postprocessor/convert_scores"  # [N, A, C+1] after sigmoid/softmax, background first
ANCHORS = "Postprocessor/ExpandDims"  # [1, A, 4] (ymin, xmin, ymax, xmax), normalized
IMAGE_TENSOR = "image_tensor"

DEFAULT_SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)


@dataclass
class SsdGraph:
    """An SSD cut at its preprocessed input and its raw head outputs, plus what was cut away."""

    graph_def: Any  # tf.compat.v1.GraphDef: input PREPROCESSED:0 -> BOX_ENCODINGS:0, CLASS_SCORES:0
    input_size: tuple[int, int]  # (height, width)
    input_scale: float  # preprocessed = pixel * input_scale + input_offset
    input_offset: float
    anchors: np.ndarray  # [A, 4] float32
    scale_factors: tuple[float, float, float, float]
    num_classes: int  # without background
    nms: NmsSettings


def _tf():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with progress.native_stderr_hidden("importing TensorFlow"):
        return require("tensorflow", "export")


# ---------------------------------------------------------------------------------------- loading


def load_graph_def(path: Path) -> Any:
    """Read a frozen graph, a SavedModel directory or a TF.js graph model into a GraphDef."""
    if not path.exists():
        raise SsdTrtError(f"{path} does not exist; pass a .pb, SavedModel directory or model.json")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return _load_saved_model(path)
        for name in ("frozen_inference_graph.pb", "model.json"):
            if (path / name).exists():
                return load_graph_def(path / name)
        raise SsdTrtError(
            f"{path} holds no saved_model.pb, frozen_inference_graph.pb or model.json; "
            "point at the model file itself"
        )
    if path.suffix == ".json":
        return _load_tfjs(path)
    return _load_frozen(path)


def _load_frozen(path: Path) -> Any:
    # Before importing TensorFlow (10+ s): an empty or unreadable file fails at once.
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SsdTrtError(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise SsdTrtError(f"{path} is empty (0 bytes); pass a frozen SSD graph (.pb)")
    tf = _tf()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception:
        raise SsdTrtError(
            f"{path} is not a TensorFlow frozen graph (GraphDef protobuf); "
            "pass a frozen_inference_graph.pb, a SavedModel directory or a TF.js model.json"
        ) from None
    if not graph_def.node:
        raise SsdTrtError(f"{path} holds an empty TensorFlow graph; pass a frozen SSD graph")
    return graph_def


def _load_saved_model(path: Path) -> Any:
    tf = _tf()
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        try:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        except Exception as exc:
            raise SsdTrtError(
                f"{path} could not be loaded as a TF1 SavedModel with tag 'serve' "
                f"({type(exc).__name__}); pass its frozen_inference_graph.pb instead"
            ) from None
        outputs = [
            t.name.split(":")[0]
            for sig in meta.signature_def.values()
            for t in sig.outputs.values()
        ]
        if not outputs:
            outputs = [BOX_ENCODINGS, CLASS_SCORES]
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), outputs
        )


_TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def _fix_tfjs_bytes(attr: dict[str, Any]) -> None:
    """Old TF.js converters wrote bytes fields as lists of ints; protobuf-JSON wants base64."""

    def b64(value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return base64.b64encode(bytes(value)).decode()
        return value

    if "s" in attr:
        attr["s"] = b64(attr["s"])
    if isinstance(attr.get("list"), dict) and "s" in attr["list"]:
        attr["list"]["s"] = [b64(v) for v in attr["list"]["s"]]


def _load_tfjs(path: Path) -> Any:
    """TF.js graph models store a GraphDef as protobuf-JSON and the weights in binary shards."""
    tf = _tf()
    from google.protobuf import json_format

    try:
        model = json.loads(path.read_text())
        topology = model["modelTopology"]
        manifest = model["weightsManifest"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise SsdTrtError(
            f"{path} is not a TF.js graph model (model.json with modelTopology and weightsManifest)"
        ) from None
    topology = topology.get("model_topology", topology)
    for node in topology.get("node", []):
        for attr in node.get("attr", {}).values():
            _fix_tfjs_bytes(attr)
    graph_def = tf.compat.v1.GraphDef()
    try:
        json_format.ParseDict(topology, graph_def, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise SsdTrtError(f"{path}: its modelTopology is not a GraphDef ({exc})") from None

    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        blob = b"".join((path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if "quantization" in spec:
                raise SsdTrtError(
                    f"{path}: quantized TF.js weights are not supported; use a float32 model"
                )
            dtype = _TFJS_DTYPES.get(spec["dtype"])
            if dtype is None:
                raise SsdTrtError(f"{path}: weight dtype {spec['dtype']} is not supported")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            size = count * np.dtype(dtype).itemsize
            if offset + size > len(blob):
                raise SsdTrtError(f"{path}: weight shards are truncated; fetch the model again")
            weights[spec["name"]] = np.frombuffer(
                blob, dtype=dtype, count=count, offset=offset
            ).reshape(spec["shape"])
            offset += size
    for node in graph_def.node:
        if node.op == "Const" and node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
    return graph_def


# ------------------------------------------------------------------------------- pipeline.config


def read_pipeline_config(path: Path) -> dict[str, Any]:
    """The few settings we need from a TF OD API pipeline.config (protobuf text format)."""
    text = path.read_text()

    def number(key: str, block: str) -> float | None:
        match = re.search(rf"\b{key}\s*:\s*([-+0-9.eE]+)", block)
        return float(match.group(1)) if match else None

    def block(name: str) -> str:
        start = re.search(rf"\b{name}\s*{{", text)
        if not start:
            return ""
        depth, i = 1, start.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        return text[start.end() : i]

    out: dict[str, Any] = {}
    resizer = block("fixed_shape_resizer")
    if resizer:
        h, w = number("height", resizer), number("width", resizer)
        if h and w:
            out["input_size"] = (int(h), int(w))
    coder = block("faster_rcnn_box_coder")
    if coder:
        keys = ("y_scale", "x_scale", "height_scale", "width_scale")
        vals = [number(k, coder) for k in keys]
        out["scale_factors"] = tuple(
            v if v is not None else d for v, d in zip(vals, DEFAULT_SCALE_FACTORS, strict=False)
        )
    nms = block("batch_non_max_suppression")
    for key in (
        "score_threshold",
        "iou_threshold",
        "max_detections_per_class",
        "max_total_detections",
    ):
        value = number(key, nms) if nms else None
        if value is not None:
            out[key] = value
    return out


# -------------------------------------------------------------------------------------- analysis


def _const(graph_def: Any, name: str) -> np.ndarray | None:
    tf = _tf()
    for node in graph_def.node:
        if node.name == name and node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor)
    return None


def _graph_nms(graph_def: Any) -> dict[str, float]:
    """NMS settings baked into a frozen graph's BatchMultiClassNonMaxSuppression, if it has one."""
    out: dict[str, float] = {}
    for node in graph_def.node:
        if node.op != "Const" or "MultiClassNonMaxSuppression" not in node.name:
            continue
        leaf = node.name.rsplit("/", 1)[-1]
        if leaf in ("iou_threshold", "score_threshold"):
            value = _const(graph_def, node.name)
            if value is not None:  # always: it is this Const node
                out[leaf] = float(f"{float(value):.6g}")  # float32 noise
    return out


def _scale_factors_from_graph(graph_def: Any) -> tuple[float, ...] | None:
    # TF1 exports divide by the factors; the TF.js converter folded them into reciprocals.
    direct = [
        _const(graph_def, f"Postprocessor/Decode/truediv{s}/y") for s in ("", "_1", "_2", "_3")
    ]
    found = [float(v) for v in direct if v is not None]
    if len(found) == len(direct):
        return tuple(found)
    recip = [
        _const(graph_def, f"ConstantFolding/Postprocessor/Decode/div{s}_recip")
        for s in ("", "_1", "_2", "_3")
    ]
    found = [float(v) for v in recip if v is not None]
    if len(found) == len(recip) and all(v != 0 for v in found):
        return tuple(round(1.0 / v, 6) for v in found)
    return None


def analyze(graph_def: Any, pipeline_config: Path | None = None, where: str = "model") -> SsdGraph:
    """Check that ``graph_def`` is a TF OD API SSD and extract what the ONNX export needs."""
    tf = _tf()
    names = {node.name for node in graph_def.node}
    missing = [n for n in (PREPROCESSED, BOX_ENCODINGS, CLASS_SCORES, ANCHORS) if n not in names]
    if missing:
        raise SsdTrtError(
            f"{where} is a TensorFlow graph but not a TF Object Detection API SSD "
            f"(no {', '.join(missing)} node); export an SSD from the TF OD API model zoo"
        )
    config = read_pipeline_config(pipeline_config) if pipeline_config else {}

    size = config.get("input_size")
    if not size:
        stack = _const(graph_def, "Preprocessor/map/while/ResizeImage/stack")
        size = tuple(int(v) for v in stack) if stack is not None and stack.size == 2 else (300, 300)
    scale = _const(graph_def, "Preprocessor/mul/x")
    offset = _const(graph_def, "Preprocessor/sub/y")
    input_scale = float(scale) if scale is not None else 2.0 / 255.0
    input_offset = -float(offset) if offset is not None else -1.0

    factors = config.get("scale_factors") or _scale_factors_from_graph(graph_def)
    if not factors:
        factors = DEFAULT_SCALE_FACTORS

    graph_nms = _graph_nms(graph_def)
    defaults = NmsSettings()

    def pick(cfg_key: str, graph_key: str | None, default: float) -> float:
        """pipeline.config first, then the frozen graph's own NMS, then the zoo default."""
        if cfg_key in config:
            return config[cfg_key]
        if graph_key and graph_key in graph_nms:
            return graph_nms[graph_key]
        return default

    nms = NmsSettings(
        score_threshold=float(pick("score_threshold", "score_threshold", defaults.score_threshold)),
        iou_threshold=float(pick("iou_threshold", "iou_threshold", defaults.iou_threshold)),
        max_per_class=int(pick("max_detections_per_class", None, defaults.max_per_class)),
        max_total=int(pick("max_total_detections", None, defaults.max_total)),
    )

    # Anchors depend only on the input size; evaluate them once rather than converting the
    # anchor generator subgraph.
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    feed = {f"{PREPROCESSED}:0": np.zeros((1, *size, 3), np.float32)}
    if IMAGE_TENSOR in names:
        image = graph.get_tensor_by_name(f"{IMAGE_TENSOR}:0")
        feed[f"{IMAGE_TENSOR}:0"] = np.zeros((1, *size, 3), image.dtype.as_numpy_dtype)
    with tf.compat.v1.Session(graph=graph) as sess:
        try:
            anchors, scores = sess.run([f"{ANCHORS}:0", f"{CLASS_SCORES}:0"], feed)
        except Exception as exc:
            raise SsdTrtError(
                f"{where}: running the SSD head in TensorFlow failed ({type(exc).__name__}); "
                "is the graph complete and its input size right?"
            ) from None
    anchors = np.asarray(anchors, np.float32).reshape(-1, 4)
    if scores.ndim != 3 or scores.shape[1] != anchors.shape[0]:
        raise SsdTrtError(
            f"{where}: class scores {scores.shape} do not line up with {anchors.shape[0]} anchors; "
            "not a supported SSD export"
        )

    cut = _cut(graph_def, size)
    y_scale, x_scale, h_scale, w_scale = (float(f) for f in factors)
    return SsdGraph(
        graph_def=cut,
        input_size=(int(size[0]), int(size[1])),
        input_scale=input_scale,
        input_offset=input_offset,
        anchors=anchors,
        scale_factors=(y_scale, x_scale, h_scale, w_scale),
        num_classes=int(scores.shape[2]) - 1,
        nms=nms,
    )


def _cut(graph_def: Any, size: tuple[int, int]) -> Any:
    """Replace the preprocessing with a placeholder and drop everything after the SSD head."""
    tf = _tf()
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name == PREPROCESSED:
            placeholder = out.node.add()
            placeholder.name = PREPROCESSED
            placeholder.op = "Placeholder"
            placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
            shape = tf.TensorShape([None, size[0], size[1], 3]).as_proto()
            placeholder.attr["shape"].shape.CopyFrom(shape)
        else:
            out.node.add().CopyFrom(node)
    return tf.compat.v1.graph_util.extract_sub_graph(out, [BOX_ENCODINGS, CLASS_SCORES])
