"""The fast path's network in ONNX Runtime's CUDA provider, and the runner interface it shares
with the TensorRT runner (trt_network.py).

One session per batch size, bound with IOBinding to fixed device buffers on the fast path's
stream (``user_compute_stream``) and replayed as ONNX Runtime's own CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import SsdTrtError, first_line, require
from ...nms import NmsSettings
from ...preprocess import PreprocessConfig


@dataclass(frozen=True)
class ModelSpec:
    """What the fast path needs from the exported ONNX's ``ssd_trt.*`` metadata (contract)."""

    preprocess: PreprocessConfig
    nms: NmsSettings


class NetworkRunner(Protocol):
    """The network for one batch size on the fast path's stream and device buffers: ONNX
    Runtime's CUDA provider (``_Network``) or a TensorRT engine (trt_network.TensorRTNetwork)."""

    batch: int
    dtypes: dict[str, np.dtype]
    anchors: int
    classes: int
    ptr: dict[str, int]

    def warm_up(self, stream: Any, runs: int = 3) -> None: ...
    def run(self) -> None: ...
    def close(self, stream: Any) -> None: ...


def _ancestors(graph: Any, names: Sequence[str]) -> set[str]:
    """First output names of the nodes the tensors ``names`` depend on (protobuf node objects
    are not stable under ``id``)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    stack = [producer[x] for x in names if x in producer]
    while stack:
        node = stack.pop()
        if node.output[0] in seen:
            continue
        seen.add(node.output[0])
        stack += [producer[x] for x in node.input if x in producer]
    return seen


def fp16_model_bytes(onnx_path: Path, *, keep_fp32: str = "none") -> bytes:
    """The network in float16, inputs and outputs included.

    The preprocess kernel writes float16 and the NMS kernels read float16 boxes and scores, so
    no Cast surrounds the network (the first conversion, float32 heads, box decoding, sigmoid
    and float32 inputs/outputs, ran slower than float32 on an H100). ``keep_fp32``: "none"
    (everything float16), "box_decode" (the nodes only the ``boxes`` output needs after the
    convolutions stay float32), "heads" (every node after the convolutions stays float32).
    """
    onnx = require("onnx", "export")
    float16 = require("onnxruntime.transformers.float16", "gpu")
    model = onnx.load(str(onnx_path))
    graph = model.graph
    convs = [n.output[0] for n in graph.node if n.op_type == "Conv"]
    backbone = _ancestors(graph, convs) | set(convs)
    if keep_fp32 == "none":
        keep: set[str] = set()
    elif keep_fp32 == "box_decode":
        keep = _ancestors(graph, ["boxes"]) - _ancestors(graph, ["scores"])
    elif keep_fp32 == "heads":
        keep = {n.output[0] for n in graph.node}
    else:
        raise SsdTrtError(f"keep_fp32 is none, box_decode or heads, not {keep_fp32!r}")
    block = [
        n.name
        for n in graph.node
        if n.output[0] in keep and n.op_type != "Conv" and n.output[0] not in backbone and n.name
    ]
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=False,
        node_block_list=block or None,
        disable_shape_infer=False,
    )
    # Some converter versions insert the same Cast once per consumer, under one node name and
    # one output name: keep the first of such identical Casts, and make node names unique.
    produced: dict[str, Any] = {}
    names: set[str] = set()
    kept = []
    for i, node in enumerate(converted.graph.node):
        twin = produced.get(node.output[0]) if node.output else None
        if twin is not None and node.op_type == "Cast" and twin.input == node.input:
            continue
        for out in node.output:
            produced[out] = node
        if node.name in names:
            node.name = f"{node.name}_{i}"
        names.add(node.name)
        kept.append(node)
    del converted.graph.node[:]
    converted.graph.node.extend(kept)
    return converted.SerializeToString()


class OrtNetwork:
    """One ORT session for one batch size, bound to fixed device buffers on our stream."""

    def __init__(
        self,
        ort: Any,
        model: bytes | str,
        batch: int,
        spec: ModelSpec,
        device: Any,
        stream: Any,
        *,
        cuda_graphs: bool,
        tf32: bool,
        extra_provider_options: dict[str, str],
    ) -> None:
        self.batch = batch
        self.buffers: list[Any] = []
        options = {
            "device_id": str(device.device_id),
            "user_compute_stream": str(int(stream.handle)),
            "has_user_compute_stream": "1",
            "enable_cuda_graph": "1" if cuda_graphs else "0",
            "use_tf32": "1" if tf32 else "0",
            **extra_provider_options,
        }
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                model, so, providers=[("CUDAExecutionProvider", options)]
            )
        except Exception as exc:
            raise SsdTrtError(f"ONNX Runtime cannot load the network: {first_line(exc)}") from exc
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise SsdTrtError("ONNX Runtime did not take the CUDA execution provider")
        by_name = {t.name: t for t in self.session.get_inputs() + self.session.get_outputs()}
        missing = {"images", "boxes", "scores"} - set(by_name)
        if missing:
            raise SsdTrtError(
                f"the network lacks {sorted(missing)}; the fast path needs an '--nms none' export"
            )
        self.dtypes = {n: np_dtype(by_name[n].type) for n in ("images", "boxes", "scores")}
        self.anchors, self.classes = static_dims(by_name["scores"].shape[1:], "scores")
        h, w = spec.preprocess.height, spec.preprocess.width
        shapes = {
            "images": (batch, 3, h, w),
            "boxes": (batch, self.anchors, 4),
            "scores": (batch, self.anchors, self.classes),
        }
        self.ptr: dict[str, int] = {}
        try:
            for name, shape in shapes.items():
                size = int(np.prod(shape)) * self.dtypes[name].itemsize
                buf = device.allocate(size, stream=stream)
                self.buffers.append(buf)
                self.ptr[name] = int(buf.handle)
        except Exception:
            self.close(stream)
            raise
        self.binding = self.session.io_binding()
        self.binding.bind_input(
            "images", "cuda", device.device_id, self.dtypes["images"], shapes["images"],
            self.ptr["images"],
        )  # fmt: skip
        for name in ("boxes", "scores"):
            self.binding.bind_output(
                name, "cuda", device.device_id, self.dtypes[name], shapes[name], self.ptr[name]
            )
        self.run_options = ort.RunOptions()
        # Our stream orders everything; ORT must not wait for its stream after each run.
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def warm_up(self, stream: Any, runs: int = 3) -> None:
        """Regular runs, then the CUDA graph capture (ORT captures on an early run)."""
        for _ in range(runs):
            self.run()
        stream.sync()

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding, self.run_options)

    def close(self, stream: Any) -> None:
        self.__dict__.pop("binding", None)
        self.__dict__.pop("session", None)
        for buf in self.buffers:
            buf.close(stream)
        self.buffers.clear()


def np_dtype(ort_type: str) -> np.dtype:
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    if ort_type not in table:
        raise SsdTrtError(f"the fast path reads float32 or float16 tensors, not {ort_type}")
    return np.dtype(table[ort_type])


def static_dims(dims: Sequence[Any], name: str) -> tuple[int, int]:
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise SsdTrtError(f"output {name} needs static [A, C] dimensions, not {list(dims)}")
    return int(dims[0]), int(dims[1])
