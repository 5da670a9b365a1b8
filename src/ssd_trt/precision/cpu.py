"""The CPU flavour of the precisions: the INT8 form ONNX Runtime's CPU kernels run fast, and
whether FP16 can pay off on this CPU at all.

The TensorRT form (quantize.insert_qdq) is symmetric int8 Q/DQ on Conv inputs only. ONNX
Runtime's CPU provider runs that as dequantize -> float Conv: slower than FP32 (0.55x measured),
and the Q/DQ weights also stop it from folding the TF.js graph's unfused batch norms (Conv -> Mul
-> Add) into the convolutions. The CPU form is what its kernels are written for:

- the batch norms folded first (ONNX Runtime's own basic, provider-independent graph
  optimizations, saved offline), and the residual ``Sum`` nodes written as ``Add``;
- QDQ with uint8 activations and int8 per-channel symmetric weights, which ONNX Runtime fuses
  into QLinearConv (u8s8, VNNI on x86), QLinearAdd and quantized Concat/Reshape/Transpose;
- ReLU6 (Clip) folded away: the Conv before it is quantized to the Clip's [0, amax] range, so
  uint8 saturation does the clipping.

The ranges are the project's own calibration (quantize.calibrate: entropy, with ReLU6 outputs
keeping their observed range), from the same cache as the TensorRT form, not ONNX Runtime's
MinMax/entropy calibrators: the ReLU6 handling is what keeps COCO AP at FP32's level. ONNX
Runtime's QDQQuantizer only places the Q/DQ nodes, with those ranges given as its tensor ranges.
Box decoding and NMS (``post/`` nodes) stay float32.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import SsdTrtError, require
from ..model.export import POST_PREFIX

log = logging.getLogger(__name__)

# Ops quantized in the CPU form. Convs become QLinearConv (u8s8; VNNI on x86), and each ReLU6
# folds into the Conv before it. Add (QLinearAdd) and Concat/Reshape/Transpose were measured
# too: no faster (network 5.56 vs 5.61 ms, FP32 10.65 ms, 1 thread) and COCO AP 0.012 lower
# (the residual Adds requantize the linear bottlenecks per tensor), so they stay float.
CPU_QUANTIZED_OPS = ("Conv", "Clip")

# ------------------------------------------------------------------------------------- FP16


def cpu_has_fast_fp16() -> bool:
    """Whether ONNX Runtime's CPU kernels have a float16 path here that can beat float32.

    Its float16 convolutions exist for ARM64 CPUs with half-precision arithmetic only; on x86
    (even with AVX512-FP16) the FP16 graph runs through casts and is slower than FP32.
    """
    if platform.machine().lower() not in ("aarch64", "arm64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.system() == "Darwin"  # Apple silicon has FP16 arithmetic
    return "asimdhp" in flags or "fphp" in flags


# ------------------------------------------------------------------------------------- INT8


def optimize(model: Any) -> Any:
    """The FP32 model after ONNX Runtime's basic graph optimizations (batch norms folded into
    the Convs, constants folded), with 2-input Sums written as Adds. Tensor names are kept, so
    ranges calibrated on the original model apply."""
    ort = require("onnxruntime", "ort")
    onnx = require("onnx", "export")
    with tempfile.TemporaryDirectory(prefix="ssd_trt-opt-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        # Basic optimizations only: they are exact and use standard ONNX ops, so the result
        # runs on any provider. Higher levels add CPU-specific layouts that break quantization.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(path))
    _sum_to_add(optimized)
    _drop_unused_opsets(optimized)
    return optimized


def _sum_to_add(model: Any) -> None:
    """Sum of two tensors is Add, which has a quantized kernel (QLinearAdd); Sum has none."""
    for node in model.graph.node:
        if node.op_type == "Sum" and len(node.input) == 2:
            node.op_type = "Add"


def _drop_unused_opsets(model: Any) -> None:
    used = {n.domain for n in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _network_nodes(model: Any) -> list[Any]:
    return [n for n in model.graph.node if not n.name.startswith(POST_PREFIX)]


def range_tensors(optimized: Any) -> list[str]:
    """The float activation tensors the CPU form quantizes, so needs calibrated ranges for.

    A Clip's input is not among them: it takes the Clip's output range (see :func:`quantize`).
    """
    onnx = require("onnx", "export")
    inferred = onnx.shape_inference.infer_shapes(optimized).graph
    floats = {
        v.name
        for v in (*inferred.value_info, *inferred.input, *inferred.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    clipped = _clip_inputs(optimized)
    names: list[str] = []
    for node in _network_nodes(optimized):
        if node.op_type not in CPU_QUANTIZED_OPS:
            continue
        inputs = [] if node.op_type == "Clip" else node.input[:1]
        for name in (*inputs, *node.output):
            if name in floats and name not in clipped and name not in names:
                names.append(name)
    return names


def head_outputs(optimized: Any) -> list[str]:
    """Conv outputs that leave the quantizable trunk: the box and class heads, whose values are
    decoded (sigmoid, exp) rather than fed to another Conv, Add or ReLU6."""
    trunk_ops = ("Conv", "Add", "Sum", "Clip")
    users: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    return [
        n.output[0]
        for n in _network_nodes(optimized)
        if n.op_type == "Conv" and not any(u in trunk_ops for u in users.get(n.output[0], []))
    ]


def _clip_inputs(optimized: Any) -> dict[str, str]:
    """Clip input -> Clip output, for the network's Clips that are their input's only user."""
    users: dict[str, int] = {}
    for node in optimized.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    return {
        n.input[0]: n.output[0]
        for n in _network_nodes(optimized)
        if n.op_type == "Clip" and users[n.input[0]] == 1
    }


def quantize(
    optimized: Any,
    amax: dict[str, float],
    nonneg: Collection[str],
) -> Any:
    """QDQ (uint8 activations, int8 per-channel weights) of an :func:`optimize`-d FP32 model.

    A tensor never seen negative in calibration gets the range [0, amax]; others [-amax, amax].
    Tensors without a range (integer shape arithmetic) are left alone by the quantizer.
    """
    require("onnxruntime", "ort")
    import numpy as np
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    wanted = range_tensors(optimized)
    missing = [n for n in wanted if n not in amax]
    if missing:
        raise SsdTrtError(
            f"no calibration range for {missing[0]} (and {len(missing) - 1} more); recalibrate "
            "with --calib-images"
        )
    ranges = {}
    for name in wanted:
        high = np.float32(max(amax[name], 1e-8))
        low = np.float32(0.0) if name in nonneg else -high
        ranges[name] = TensorData(lowest=low, highest=high)
    # The tensor before a ReLU6 gets the ReLU6's range, so the Clip folds into the Conv.
    for before, after in _clip_inputs(optimized).items():
        ranges[before] = ranges[after]
    quantizer = QDQQuantizer(
        optimized,
        True,  # per_channel weights
        False,  # reduce_range: not needed with VNNI (u8s8 without saturation)
        QuantType.QInt8,
        QuantType.QUInt8,
        TensorsData(CalibrationMethod.MinMax, ranges),
        [],  # nodes_to_quantize: all that match
        [n.name for n in optimized.graph.node if n.name.startswith(POST_PREFIX)],
        list(CPU_QUANTIZED_OPS),
        {"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    _toposort(quantized)
    require("onnx", "export").checker.check_model(quantized)
    return quantized


def _toposort(model: Any) -> None:
    """Order nodes so each comes after its inputs' producers (the quantizer appends its Q/DQ
    nodes at the end); otherwise the original order is kept, so the bytes are reproducible."""
    g = model.graph
    ready = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending = list(g.node)
    ordered: list[Any] = []
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise SsdTrtError(
                f"INT8 CPU graph has a cycle or a dangling input at {waiting[0].name}"
            )
        pending = waiting
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del g.node[:]
    g.node.extend(copies)


def describe(model: Any) -> dict[str, int]:
    """Op counts of the network part, for logs and tests."""
    counts: dict[str, int] = {}
    for node in _network_nodes(model):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
