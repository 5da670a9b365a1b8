"""The CUDA seam: every raw cuda-python call of the GPU runtimes goes through here.

Loading the driver and runtime APIs (cuda.bindings, or the cuda-python < 12.6 names), one-line
errors, stream-ordered driver calls, page-locked host buffers, and THE one stream-capture
helper with the graph launch and release that go with it. The fast path (runtime/gpu/) and
both TensorRT runners use these; nothing else in the package speaks to CUDA directly, as
Polygraphy keeps its own in one cuda module.

Capture: a failed capture ends the capture anyway, destroys any partial graph, clears the error
it left pending (ONNX Runtime and TensorRT check it on their next call) and reports the ORIGINAL
cause (the failing call inside the captured region), not the ``CUDA_ERROR_STREAM_CAPTURE_
INVALIDATED`` that ending the capture returns. Runners that follow trtexec's order (run once
directly, synchronize, then capture) ask for the synchronization with ``sync_first``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from ..errors import SsdTrtError, require

log = logging.getLogger(__name__)


class CudaError(SsdTrtError):
    pass


class CaptureFailed(SsdTrtError):
    """A CUDA graph could not be captured; ``cause`` is the error raised inside the capture."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"CUDA graph capture failed: {type(cause).__name__}: {cause}")
        self.cause = cause


# ------------------------------------------------------------------------------ the APIs


@cache
def driver() -> Any:
    """The CUDA driver API of cuda-python (cuda.bindings.driver, or cuda.cuda before 12.6).
    Cached like an import: the module, not state of ours."""
    try:
        from cuda.bindings import driver as drv

        return drv
    except ImportError:
        pass
    try:
        from cuda import cuda as legacy

        return legacy
    except ImportError:
        return require("cuda.bindings.driver", "gpu")


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


def error_name(rt: Any, err: Any) -> str:
    _, name = rt.cudaGetErrorName(err)
    return name.decode() if isinstance(name, bytes) else str(name)


