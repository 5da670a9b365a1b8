"""TensorRT runtime backend: a serialized engine run through cuda-python on one CUDA stream.

NOT EXECUTED in this project's environment: no machine here can run a TensorRT engine (the GPU
machine has no TensorRT, and TensorRT-RTX does not run on Hopper). It is written against the
documented TensorRT 10/11 Python API (Runtime, ICudaEngine, IExecutionContext.set_input_shape /
set_tensor_address / execute_async_v3, IOutputAllocator) and the CUDA runtime API of cuda-python.
The pure parts (buffer planning, profile checks, the CUDA-graph policy) are unit-tested.

Per inference: copy the batch into pinned host memory, async H2D, execute_async_v3, async D2H,
synchronize. When the input shape repeats, the enqueue is captured once as a CUDA graph and
replayed; a capture failure falls back to plain execution for good.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_NAME, ModelInfo
from ..errors import SsdTrtError, require
from ..precision.engine import EngineMetadata, read_engine_bytes
from ..precision.trt_compat import load_trt, local_gpu
from .base import Backend

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor; -1 marks a dynamic dimension."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]  # at the largest batch the profile allows
    dtype: np.dtype
    data_dependent: bool  # shape known only after execution: needs an output allocator

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan_buffers(specs: list[TensorSpec], max_batch: int) -> dict[str, Buffer]:
    """Size every I/O buffer for ``max_batch``; the batch is dimension 0 of every tensor.

    Outputs with a dynamic dimension other than the batch depend on the data (for example a raw
    NonMaxSuppression output); they get no fixed buffer and go through an output allocator.
    """
    plan = {}
    for spec in specs:
        if not spec.shape:
            raise SsdTrtError(f"engine tensor {spec.name} is a scalar; not an ssd_trt engine")
        rest = spec.shape[1:]
        dependent = not spec.is_input and any(d < 0 for d in rest)
        if spec.is_input and any(d < 0 for d in rest):
            raise SsdTrtError(
                f"engine input {spec.name} has dynamic dims {spec.shape} beyond the batch; "
                "export with a fixed image size"
            )
        shape = (max_batch, *(max(d, 0) for d in rest))
        plan[spec.name] = Buffer(spec.name, shape, spec.dtype, dependent)
    return plan


def check_batch(batch_shape: tuple[int, ...], profile: tuple[tuple[int, ...], ...]) -> None:
    """Raise a clear error when a batch falls outside the engine's (min, opt, max) profile."""
    lo, _, hi = profile
    if tuple(batch_shape[1:]) != tuple(hi[1:]):
        raise SsdTrtError(
            f"input shape {tuple(batch_shape)} does not match the engine's {tuple(hi[1:])} image "
            "size; preprocess to the model's input size"
        )
    if not lo[0] <= batch_shape[0] <= hi[0]:
        raise SsdTrtError(
            f"batch {batch_shape[0]} is outside the engine's profile [{lo[0]}, {hi[0]}]; "
            "rebuild with --min-batch/--max-batch, or split the batch"
        )


class GraphPolicy:
    """When to replay a captured CUDA graph and when to enqueue directly.

    A graph is only valid for the shapes it was captured with, so a new input shape runs once
    directly (which also lets TensorRT apply the shape change) and is then captured. If capture
    fails once, graphs stay off: some engines (data-dependent shapes, certain plugins) cannot be
    captured, and retrying every frame would cost more than it saves.
    """

    def __init__(
        self,
        enqueue: Callable[[], None],
        capture: Callable[[], Any],
        launch: Callable[[Any], None],
        release: Callable[[Any], None],
        enabled: bool = True,
    ) -> None:
        self._enqueue, self._capture, self._launch, self._release = (
            enqueue,
            capture,
            launch,
            release,
        )
        self.enabled = enabled
        self.shape: tuple[int, ...] | None = None
        self.graph: Any = None
        self.failure: str | None = None

    def run(self, shape: tuple[int, ...]) -> str:
        """Execute once for ``shape``; returns "graph", "captured" or "direct"."""
        if self.graph is not None and shape == self.shape:
            self._launch(self.graph)
            return "graph"
        self.drop()
        self._enqueue()
        if not self.enabled:
            return "direct"
        self.shape = shape
        try:
            self.graph = self._capture()
        except Exception as exc:  # any capture problem means: run without graphs
            self.enabled, self.failure = False, f"{type(exc).__name__}: {exc}"
            log.info("CUDA graph capture failed (%s); running without graphs", self.failure)
            return "direct"
        return "captured"

    def drop(self) -> None:
        if self.graph is not None:
            self._release(self.graph)
        self.graph, self.shape = None, None


# ------------------------------------------------------------------------------- cuda-python


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        return require("cuda.bindings.runtime", "tensorrt")


class CudaError(SsdTrtError):
    pass


def _check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, *values); raise with the CUDA error's name on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, name = cudart.cudaGetErrorName(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"CUDA error {name} in {what}")
    return values[0] if len(values) == 1 else tuple(values)


