"""The shared cuda-python pieces of the GPU runtimes: CUDA runtime calls with one-line errors,
and CUDA graphs captured from a stream with a policy for when to replay them.

Capture follows trtexec's order: the work runs once directly, the stream is synchronized, then
the same work is captured. A failed capture ends the capture anyway, destroys any partial graph,
clears the error it left pending and reports the ORIGINAL cause (the failing call inside the
captured region), not the ``cudaErrorStreamCaptureInvalidated`` that ending the capture returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import SsdTrtError, require

log = logging.getLogger(__name__)


def cudart() -> Any:
    """The CUDA runtime API of cuda-python (cuda.bindings.runtime, or cuda.cudart before 12.6)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as legacy

        return legacy
    except ImportError:
        return require("cuda.bindings.runtime", "tensorrt")


class CudaError(SsdTrtError):
    pass


def check(rt: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, *values); raise with the CUDA error's name on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CudaError(f"CUDA error {error_name(rt, err)} in {what}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def error_name(rt: Any, err: Any) -> str:
    _, name = rt.cudaGetErrorName(err)
    return name.decode() if isinstance(name, bytes) else str(name)


class CaptureFailed(SsdTrtError):
    """A CUDA graph could not be captured; ``cause`` is the error raised inside the capture."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"CUDA graph capture failed: {type(cause).__name__}: {cause}")
        self.cause = cause


def capture_graph(rt: Any, stream: Any, work: Callable[[], None]) -> Any:
    """Capture ``work`` (enqueues on ``stream``) as an instantiated graph (cudaGraphExec_t)."""
    check(rt, rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize before capture")
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    check(rt, rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
    cause: BaseException | None = None
    try:
        work()
    except Exception as exc:  # noqa: BLE001 - reported as the cause below
        cause = exc
    err, graph = rt.cudaStreamEndCapture(stream)  # always end, or the stream stays capturing
    if cause is None and int(err) != 0:
        cause = CudaError(f"CUDA error {error_name(rt, err)} in cudaStreamEndCapture")
    if cause is not None:
        if graph is not None and int(err) == 0:
            rt.cudaGraphDestroy(graph)
        rt.cudaGetLastError()  # the capture error is not sticky: clear it for the next call
        raise CaptureFailed(cause)
    try:
        return check(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    finally:
        rt.cudaGraphDestroy(graph)


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