def check(rt: Any, result: Any, what: str) -> Any:
    """A runtime-API call's result (error, *values): raise with the error's name on failure,
    else return the values (one, a tuple, or None)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CudaError(f"CUDA error {error_name(rt, err)} in {what}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def check_driver(result: Any, what: str) -> Any:
    """``check`` for driver-API calls (whose errors are CUresult values)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CudaError(f"{what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def stream_handle(stream: Any) -> int:
    """The raw handle of a cuda.core Stream, a CUstream/cudaStream_t or an int."""
    return int(getattr(stream, "handle", stream))


def enqueue(name: str, *args: Any, stream: Any) -> None:
    """A stream-ordered driver call (``cuMemcpyHtoDAsync``, ``cuMemsetD8Async``, ...) with the
    stream as its last argument; raises on failure."""
    check_driver(getattr(driver(), name)(*args, stream_handle(stream)), name)


def call(name: str, *args: Any) -> Any:
    """A synchronous driver call; raises on failure, returns its values."""
    return check_driver(getattr(driver(), name)(*args), name)


def record(event: Any, stream: Any, *, capturing: bool) -> None:
    """Record a cuda.core ``event`` on ``stream``. While capturing, as an external event
    record: a graph node that records it again on every replay (a plain record inside a
    capture would only mark the graph's internal dependency)."""
    if not capturing:
        stream.record(event)
        return
    drv = driver()
    flag = int(drv.CUevent_record_flags.CU_EVENT_RECORD_EXTERNAL)
    call("cuEventRecordWithFlags", event.handle, stream_handle(stream), flag)


def wait_event(stream: Any, event: int) -> None:
    """``stream``'s later work waits for the raw CUevent ``event`` (e.g. a decoder's)."""
    call("cuStreamWaitEvent", stream_handle(stream), event, 0)


def wait_stream(stream: Any, producer: int, event: Any) -> None:
    """``stream``'s later work waits for what is queued now on the raw stream ``producer``:
    ``event`` (a cuda.core Event, reusable at once) is recorded there and waited on here."""
    call("cuEventRecord", event.handle, producer)
    call("cuStreamWaitEvent", stream_handle(stream), event.handle, 0)


def copy_rows(dst: int, src: int, src_pitch: int, row_bytes: int, rows: int, stream: Any) -> None:
    """Device-to-device copy of ``rows`` rows of ``row_bytes`` from a pitched source into a
    packed destination, ordered on ``stream``."""
    if src_pitch == row_bytes:
        enqueue("cuMemcpyDtoDAsync", dst, src, row_bytes * rows, stream=stream)
        return
    copy = _copy_2d(src, src_pitch, row_bytes, rows)
    copy.dstMemoryType = driver().CUmemorytype.CU_MEMORYTYPE_DEVICE
    copy.dstDevice = dst
    copy.dstPitch = row_bytes
    enqueue("cuMemcpy2DAsync", copy, stream=stream)


def _copy_2d(src: int, src_pitch: int, row_bytes: int, rows: int) -> Any:
    """A CUDA_MEMCPY2D from device rows; the caller fills in the destination."""
    drv = driver()
    copy = drv.CUDA_MEMCPY2D()
    copy.srcMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
    copy.srcDevice = src
    copy.srcPitch = src_pitch
    copy.WidthInBytes = row_bytes
    copy.Height = rows
    return copy


# ------------------------------------------------------------------------------ graphs


def capture(stream: Any, work: Callable[[], None], *, sync_first: bool = False) -> Any:
    """``work()``'s launches on ``stream`` captured into an instantiated graph (CUgraphExec).
    Raises CaptureFailed (see the module docstring). ``sync_first``: wait for the stream's
    earlier work before capturing."""
    drv, handle = driver(), stream_handle(stream)
    if sync_first:
        check_driver(drv.cuStreamSynchronize(handle), "cuStreamSynchronize before capture")
    mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    check_driver(drv.cuStreamBeginCapture(handle, mode), "cuStreamBeginCapture")
    cause: BaseException | None = None
    try:
        work()
    except Exception as exc:  # noqa: BLE001 - reported as the cause below
        cause = exc
    except BaseException:  # Ctrl-C inside: end the capture, then let it through
        _end_and_discard(drv, handle)
        raise
    err, graph = drv.cuStreamEndCapture(handle)  # always end, or the stream stays capturing
    if cause is None and int(err) != 0:
        cause = CudaError(f"cuStreamEndCapture failed: {err}")
    if cause is not None:
        if graph is not None and int(graph):
            drv.cuGraphDestroy(graph)
        cudart().cudaGetLastError()  # the capture error is not sticky: clear it for the next call
        raise CaptureFailed(cause)
    try:
        return check_driver(drv.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
    finally:
        drv.cuGraphDestroy(graph)


def _end_and_discard(drv: Any, handle: int) -> None:
    err, graph = drv.cuStreamEndCapture(handle)
    if graph is not None and int(graph):
        drv.cuGraphDestroy(graph)
    cudart().cudaGetLastError()


def capture_graph(rt: Any, stream: Any, work: Callable[[], None]) -> Any:
    """``capture`` in trtexec's order (the stream synchronized first); the name the TensorRT
    runners used. ``rt`` is unused: kept for callers of the old signature."""
    del rt
    return capture(stream, work, sync_first=True)


def launch_graph(exe: Any, stream: Any) -> None:
    check_driver(driver().cuGraphLaunch(exe, stream_handle(stream)), "cuGraphLaunch")


def destroy_graph(exe: Any) -> None:
    if exe is not None:
        driver().cuGraphExecDestroy(exe)


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
        self._enqueue, self._capture = enqueue, capture
        self._launch, self._release = launch, release
        self.enabled = enabled
        self.shape: tuple[int, ...] | None = None
        self.graph: Any = None
        self.failure: str | None = None

    @classmethod
    def on_stream(cls, enqueue: Callable[[], None], stream: Any, enabled: bool) -> GraphPolicy:
        """The policy of a runner that enqueues on one stream: captured with ``capture``
        (trtexec's order), replayed with ``launch_graph``, released with ``destroy_graph``."""
        return cls(
            enqueue,
            lambda: capture(stream, enqueue, sync_first=True),
            lambda exe: launch_graph(exe, stream),
            destroy_graph,
            enabled=enabled,
        )

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


# ------------------------------------------------------------------------------ host memory


class PinnedBuffer:
    """Page-locked host memory (cuda.core) with a numpy view, grown on demand."""

    def __init__(self, core: Any) -> None:
        self._mr = core.LegacyPinnedMemoryResource()
        self.buffer: Any = None
        self.array = np.empty(0, np.uint8)

    def reserve(self, size: int) -> np.ndarray:
        if self.buffer is None or self.buffer.size < size:
            self.close()
            size = max(size, 1 << 20)
            self.buffer = self._mr.allocate(size, stream=None)
            raw = (ctypes.c_uint8 * size).from_address(int(self.buffer.handle))
            self.array = np.frombuffer(memoryview(raw), np.uint8)
        return self.array

    @property
    def ptr(self) -> int:
        return int(self.buffer.handle)

    def close(self) -> None:
        if self.buffer is not None:
            self.array = np.empty(0, np.uint8)
            self.buffer.close()
            self.buffer = None


def download_rows(
    planes: Sequence[tuple[int, int]],
    rows: Sequence[int],
    width: int,
    device_id: int = 0,
    after: int | None = None,
) -> np.ndarray:
    """Pitched device planes ((pointer, pitch) each, ``rows`` rows of ``width`` bytes) stacked
    into one packed host array [sum(rows), width]: synchronous copies, for pixels an output
    needs (a frame decoded on the GPU that is drawn or shown). Any thread may call it.
    ``after``: the raw stream that writes the planes (a decoder's); its work is waited for first,
    as the synchronous copy does not order itself after a non-blocking stream."""
    current(device_id)
    if after is not None:
        call("cuStreamSynchronize", after)
    host = np.empty((sum(rows), width), np.uint8)
    offset = 0
    for (ptr, pitch), n in zip(planes, rows, strict=True):
        copy = _copy_2d(ptr, pitch, width, n)
        drv = driver()
        copy.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_HOST
        copy.dstHost = host.ctypes.data + offset * width
        copy.dstPitch = width
        call("cuMemcpy2D", copy)
        offset += n
    return host


def current(device_id: int) -> None:
    """A CUDA context current on this thread: the device's primary one where the thread has none
    (an output thread downloading a decoded frame: seen on the H200 as CUDA_ERROR_INVALID_CONTEXT
    before this). A thread that already has one keeps it."""
    if not int(call("cuCtxGetCurrent")):
        rt = cudart()
        check(rt, rt.cudaSetDevice(device_id), "cudaSetDevice")


def new_stream(device_id: int) -> int:
    """A non-blocking stream of the device's primary context, as a raw ``CUstream`` handle: for a
    producer such as a decoder, whose readers order their work after it (``DeviceFrame.stream``)
    and which never waits for the legacy default stream. The stream holds a reference on the
    primary context (whatever context this thread has is left as it was); release both with
    ``destroy_stream``."""
    call("cuInit", 0)
    ctx = call("cuDevicePrimaryCtxRetain", device_id)
    try:
        call("cuCtxPushCurrent", ctx)
        try:
            return int(call("cuStreamCreate", int(driver().CUstream_flags.CU_STREAM_NON_BLOCKING)))
        finally:
            call("cuCtxPopCurrent")
    except BaseException:
        call("cuDevicePrimaryCtxRelease", device_id)
        raise


def destroy_stream(handle: int, device_id: int) -> None:
    """Release a stream from ``new_stream`` and its reference on the primary context, from any
    thread; work still queued on it completes first (CUDA frees it then)."""
    ctx = call("cuDevicePrimaryCtxRetain", device_id)
    call("cuCtxPushCurrent", ctx)
    try:
        call("cuStreamDestroy", handle)
    finally:
        call("cuCtxPopCurrent")
        call("cuDevicePrimaryCtxRelease", device_id)  # this call's
        call("cuDevicePrimaryCtxRelease", device_id)  # new_stream's


def block_on_waits(device_id: int) -> bool:
    """Ask for blocking synchronisation on the device's primary context (shared by ONNX Runtime,
    TensorRT and PyNvVideoCodec's decoders), so host threads waiting for the GPU sleep instead
    of spinning. It applies only where the context is not active yet; an active one keeps its
    flags (logged at debug). Returns whether the flags were set."""
    call("cuInit", 0)
    flags, active = call("cuDevicePrimaryCtxGetState", device_id)
    if active:
        log.debug("CUDA context of device %d already active (flags %#x): waits keep them",
                  device_id, int(flags))  # fmt: skip
        return False
    blocking = int(driver().CUctx_flags.CU_CTX_SCHED_BLOCKING_SYNC)
    call("cuDevicePrimaryCtxSetFlags", device_id, (int(flags) & ~0x7) | blocking)
    return True


def is_oom(exc: BaseException) -> bool:
    """Whether a CUDA/ONNX Runtime/TensorRT error means the GPU ran out of memory."""
    text = str(exc).lower()
    return "out_of_memory" in text or "out of memory" in text or "failed to allocate" in text
