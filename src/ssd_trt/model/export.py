"""Export stage: TF OD API SSD -> ONNX with box decoding and NMS in the graph.

tf2onnx converts the SSD body (preprocessed image -> box encodings, class scores); onnx-graphsurgeon
then adds what the TF graph did around it, in ops that ONNX Runtime and TensorRT both run:
an NCHW ``images`` input, box decoding with the model's anchors, and NMS + a fixed-size top-K.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..contract import DETECTION_OUTPUTS, INPUT_NAME, NMS_MODES, RAW_OUTPUTS, ModelInfo
from ..errors import SsdTrtError, require
from ..fsutil import atomic_write
from ..nms import NmsSettings
from ..preprocess import PreprocessConfig
from .labels import label_map
from .nms_graph import const, efficient_nms, onnx_nms, onnx_nms_per_class
from .tfgraph import BOX_ENCODINGS, CLASS_SCORES, PREPROCESSED, SsdGraph, analyze, load_graph_def

log = logging.getLogger(__name__)

NmsMode = Literal["onnx", "efficient", "none"]
OPSET = 17
POST_PREFIX = "post/"  # node-name prefix of the decoding/NMS nodes added after the network


@dataclass(frozen=True)
class ExportOptions:
    nms: NmsMode = "onnx"
    max_detections: int | None = None  # K; None: the model's max_total_detections
    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_per_class: int | None = None
    # Candidates NMS looks at, best (anchor, class) scores first; None: NmsSettings' default
    # (1000), 0: every pair above the threshold through per-class NMS (the pre-cap graph).
    max_candidates: int | None = None
    labels: str = "auto"  # see labels.label_map
    model_name: str = ""


@dataclass(frozen=True)
class ExportSummary:
    output: Path
    inputs: list[str]
    outputs: list[str]
    nodes: int
    opset: int
    nms: str
    settings: NmsSettings

    def lines(self) -> list[str]:
        return [
            f"wrote {self.output}",
            f"  inputs:  {', '.join(self.inputs)}",
            f"  outputs: {', '.join(self.outputs)}",
            f"  nodes: {self.nodes}  opset: {self.opset}  nms: {self.nms}",
            f"  {self._nms_line()}",
        ]

    def _nms_line(self) -> str:
        """Only the settings that apply, said where they apply."""
        s = self.settings
        common = f"top-K {s.max_total}, score >= {s.score_threshold:g}, IoU {s.iou_threshold:g}"
        cap = f", candidates {s.max_candidates or 'all'}"
        if self.nms == "none":
            # Not in the graph: recorded in the metadata for the NMS run after the network.
            return (
                f"no NMS in the graph; ssd_trt applies it after the network with {common}, "
                f"per class {s.max_per_class}{cap}"
            )
        if self.nms == "efficient":
            return f"EfficientNMS_TRT: {common} (the plugin has no per-class limit)"
        return f"NMS in the graph: {common}, per class {s.max_per_class}{cap}"


def _settings(ssd: SsdGraph, options: ExportOptions) -> NmsSettings:
    s = ssd.nms
    # TopK cannot ask for more than classes * anchors candidates.
    most = ssd.num_classes * ssd.anchors.shape[0]
    return NmsSettings(
        score_threshold=_first(options.score_threshold, s.score_threshold),
        iou_threshold=_first(options.iou_threshold, s.iou_threshold),
        max_per_class=int(_first(options.max_per_class, s.max_per_class)),
        max_total=min(int(_first(options.max_detections, s.max_total)), most),
        max_candidates=int(_first(options.max_candidates, s.max_candidates)),
    )


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def convert_body(ssd: SsdGraph) -> Any:
    """tf2onnx conversion of the cut SSD graph; returns an onnx.ModelProto."""
    tf2onnx = require("tf2onnx", "export")
    model, _ = tf2onnx.convert.from_graph_def(
        ssd.graph_def,
        input_names=[f"{PREPROCESSED}:0"],
        output_names=[f"{BOX_ENCODINGS}:0", f"{CLASS_SCORES}:0"],
        opset=OPSET,
    )
    return model


def build_onnx(ssd: SsdGraph, body: Any, options: ExportOptions) -> Any:
    """Wrap the converted body with NCHW input, box decoding and the chosen NMS."""
    gs = require("onnx_graphsurgeon", "export")
    onnx = require("onnx", "export")
    settings = _settings(ssd, options)
    if options.nms not in NMS_MODES:
        raise SsdTrtError(f"unknown NMS mode {options.nms!r}; use one of {', '.join(NMS_MODES)}")
    if settings.max_total < 1 or settings.max_per_class < 1:
        raise SsdTrtError("--max-detections and --max-per-class must be at least 1")
    if settings.max_candidates < 0:
        raise SsdTrtError(f"max_candidates {settings.max_candidates} must be >= 0 (0: no cap)")
    if not 0.0 < settings.iou_threshold <= 1.0:
        raise SsdTrtError(f"--iou-threshold {settings.iou_threshold} must be in (0, 1]")

    graph = gs.import_onnx(body)
    body_nodes = {id(n) for n in graph.nodes}
    (old_input,) = graph.inputs
    encodings, class_scores = graph.outputs
    height, width = ssd.input_size

    # NCHW input feeding the NHWC body.
    images = gs.Variable(INPUT_NAME, dtype=np.float32, shape=["N", 3, height, width])
    nhwc = graph.layer(
        op="Transpose", inputs=[images], outputs=["images_nhwc"], attrs={"perm": [0, 2, 3, 1]}
    )[0]
    for node in list(old_input.outputs):
        node.inputs = [nhwc if t is old_input else t for t in node.inputs]
    graph.inputs = [images]

    boxes = _decode(graph, gs, encodings, ssd)
    # Background is class 0 in TF OD API score tensors.
    scores = graph.layer(
        op="Slice",
        inputs=[
            class_scores,
            const(gs, "bg_start", [1]),
            const(gs, "bg_end", [2**31 - 1]),
            const(gs, "bg_axis", [2]),
        ],
        outputs=["class_scores_fg"],
    )[0]

    if options.nms == "none":
        boxes.dtype, scores.dtype = np.float32, np.float32
        graph.outputs = [boxes, scores]
    elif options.nms == "efficient":
        graph.outputs = efficient_nms(graph, gs, boxes, scores, settings)
    elif settings.max_candidates == 0:
        graph.outputs = onnx_nms_per_class(
            graph, gs, boxes, scores, settings, ssd.num_classes, ssd.anchors.shape[0]
        )
    else:
        graph.outputs = onnx_nms(
            graph, gs, boxes, scores, settings, ssd.num_classes, ssd.anchors.shape[0]
        )
    names = RAW_OUTPUTS if options.nms == "none" else DETECTION_OUTPUTS
    for out, name in zip(graph.outputs, names, strict=False):
        out.name = name  # graph.layer() suffixes names; outputs are the contract
        out.shape = _output_shape(name, settings.max_total, ssd)

    # Name what we added around the network: precision conversion keeps it float32
    # (box decoding, NMS, TopK) and INT8 quantization never touches it.
    for node in graph.nodes:
        if id(node) not in body_nodes and node.outputs and node.outputs[0] is not nhwc:
            node.name = f"{POST_PREFIX}{node.name}"
    graph.cleanup().toposort()
    model = gs.export_onnx(graph, do_type_check=True)
    model.opset_import[0].version = OPSET
    model.producer_name = "ssd_trt"
    info = ModelInfo(
        preprocess=PreprocessConfig(height, width, ssd.input_scale, ssd.input_offset),
        labels=label_map(options.labels, ssd.num_classes),
        nms=options.nms,
        nms_settings=settings,
        name=options.model_name,
    )
    canonicalize(model)
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    if options.nms != "efficient":  # the checker does not know TensorRT plugin ops
        onnx.checker.check_model(model)
    return model


def canonicalize(model: Any) -> None:
    """Give the graph an order and names that depend only on its structure.

    tf2onnx's optimizers pick names and node order in ways that vary between runs (a shared
    constant is named after whichever user it met first), so the same model would export to
    different bytes. Walk the graph depth-first from its outputs and name everything by position;
    the graph's inputs and outputs keep their names (they are the contract).
    """
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    inits = {t.name: t for t in g.initializer}
    order: list[Any] = []
    seen: set[int] = set()
    for out in g.output:  # iterative post-order DFS: deep graphs overflow recursion
        stack = [(producer[out.name], False)] if out.name in producer else []
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for name in reversed(node.input):
                if name in producer and id(producer[name]) not in seen:
                    stack.append((producer[name], False))
    keep = {v.name for v in (*g.input, *g.output)}
    rename: dict[str, str] = {}
    new_inits = []
    for k, node in enumerate(order):
        prefix = POST_PREFIX if node.name.startswith(POST_PREFIX) else ""
        node.name = f"{prefix}{node.op_type}_{k}"
        for slot, name in enumerate(node.input):
            if name in inits and name not in rename:
                rename[name] = f"{node.name}/in{slot}"
                new_inits.append(inits[name])
        for j, name in enumerate(node.output):
            if name and name not in keep:
                rename[name] = f"{node.name}/out{j}"
    for node in order:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for t in new_inits:
        t.name = rename[t.name]
    # value_info is only a shape hint (with tf2onnx's random dim names); runtimes re-infer it.
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(order)
    g.initializer.extend(new_inits)
    g.name = "ssd_trt"


def _output_shape(name: str, k: int, ssd: SsdGraph) -> list[Any]:
    anchors = ssd.anchors.shape[0]
    return {
        "num_detections": ["N", 1],
        "detection_boxes": ["N", k, 4],
        "detection_scores": ["N", k],
        "detection_classes": ["N", k],
        "boxes": ["N", anchors, 4],
        "scores": ["N", anchors, ssd.num_classes],
    }[name]


def _decode(graph: Any, gs: Any, encodings: Any, ssd: SsdGraph) -> Any:
    """TF's FasterRcnnBoxCoder.decode, then clipping to the image as TF's postprocessor does."""
    a = ssd.anchors.astype(np.float64)
    size = np.stack([a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], axis=1)  # (h, w)
    center = np.stack([a[:, 0], a[:, 1]], axis=1) + size / 2
    sy, sx, sh, sw = ssd.scale_factors
    f32 = np.float32
    rel = graph.layer(
        op="Slice",
        inputs=[
            encodings,
            const(gs, "enc_c0", [0]),
            const(gs, "enc_c1", [2]),
            const(gs, "enc_axis", [2]),
        ],
        outputs=["enc_center"],
    )[0]
    log = graph.layer(
        op="Slice",
        inputs=[
            encodings,
            const(gs, "enc_s0", [2]),
            const(gs, "enc_s1", [4]),
            const(gs, "enc_axis2", [2]),
        ],
        outputs=["enc_size"],
    )[0]
    rel = graph.layer(
        op="Mul",
        inputs=[rel, const(gs, "inv_center_scale", [1 / sy, 1 / sx], f32)],
        outputs=["enc_center_scaled"],
    )[0]
    rel = graph.layer(
        op="Mul", inputs=[rel, const(gs, "anchor_size", size, f32)], outputs=["center_offset"]
    )[0]
    ctr = graph.layer(
        op="Add", inputs=[rel, const(gs, "anchor_center", center, f32)], outputs=["box_center"]
    )[0]
    log = graph.layer(
        op="Mul",
        inputs=[log, const(gs, "inv_size_scale", [1 / sh, 1 / sw], f32)],
        outputs=["enc_size_scaled"],
    )[0]
    ext = graph.layer(op="Exp", inputs=[log], outputs=["size_ratio"])[0]
    ext = graph.layer(
        op="Mul",
        inputs=[ext, const(gs, "anchor_half_size", size / 2, f32)],
        outputs=["box_half_size"],
    )[0]
    lo = graph.layer(op="Sub", inputs=[ctr, ext], outputs=["box_min"])[0]
    hi = graph.layer(op="Add", inputs=[ctr, ext], outputs=["box_max"])[0]
    box = graph.layer(op="Concat", inputs=[lo, hi], outputs=["boxes_unclipped"], attrs={"axis": 2})[
        0
    ]
    return graph.layer(
        op="Clip",
        inputs=[box, const(gs, "clip_lo", 0.0, f32), const(gs, "clip_hi", 1.0, f32)],
        outputs=["boxes_decoded"],
    )[0]


def write_onnx_atomic(model: Any, output: Path) -> None:
    """A failed or interrupted export leaves no partial ONNX file."""
    with atomic_write(output) as f:
        f.write(model.SerializeToString(deterministic=True))


def export(
    source: Path,
    output: Path,
    options: ExportOptions = ExportOptions(),
    pipeline_config: Path | None = None,
) -> ExportSummary:
    """Export a TF OD API SSD graph file/directory to an ONNX file with the ssd_trt contract."""
    step = log.info
    if pipeline_config is None:
        near = (source if source.is_dir() else source.parent) / "pipeline.config"
        pipeline_config = near if near.exists() else None
    step(f"[1/4] loading {source}")
    graph_def = load_graph_def(source)
    step("[2/4] analyzing the SSD graph (anchors, box coder, NMS settings)")
    ssd = analyze(graph_def, pipeline_config, where=str(source))
    step(f"[3/4] converting with tf2onnx (opset {OPSET})")
    body = convert_body(ssd)
    step(f"[4/4] adding box decoding and NMS ({options.nms})")
    model = build_onnx(ssd, body, options)
    write_onnx_atomic(model, output)
    return ExportSummary(
        output=output,
        inputs=[_describe(v) for v in model.graph.input],
        outputs=[_describe(v) for v in model.graph.output],
        nodes=len(model.graph.node),
        opset=OPSET,
        nms=options.nms,
        settings=_settings(ssd, options),
    )


def _describe(value: Any) -> str:
    onnx = require("onnx", "export")
    t = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return (
        f"{value.name} {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{','.join(dims)}]"
    )
