"""The NMS end of the exported graph, in standard ONNX ops that ONNX Runtime and TensorRT run.

``onnx`` mode: the best ``max_candidates`` (anchor, class) pairs by score (TopK), ONE
NonMaxSuppression over boxes offset by class (boxes of different classes never overlap, so this
is per-class NMS exactly), a per-class limit where it is below K, and a fixed-size TopK so
every output has a static shape. ``efficient`` mode: TensorRT's EfficientNMS_TRT plugin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import require
from ..nms import NmsSettings, candidate_cap


def const(gs: Any, name: str, values: Any, dtype: Any = np.int64) -> Any:
    return gs.Constant(name, np.asarray(values, dtype=dtype))


def onnx_nms(
    graph: Any, gs: Any, boxes: Any, scores: Any, s: NmsSettings, classes: int, anchors: int
) -> list:
    """Per-class NMS as TF does it, on the best ``max_candidates`` (anchor, class) pairs.

    A TopK over the flattened [N, A*C] scores picks the candidates (ties: lower anchor * C +
    class first, as ``nms.nms_image`` orders them). One NonMaxSuppression then runs over their
    boxes shifted by a per-class offset: boxes are clipped to [0, 1] and the offsets are whole
    multiples of 2, so boxes of different classes never overlap and the single NMS is per-class
    NMS (a single NMS also avoids ONNX Runtime's CUDA NMS running classes one after another).
    Offsets sit on a 2D grid to stay small (<= 18 for 90 classes): float32 rounding of the
    shifted corners is then ~1e-6, not the 1.5e-5 a 1D offset of up to 180 would cost.
    NonMaxSuppression returns a data-dependent list of kept candidates; scattering their scores
    into a dense [N, M] tensor and taking TopK gives static output shapes. Only standard ops
    (TopK, Gather*, NonMaxSuppression, ScatterND, CumSum): TensorRT maps them to its layers.
    """
    f32, i64 = np.float32, np.int64
    k = s.max_total
    m = min(candidate_cap(s), classes * anchors)  # TensorRT's TopK allows K <= 3840
    flat = graph.layer(
        op="Reshape", inputs=[scores, const(gs, "pairs_shape", [0, -1])], outputs=["pair_scores"]
    )[0]
    cand_scores, cand_index = graph.layer(
        op="TopK",
        inputs=[flat, const(gs, "cand_k", [m])],
        outputs=["cand_scores", "cand_index"],
        attrs={"axis": 1, "largest": 1, "sorted": 1},
    )
    n_classes = const(gs, "num_classes", [classes], i64)
    anchor = graph.layer(op="Div", inputs=[cand_index, n_classes], outputs=["cand_anchor"])[0]
    cls = graph.layer(op="Mod", inputs=[cand_index, n_classes], outputs=["cand_class"])[0]
    anchor = graph.layer(
        op="Unsqueeze", inputs=[anchor, const(gs, "cand_axis", [2])], outputs=["cand_anchor_idx"]
    )[0]
    cand_boxes = graph.layer(
        op="GatherND", inputs=[boxes, anchor], outputs=["cand_boxes"], attrs={"batch_dims": 1}
    )[0]
    nms_boxes = cand_boxes
    if classes > 1:
        cols = int(np.ceil(np.sqrt(classes)))
        c = np.arange(classes)
        oy, ox = 2.0 * (c // cols), 2.0 * (c % cols)
        table = np.stack([oy, ox, oy, ox], axis=1)  # boxes are [y1, x1, y2, x2]
        offset = graph.layer(
            op="Gather",
            inputs=[const(gs, "class_offsets", table, f32), cls],
            outputs=["cand_offsets"],
            attrs={"axis": 0},
        )[0]
        nms_boxes = graph.layer(
            op="Add", inputs=[cand_boxes, offset], outputs=["cand_boxes_apart"]
        )[0]
    nms_scores = graph.layer(
        op="Unsqueeze", inputs=[cand_scores, const(gs, "one_class_axis", [1])], outputs=["cand_n1m"]
    )[0]
    # NMS keeps boxes best first, so when no class can reach its limit within the best K kept,
    # stopping at K is exact; otherwise keep everything and apply the per-class limit below.
    limit_per_class = s.max_per_class < k
    selected = graph.layer(
        op="NonMaxSuppression",
        inputs=[
            nms_boxes,
            nms_scores,
            const(gs, "nms_max_out", [m if limit_per_class else k]),
            const(gs, "nms_iou", [s.iou_threshold], f32),
            const(gs, "nms_score", [s.score_threshold], f32),
        ],
        outputs=["nms_selected"],
    )[0]
    picked = graph.layer(
        op="Gather",
        inputs=[selected, const(gs, "batch_and_box", [0, 2])],
        outputs=["nms_picked"],
        attrs={"axis": 1},
    )[0]
    dense = _kept_scores(graph, gs, cand_scores, picked, "cand_shape")
    if limit_per_class:
        dense = _limit_per_class(graph, gs, dense, cls, s.max_per_class, classes)
    top_scores, top_pos = graph.layer(
        op="TopK",
        inputs=[dense, const(gs, "topk_k", [k])],
        outputs=["top_scores", "top_pos"],
        attrs={"axis": 1, "largest": 1, "sorted": 1},
    )
    # Unkept slots hold -1. Comparing with the threshold too keeps its strict '>' whatever a
    # runtime's NMS does with a score equal to it.
    valid = graph.layer(
        op="Greater",
        inputs=[top_scores, const(gs, "valid_min", [max(s.score_threshold, -0.5)], f32)],
        outputs=["top_valid"],
    )[0]
    top_cls = graph.layer(
        op="GatherElements", inputs=[cls, top_pos], outputs=["top_class0"], attrs={"axis": 1}
    )[0]
    top_cls = graph.layer(
        op="Add", inputs=[top_cls, const(gs, "one_i64", [1])], outputs=["top_class"]
    )[0]
    pos = graph.layer(
        op="Unsqueeze", inputs=[top_pos, const(gs, "last_axis", [2])], outputs=["top_pos_idx"]
    )[0]
    top_boxes = graph.layer(
        op="GatherND", inputs=[cand_boxes, pos], outputs=["top_boxes"], attrs={"batch_dims": 1}
    )[0]
    return _detection_outputs(graph, gs, valid, top_boxes, top_scores, top_cls)


def _kept_scores(graph: Any, gs: Any, scores: Any, selected: Any, shape_name: str) -> Any:
    """``scores`` where NonMaxSuppression kept the (batch, class, box) index, -1 elsewhere."""
    kept = graph.layer(op="GatherND", inputs=[scores, selected], outputs=["nms_kept_scores"])[0]
    shape = graph.layer(op="Shape", inputs=[scores], outputs=[shape_name])[0]
    empty = graph.layer(
        op="ConstantOfShape",
        inputs=[shape],
        outputs=["nms_empty"],
        attrs={"value": gs.Constant("neg_one", np.array([-1.0], np.float32))},
    )[0]
    return graph.layer(op="ScatterND", inputs=[empty, selected, kept], outputs=["nms_dense"])[0]


def _limit_per_class(
    graph: Any, gs: Any, dense: Any, cls: Any, max_per_class: int, classes: int
) -> Any:
    """Drop kept candidates ranked max_per_class or lower within their class.

    Exactly per-class NMS's limit: a class's NMS would stop there, and the dropped boxes could
    only have suppressed later boxes of the same class, which are dropped too. The rank is an
    exclusive running count of kept candidates per class along the score order ([N, M, C]).
    """
    f32 = np.float32
    kept = graph.layer(
        op="Greater", inputs=[dense, const(gs, "kept_min", [-0.5], f32)], outputs=["nms_kept"]
    )[0]
    kept = graph.layer(
        op="Unsqueeze", inputs=[kept, const(gs, "kept_axis", [2])], outputs=["nms_kept3"]
    )[0]
    cls3 = graph.layer(
        op="Unsqueeze", inputs=[cls, const(gs, "cls_axis", [2])], outputs=["cand_class3"]
    )[0]
    onehot = graph.layer(
        op="Equal",
        inputs=[cls3, const(gs, "class_range", np.arange(classes))],
        outputs=["cand_onehot"],
    )[0]
    onehot = graph.layer(op="And", inputs=[onehot, kept], outputs=["kept_onehot"])[0]
    onehot = graph.layer(
        op="Cast", inputs=[onehot], outputs=["kept_onehot_f"], attrs={"to": onnx_float()}
    )[0]
    before = graph.layer(
        op="CumSum",
        inputs=[onehot, const(gs, "rank_axis", 1)],
        outputs=["kept_before"],
        attrs={"exclusive": 1},
    )[0]
    rank = graph.layer(
        op="GatherElements", inputs=[before, cls3], outputs=["class_rank3"], attrs={"axis": 2}
    )[0]
    rank = graph.layer(
        op="Squeeze", inputs=[rank, const(gs, "rank_squeeze", [2])], outputs=["class_rank"]
    )[0]
    within = graph.layer(
        op="Less",
        inputs=[rank, const(gs, "per_class_max", [max_per_class], f32)],
        outputs=["within_class_limit"],
    )[0]
    return graph.layer(
        op="Where",
        inputs=[within, dense, const(gs, "dropped", [-1.0], f32)],
        outputs=["nms_dense_limited"],
    )[0]


def _detection_outputs(
    graph: Any, gs: Any, valid: Any, top_boxes: Any, top_scores: Any, cls: Any
) -> list:
    """The four contract outputs from the top K rows; rows that are not valid become zeros."""
    f32 = np.float32
    valid3 = graph.layer(
        op="Unsqueeze", inputs=[valid, const(gs, "last_axis2", [2])], outputs=["top_valid3"]
    )[0]
    det_boxes = graph.layer(
        op="Where",
        inputs=[valid3, top_boxes, const(gs, "zero_f", [0.0], f32)],
        outputs=["detection_boxes"],
    )[0]
    det_scores = graph.layer(
        op="Where",
        inputs=[valid, top_scores, const(gs, "zero_f2", [0.0], f32)],
        outputs=["detection_scores"],
    )[0]
    cls = graph.layer(op="Where", inputs=[valid, cls, const(gs, "zero_i", [0])], outputs=["cls64"])[
        0
    ]
    det_classes = graph.layer(
        op="Cast", inputs=[cls], outputs=["detection_classes"], attrs={"to": onnx_int32()}
    )[0]
    count = graph.layer(
        op="Cast", inputs=[valid], outputs=["valid_i32"], attrs={"to": onnx_int32()}
    )[0]
    num = graph.layer(
        op="ReduceSum",
        inputs=[count, const(gs, "sum_axis", [1])],
        outputs=["num_detections"],
        attrs={"keepdims": 1},
    )[0]
    det_boxes.dtype, det_scores.dtype = np.float32, np.float32
    det_classes.dtype, num.dtype = np.int32, np.int32
    return [num, det_boxes, det_scores, det_classes]


def onnx_nms_per_class(
    graph: Any, gs: Any, boxes: Any, scores: Any, s: NmsSettings, classes: int, anchors: int
) -> list:
    """Per-class ONNX NonMaxSuppression over every (anchor, class) pair, then the best K.

    The graph before the candidate cap (``max_candidates=0``): exact, but NMS sees 172k
    candidates for a COCO SSD at TF's 1e-8 threshold, which dominates the frame's cost.

    NonMaxSuppression returns a data-dependent list of (batch, class, anchor) triples; scattering
    the kept scores into a dense [N, C*A] tensor and taking TopK gives static output shapes.
    """
    f32, i64 = np.float32, np.int64
    scores_ca = graph.layer(
        op="Transpose", inputs=[scores], outputs=["scores_nca"], attrs={"perm": [0, 2, 1]}
    )[0]
    selected = graph.layer(
        op="NonMaxSuppression",
        inputs=[
            boxes,
            scores_ca,
            const(gs, "nms_max_per_class", [s.max_per_class]),
            const(gs, "nms_iou", [s.iou_threshold], f32),
            const(gs, "nms_score", [s.score_threshold], f32),
        ],
        outputs=["nms_selected"],
    )[0]
    dense = _kept_scores(graph, gs, scores_ca, selected, "scores_nca_shape")
    flat = graph.layer(
        op="Reshape", inputs=[dense, const(gs, "flat_shape", [0, -1])], outputs=["nms_flat"]
    )[0]
    top = graph.layer(
        op="TopK",
        inputs=[flat, const(gs, "topk_k", [s.max_total])],
        outputs=["top_scores", "top_index"],
        attrs={"axis": 1, "largest": 1, "sorted": 1},
    )
    top_scores, top_index = top
    valid = graph.layer(
        op="Greater",
        inputs=[top_scores, const(gs, "valid_min", [-0.5], f32)],
        outputs=["top_valid"],
    )[0]
    n_anchors = const(gs, "num_anchors", [anchors], i64)
    cls = graph.layer(op="Div", inputs=[top_index, n_anchors], outputs=["top_class0"])[0]
    anchor = graph.layer(op="Mod", inputs=[top_index, n_anchors], outputs=["top_anchor"])[0]
    cls = graph.layer(op="Add", inputs=[cls, const(gs, "one_i64", [1])], outputs=["top_class"])[0]
    anchor = graph.layer(
        op="Unsqueeze", inputs=[anchor, const(gs, "last_axis", [2])], outputs=["top_anchor_idx"]
    )[0]
    top_boxes = graph.layer(
        op="GatherND", inputs=[boxes, anchor], outputs=["top_boxes"], attrs={"batch_dims": 1}
    )[0]
    return _detection_outputs(graph, gs, valid, top_boxes, top_scores, cls)


def onnx_int32() -> int:
    return int(require("onnx", "export").TensorProto.INT32)


def onnx_float() -> int:
    return int(require("onnx", "export").TensorProto.FLOAT)


def efficient_nms(graph: Any, gs: Any, boxes: Any, scores: Any, s: NmsSettings) -> list:
    """TensorRT's EfficientNMS_TRT plugin (TensorRT 10 only; ONNX Runtime cannot run it).

    The plugin has no per-class limit and numbers classes from 0, so label ids get +1 after it.
    """
    outs = [
        gs.Variable(n)
        for n in ("num_detections", "detection_boxes", "detection_scores", "nms_classes0")
    ]
    graph.layer(
        op="EfficientNMS_TRT",
        name="efficient_nms",
        inputs=[boxes, scores],
        outputs=outs,
        attrs={
            "plugin_version": "1",
            "background_class": -1,
            "max_output_boxes": s.max_total,
            "score_threshold": max(s.score_threshold, 0.0),
            "iou_threshold": s.iou_threshold,
            "score_activation": 0,
            "class_agnostic": 0,
            "box_coding": 0,
        },
    )
    classes = graph.layer(
        op="Add",
        inputs=[outs[3], const(gs, "one_i32", [1], np.int32)],
        outputs=["detection_classes"],
    )[0]
    outs[0].dtype, outs[1].dtype, outs[2].dtype = np.int32, np.float32, np.float32
    outs[3].dtype = classes.dtype = np.int32
    return [outs[0], outs[1], outs[2], classes]
