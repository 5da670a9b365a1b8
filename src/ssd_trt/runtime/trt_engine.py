"""Loading a serialized TensorRT engine, written once for both TensorRT runners.

``TensorRTBackend`` (host arrays, runtime/tensorrt.py) and the fast path's ``TensorRTNetwork``
(device buffers, runtime/gpu/trt_network.py) differ in how they bind buffers, not in how an
engine is opened: metadata, the TensorRT flavour that built it, plugins registered before
deserializing, the runtime, the engine, one execution context, and the error texts of each step.

NOT EXECUTED here: no machine of this project can run a TensorRT engine (see README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SsdTrtError
from ..precision.engine import EngineMetadata, read_engine_bytes
from ..precision.trt_compat import TrtApi, load_trt


@dataclass
class LoadedEngine:
    """An engine with its execution context. Keep it referenced as long as the context runs:
    TensorRT objects must outlive what they created (runtime > engine > context)."""

    path: Path
    meta: EngineMetadata
    api: TrtApi
    log: Any  # the TensorRT logger; collects error lines for one-line messages
    runtime: Any
    engine: Any
    context: Any

    @property
    def tensor_names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def enqueue(self, stream: int) -> None:
        """execute_async_v3 on ``stream``; its failure as one line with TensorRT's last error."""
        if not self.context.execute_async_v3(stream):
            last = self.log.errors[-1] if self.log.errors else "no details"
            raise SsdTrtError(f"TensorRT execute_async_v3 failed: {' '.join(last.split())}")

    def release(self) -> None:
        """Drop the context, then the engine (the order TensorRT needs)."""
        self.context = None
        self.engine = None


def load_engine(
    path: Path, meta: EngineMetadata | None = None, api: TrtApi | None = None
) -> LoadedEngine:
    """Open ``path`` (an ``ssd-trt build`` engine) with the TensorRT flavour that built it
    (``api``: that flavour, where the caller has loaded it already)."""
    meta = meta or EngineMetadata.load(path)
    api = api or load_trt(meta.trt_flavour)
    trt_log = api.logger()
    # Plugins (EfficientNMS_TRT) must be registered in this process before deserializing.
    api.init_plugins(trt_log)
    runtime = api.trt.Runtime(trt_log)
    engine = runtime.deserialize_cuda_engine(read_engine_bytes(path, meta))
    if engine is None:
        raise SsdTrtError(f"TensorRT could not deserialize {path}; rebuild it")
    context = api.execution_context(engine)
    if context is None:
        raise SsdTrtError(
            f"TensorRT could not create an execution context for {path} (out of GPU memory?)"
        )
    return LoadedEngine(path, meta, api, trt_log, runtime, engine, context)
