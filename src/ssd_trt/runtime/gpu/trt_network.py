"""The fast path's network as a TensorRT engine, in place of ONNX Runtime's CUDA provider.

The engine is built from the ``--nms none`` network, bound to the fast path's device buffers
and enqueued on its stream, so TensorRT and ONNX Runtime differ only in the call that runs the
network: the resize kernel before it and the NMS kernel after it are the same. The enqueue is
captured as a CUDA graph with runtime.cuda_graph (TensorRT-RTX captures graphs itself).

NOT EXECUTED here: no machine of this project can run a TensorRT engine (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...contract import INPUT_NAME, RAW_OUTPUTS
from ...errors import SsdTrtError
from ...precision.engine import EngineMetadata, read_engine_bytes
from ...precision.trt_compat import load_trt
from ...preprocess import PreprocessConfig
from ..cuda_graph import GraphPolicy, capture_graph, check, cudart


class TensorRTNetwork:
    """One execution context for one batch size, with the fast path's network interface:
    ``batch``, ``dtypes``, ``anchors``, ``classes``, ``ptr`` (device buffers by tensor name),
    ``warm_up``, ``run`` and ``close``."""

    def __init__(
        self,
        engine_path: Path,
        batch: int,
        preprocess: PreprocessConfig,
        device: Any,
        stream: Any,
        *,
        cuda_graphs: bool = True,
    ) -> None:
        meta = EngineMetadata.load(engine_path)
        api = load_trt(meta.trt_flavour)
        trt = api.trt
        self.batch = batch
        self.buffers: list[Any] = []
        self.rt = cudart()
        self.stream = int(stream.handle)
        self.trt_log = api.logger()
        api.init_plugins(self.trt_log)
        self.runtime = trt.Runtime(self.trt_log)
        self.engine = self.runtime.deserialize_cuda_engine(read_engine_bytes(engine_path, meta))
        if self.engine is None:
            raise SsdTrtError(f"TensorRT could not deserialize {engine_path}; rebuild it")
        self.context = api.execution_context(self.engine)
        if self.context is None:
            raise SsdTrtError(f"TensorRT could not create an execution context for {engine_path}")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {INPUT_NAME, *RAW_OUTPUTS}:
            raise SsdTrtError(
                f"{engine_path} is not a '--nms none' engine (its tensors: {sorted(names)}); "
                "the fast path runs NMS itself"
            )
        shapes = {INPUT_NAME: (batch, 3, preprocess.height, preprocess.width)}
        if not self.context.set_input_shape(INPUT_NAME, shapes[INPUT_NAME]):
            raise SsdTrtError(f"{engine_path}'s profile does not allow batch {batch}")
        for name in RAW_OUTPUTS:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in shapes}
        self.anchors, self.classes = shapes["scores"][1], shapes["scores"][2]
        self.ptr: dict[str, int] = {}
        try:
            for name, shape in shapes.items():
                buf = device.allocate(
                    int(np.prod(shape)) * self.dtypes[name].itemsize, stream=stream
                )
                self.buffers.append(buf)
                self.ptr[name] = int(buf.handle)
                self.context.set_tensor_address(name, self.ptr[name])
        except BaseException:
            self.close(stream)
            raise
        self.graphs = GraphPolicy(
            self._enqueue,
            lambda: capture_graph(self.rt, self.stream, self._enqueue),
            lambda g: check(self.rt, self.rt.cudaGraphLaunch(g, self.stream), "cudaGraphLaunch"),
            self.rt.cudaGraphExecDestroy,
            enabled=cuda_graphs and api.flavour == "tensorrt",
        )

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            last = self.trt_log.errors[-1] if self.trt_log.errors else "no details"
            raise SsdTrtError(f"TensorRT execute_async_v3 failed: {' '.join(last.split())}")

    def warm_up(self, stream: Any, runs: int = 3) -> None:
        for _ in range(runs):  # the first runs directly, the second captures, then replays
            self.run()
        stream.sync()

    def run(self) -> None:
        self.graphs.run((self.batch,))

    def close(self, stream: Any) -> None:
        if "graphs" in self.__dict__:
            self.graphs.drop()
        for buf in self.buffers:
            buf.close(stream)
        self.buffers.clear()
        self.__dict__.pop("context", None)
        self.__dict__.pop("engine", None)
