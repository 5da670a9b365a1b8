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
from ..errors import SsdTrtError
from ..precision.engine import EngineMetadata
from ..precision.trt_compat import load_trt, local_gpu
from .base import Network
from .cuda import GraphPolicy, check, cudart
from .trt_engine import load_engine

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


def plan_buffers(specs: list[TensorSpec]) -> dict[str, Buffer]:
    """Size every I/O buffer from its shape at the profile's largest input.

    ``specs`` carry the input's max shape and the outputs' shapes as the execution context
    resolves them for that input. An output dimension that is still -1 depends on the data (a
    raw NonMaxSuppression output, for example): it gets no fixed buffer and goes through an
    output allocator.
    """
    plan = {}
    for spec in specs:
        if not spec.shape:
            raise SsdTrtError(f"engine tensor {spec.name} is a scalar; not an ssd_trt engine")
        dynamic = any(d < 0 for d in spec.shape)
        if spec.is_input and dynamic:
            raise SsdTrtError(
                f"engine input {spec.name} has dynamic dims {spec.shape} at the profile's max; "
                "export with a fixed image size"
            )
        shape = tuple(max(d, 0) for d in spec.shape)
        plan[spec.name] = Buffer(spec.name, shape, spec.dtype, dynamic and not spec.is_input)
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


def _host_array(ptr: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    raw = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
    return raw.view(dtype).reshape(shape)


class TensorRTBackend(Network):
    """Runs a serialized engine built by ``ssd-trt build`` (see precision/engine.py)."""

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
        self.stream: Any = None
        try:
            self.rt = rt = cudart()
            self.loaded = load_engine(engine_path, meta, self.api)
            self.trt_log, self.engine = self.loaded.log, self.loaded.engine
            self.context = self.loaded.context
            names = self.loaded.tensor_names
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if inputs != [INPUT_NAME]:
                raise SsdTrtError(f"{engine_path} is not an ssd_trt engine (its inputs: {inputs})")
            self.profile = tuple(
                tuple(d) for d in self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
            )
            self.max_batch = self.profile[2][0]
            # Output shapes at the largest input: a dimension still -1 then depends on the data.
            if not self.context.set_input_shape(INPUT_NAME, self.profile[2]):
                raise SsdTrtError(f"TensorRT rejected the profile's max shape {self.profile[2]}")
            specs = [
                TensorSpec(
                    n,
                    n == INPUT_NAME,
                    np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))),
                    tuple(self.profile[2] if n == INPUT_NAME else self.context.get_tensor_shape(n)),
                )
                for n in names
            ]
            self.outputs = [s for s in specs if not s.is_input]
            self.plan = plan_buffers(specs)

            self.stream = check(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
            self._resources.append((rt.cudaStreamDestroy, self.stream))
            self.device: dict[str, int] = {}
            self.host: dict[str, np.ndarray] = {}
            self.allocators: dict[str, Any] = {}
            for name, buf in self.plan.items():
                if buf.data_dependent:
                    self.allocators[name] = _output_allocator(trt, rt, self._resources, buf.dtype)
                    self.context.set_output_allocator(name, self.allocators[name])
                    continue
                dptr = check(rt, rt.cudaMalloc(buf.nbytes), "cudaMalloc")
                self._resources.append((rt.cudaFree, dptr))
                hptr = check(rt, rt.cudaMallocHost(buf.nbytes), "cudaMallocHost")
                self._resources.append((rt.cudaFreeHost, hptr))
                self.device[name] = int(dptr)
                self.host[name] = _host_array(int(hptr), buf.nbytes, buf.dtype, buf.shape)
                self.context.set_tensor_address(name, int(dptr))
        except BaseException:
            self.close()  # free what was allocated before the failure
            raise
        # TensorRT-RTX captures graphs itself (its runtime config). TensorRT's NMS layer copies a
        # count to the host during enqueue, which capture forbids: engines with NMS run direct.
        self.graphs = GraphPolicy.on_stream(
            self._enqueue,
            self.stream,
            enabled=cuda_graphs and self.api.flavour == "tensorrt" and self.info.raw_outputs,
        )

    def _enqueue(self) -> None:
        self.loaded.enqueue(int(self.stream))

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        rt, h2d = self.rt, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_batch(images.shape, self.profile)
        n = images.shape[0]
        staged = self.host[INPUT_NAME][:n]
        np.copyto(staged, images, casting="same_kind")
        if not self.context.set_input_shape(INPUT_NAME, images.shape):
            raise SsdTrtError(f"TensorRT rejected input shape {images.shape}")
        check(
            rt,
            rt.cudaMemcpyAsync(
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
            check(
                rt,
                rt.cudaMemcpyAsync(
                    host.ctypes.data, self.device[spec.name], host.nbytes, d2h, self.stream
                ),
                "cudaMemcpyAsync D2H",
            )
            out[spec.name] = host
        check(rt, rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        for name, alloc in self.allocators.items():
            out[name] = alloc.fetch(rt, self.stream)
        return {k: v.copy() for k, v in out.items()}

    def close(self) -> None:
        if self.stream is not None:
            # Work may still be queued on the buffers about to be freed.
            self.rt.cudaStreamSynchronize(self.stream)
        if "graphs" in self.__dict__:
            self.graphs.drop()
        for free, handle in reversed(self._resources):
            free(handle)
        self._resources.clear()
        self.stream = None
        self.__dict__.pop("context", None)
        self.__dict__.pop("engine", None)
        if "loaded" in self.__dict__:
            self.loaded.release()


def _output_allocator(trt: Any, rt: Any, resources: list, dtype: np.dtype) -> Any:
    """An IOutputAllocator that grows one device buffer per data-dependent output."""

    class Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.ptr, self.size, self.shape, self.dtype = 0, 0, (), dtype

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int):
            # A 0-byte output still needs a valid address: TensorRT reads null as failure.
            size = max(int(size), 1)
            if size > self.size:  # outgrown buffers are freed with the backend's resources
                self.ptr = int(check(rt, rt.cudaMalloc(size), "cudaMalloc"))
                self.size = size
                resources.append((rt.cudaFree, self.ptr))
            return self.ptr

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ):
            # TensorRT >= 10 calls this one; the allocation itself is synchronous, which is safe.
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(shape)

        def fetch(self, rt_: Any, stream: Any) -> np.ndarray:
            out = np.empty(self.shape, self.dtype)
            kind = rt_.cudaMemcpyKind.cudaMemcpyDeviceToHost
            if out.nbytes:
                check(
                    rt_,
                    rt_.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, kind, stream),
                    "cudaMemcpyAsync D2H",
                )
                check(rt_, rt_.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return out

    return Allocator()