def _host_array(ptr: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    raw = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
    return raw.view(dtype).reshape(shape)


class TensorRTBackend(Backend):
    """Runs a serialized engine built by ``ssd-trt build`` (see engine.py)."""

    def __init__(self, engine_path: Path, cuda_graphs: bool = True) -> None:
        self.model_path = engine_path
        meta = EngineMetadata.load(engine_path)
        self.api = load_trt(meta.trt_flavour)
        gpu = local_gpu()
        if gpu is None:
            raise SsdTrtError(
                "no usable CUDA GPU (or cuda-python) here; TensorRT engines need one. "
                "Use the ONNX model with backend cpu instead"
            )
        meta.check_compatible(self.api, gpu[1])
        self.info = ModelInfo.from_metadata(meta.onnx_metadata, str(engine_path))
        self.name = "tensorrt"
        self.precision = meta.precision
        trt = self.api.trt
        self._resources: list[tuple[Callable[..., Any], Any]] = []
        try:
            self.cudart = cudart = _cudart()
            self.runtime = trt.Runtime(self.api.logger())
            self.engine = self.runtime.deserialize_cuda_engine(read_engine_bytes(engine_path, meta))
            if self.engine is None:
                raise SsdTrtError(f"TensorRT could not deserialize {engine_path}; rebuild it")
            self.context = self.engine.create_execution_context()
            specs = [
                TensorSpec(
                    name,
                    self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
                    tuple(self.engine.get_tensor_shape(name)),
                )
                for name in (
                    self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                )
            ]
            self.inputs = [s for s in specs if s.is_input]
            self.outputs = [s for s in specs if not s.is_input]
            if [s.name for s in self.inputs] != [INPUT_NAME]:
                raise SsdTrtError(
                    f"{engine_path} is not an ssd_trt engine (its inputs: {self.inputs})"
                )
            self.profile = tuple(
                tuple(d) for d in self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
            )
            self.max_batch = self.profile[2][0]
            self.plan = plan_buffers(specs, max_batch=self.max_batch)

            self.stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._resources.append((cudart.cudaStreamDestroy, self.stream))
            self.device: dict[str, int] = {}
            self.host: dict[str, np.ndarray] = {}
            self.allocators: dict[str, Any] = {}
            for name, buf in self.plan.items():
                if buf.data_dependent:
                    self.allocators[name] = _output_allocator(
                        trt, cudart, self._resources, buf.dtype
                    )
                    self.context.set_output_allocator(name, self.allocators[name])
                    continue
                dptr = _check(cudart, cudart.cudaMalloc(buf.nbytes), "cudaMalloc")
                self._resources.append((cudart.cudaFree, dptr))
                hptr = _check(cudart, cudart.cudaMallocHost(buf.nbytes), "cudaMallocHost")
                self._resources.append((cudart.cudaFreeHost, hptr))
                self.device[name] = int(dptr)
                self.host[name] = _host_array(int(hptr), buf.nbytes, buf.dtype, buf.shape)
                self.context.set_tensor_address(name, int(dptr))
        except BaseException:
            self.close()  # free what was allocated before the failure
            raise
        self.graphs = GraphPolicy(
            self._enqueue, self._capture, self._launch, self._release, enabled=cuda_graphs
        )

    # The three things GraphPolicy schedules.

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise SsdTrtError("TensorRT execute_async_v3 failed; run with --verbose for its log")

    def _capture(self) -> Any:
        c = self.cudart
        mode = c.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(c, c.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue()
        finally:
            graph = _check(c, c.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        try:
            return _check(c, c.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            c.cudaGraphDestroy(graph)

    def _launch(self, graph_exec: Any) -> None:
        _check(self.cudart, self.cudart.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    def _release(self, graph_exec: Any) -> None:
        self.cudart.cudaGraphExecDestroy(graph_exec)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        c, h2d = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_batch(images.shape, self.profile)
        n = images.shape[0]
        staged = self.host[INPUT_NAME][:n]
        np.copyto(staged, images, casting="same_kind")
        if not self.context.set_input_shape(INPUT_NAME, images.shape):
            raise SsdTrtError(f"TensorRT rejected input shape {images.shape}")
        _check(
            c,
            c.cudaMemcpyAsync(
                self.device[INPUT_NAME], staged.ctypes.data, staged.nbytes, h2d, self.stream
            ),
            "cudaMemcpyAsync H2D",
        )
        self.graphs.run(tuple(images.shape))
        out: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            if spec.name in self.allocators:
                continue
            shape = tuple(self.context.get_tensor_shape(spec.name))
            host = self.host[spec.name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            _check(
                c,
                c.cudaMemcpyAsync(
                    host.ctypes.data, self.device[spec.name], host.nbytes, d2h, self.stream
                ),
                "cudaMemcpyAsync D2H",
            )
            out[spec.name] = host
        _check(c, c.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        for name, alloc in self.allocators.items():
            out[name] = alloc.fetch(c, self.stream)
        return {k: v.copy() for k, v in out.items()}

    def close(self) -> None:
        if "graphs" in self.__dict__:
            self.graphs.drop()
        for free, handle in reversed(self._resources):
            free(handle)
        self._resources.clear()
        self.__dict__.pop("context", None)
        self.__dict__.pop("engine", None)


def _output_allocator(trt: Any, cudart: Any, resources: list, dtype: np.dtype) -> Any:
    """An IOutputAllocator that grows one device buffer per data-dependent output."""

    class Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.ptr, self.size, self.shape, self.dtype = 0, 0, (), dtype

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int):
            if size > self.size:  # outgrown buffers are freed with the backend's resources
                self.ptr = int(_check(cudart, cudart.cudaMalloc(size), "cudaMalloc"))
                self.size = size
                resources.append((cudart.cudaFree, self.ptr))
            return self.ptr

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(shape)

        def fetch(self, c: Any, stream: Any) -> np.ndarray:
            out = np.empty(self.shape, self.dtype)
            kind = c.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(
                c,
                c.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, kind, stream),
                "cudaMemcpyAsync D2H",
            )
            _check(c, c.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return out

    return Allocator()
