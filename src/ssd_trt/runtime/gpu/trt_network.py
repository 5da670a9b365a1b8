"""The fast path's network as a TensorRT engine, in place of ONNX Runtime's CUDA provider.

The engine is built from the ``--nms none`` network, bound to the fast path's device buffers
and enqueued on its stream, so TensorRT and ONNX Runtime differ only in the call that runs the
network: the resize kernel before it and the NMS kernel after it are the same. The enqueue is
captured as a CUDA graph with runtime/cuda.py's GraphPolicy (TensorRT-RTX captures graphs
itself); the engine is opened by runtime/trt_engine.py, as for the host-array runner.

NOT EXECUTED here: no machine of this project can run a TensorRT engine (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...contract import INPUT_NAME, RAW_OUTPUTS
from ...errors import SsdTrtError
from ...preprocess import PreprocessConfig
from ..cuda import GraphPolicy
from ..trt_engine import load_engine


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
        self.batch = batch
        self.buffers: list[Any] = []
        self.stream = int(stream.handle)
        self.loaded = load_engine(engine_path)
        trt = self.loaded.api.trt
        self.engine, self.context = self.loaded.engine, self.loaded.context
        names = set(self.loaded.tensor_names)
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
        self.graphs = GraphPolicy.on_stream(
            lambda: self.loaded.enqueue(self.stream),
            self.stream,
            enabled=cuda_graphs and self.loaded.api.flavour == "tensorrt",
        )

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
        if "loaded" in self.__dict__:
            self.loaded.release()
