"""The shared cuda-python runtime pieces on a real GPU: CUDA-graph capture failure handling and
the TensorRT output allocator's buffers. Run on the GPU machine with ``pytest -m gpu``; they skip
(one reason) where there is no GPU or no cuda-python."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_trt.precision.trt_compat import local_gpu
from ssd_trt.runtime.cuda import (
    CaptureFailed,
    GraphPolicy,
    capture_graph,
    check,
    cudart,
    destroy_graph,
    launch_graph,
)
from ssd_trt.runtime.tensorrt import _output_allocator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(local_gpu() is None, reason="needs an NVIDIA GPU and cuda-python"),
]


@pytest.fixture
def rt_stream():
    rt = cudart()
    stream = check(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
    yield rt, stream
    rt.cudaStreamSynchronize(stream)
    rt.cudaStreamDestroy(stream)


def _device_buffer(rt, nbytes: int) -> int:
    return int(check(rt, rt.cudaMalloc(nbytes), "cudaMalloc"))


def test_failed_capture_reports_the_cause_clears_the_error_and_runs_without_graphs(rt_stream):
    rt, stream = rt_stream
    n = 1 << 20
    host = np.arange(n, dtype=np.uint8)
    back = np.zeros_like(host)
    dev = _device_buffer(rt, n)
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    try:

        def work() -> None:
            check(rt, rt.cudaMemcpyAsync(dev, host.ctypes.data, n, h2d, stream), "H2D")
            # A host synchronization inside the captured region: forbidden during capture.
            check(rt, rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize in work")

        with pytest.raises(CaptureFailed) as failed:
            capture_graph(rt, stream, work)
        # The original cause, not the capture-invalidated error that ending the capture returns.
        assert "cudaStreamSynchronize in work" in str(failed.value)
        assert "Invalidated" not in str(failed.value)
        (err,) = rt.cudaGetLastError()
        assert int(err) == 0  # nothing left pending for the next CUDA call
        is_capturing = check(rt, rt.cudaStreamIsCapturing(stream), "cudaStreamIsCapturing")
        assert int(is_capturing) == 0  # the stream is usable again

        runs = []
        policy = GraphPolicy(
            lambda: runs.append(work()),
            lambda: capture_graph(rt, stream, work),
            lambda g: launch_graph(g, stream),
            destroy_graph,
        )
        assert policy.run((1,)) == "direct" and not policy.enabled
        assert "cudaStreamSynchronize in work" in (policy.failure or "")
        assert policy.run((1,)) == "direct" and len(runs) == 2  # the next run works, no graphs
        check(rt, rt.cudaMemcpyAsync(back.ctypes.data, dev, n, d2h, stream), "D2H")
        check(rt, rt.cudaStreamSynchronize(stream), "sync")
        assert np.array_equal(back, host)
    finally:
        rt.cudaFree(dev)


def test_capture_then_replay_copies_new_data(rt_stream):
    rt, stream = rt_stream
    n = 4096
    src = np.zeros(n, np.float32)
    dst = np.zeros(n, np.float32)
    a, b = _device_buffer(rt, n * 4), _device_buffer(rt, n * 4)
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    try:

        def work() -> None:
            check(rt, rt.cudaMemcpyAsync(b, a, n * 4, d2d, stream), "D2D")

        policy = GraphPolicy(
            work,
            lambda: capture_graph(rt, stream, work),
            lambda g: launch_graph(g, stream),
            destroy_graph,
        )
        for step, want in enumerate(("captured", "graph", "graph")):
            src[:] = step + 1
            check(rt, rt.cudaMemcpyAsync(a, src.ctypes.data, n * 4, h2d, stream), "H2D")
            assert policy.run((n,)) == want
            check(rt, rt.cudaMemcpyAsync(dst.ctypes.data, b, n * 4, d2h, stream), "D2H")
            check(rt, rt.cudaStreamSynchronize(stream), "sync")
            assert (dst == step + 1).all()
        policy.drop()
    finally:
        rt.cudaFree(a)
        rt.cudaFree(b)


class _NoTensorRT:
    """Stands in for trt.IOutputAllocator's base class: TensorRT is not on the GPU machine."""

    IOutputAllocator = object


def test_output_allocator_never_returns_null_and_grows(rt_stream):
    rt, stream = rt_stream
    resources: list = []
    alloc = _output_allocator(_NoTensorRT, rt, resources, np.dtype(np.int64))
    try:
        first = alloc.reallocate_output_async("nms", 0, 0, 256, int(stream))
        assert first != 0 and alloc.size == 1  # a 0-byte request still gets an address
        assert alloc.reallocate_output("nms", first, 1, 256) == first  # fits: same buffer
        bigger = alloc.reallocate_output("nms", first, 3 * 8 * 10, 256)
        assert bigger != 0 and alloc.size == 240
        alloc.notify_shape("nms", (0, 3))
        assert alloc.fetch(rt, stream).shape == (0, 3)  # an empty result copies nothing
    finally:
        for free, handle in resources:
            free(handle)
