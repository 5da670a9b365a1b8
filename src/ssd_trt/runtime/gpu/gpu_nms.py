"""The fast path's NMS on the GPU: its scratch buffers, its five kernel launches, and the
profiling hooks the benchmarks read (kernels in cuda/nms.cu, the algorithm in ssd_trt.nms)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ...nms import NmsSettings
from .. import cuda
from . import kernels as gpu_kernels
from .ort_network import NetworkRunner
from .staging import record_words


def dtype_name(dtype: np.dtype) -> str:
    """The kernels' name suffix for a tensor dtype."""
    return "f16" if dtype == np.float16 else "f32"


class GpuNms:
    """Exact per-class NMS over a network batch's raw boxes and scores, writing one compact
    record per image (see staging.read_records) to ``out_ptr``, all on ``stream``."""

    def __init__(
        self,
        core: Any,
        kernels: gpu_kernels.Kernels,
        settings: NmsSettings,
        candidate_cap: int,
        allocate: Any,
        stream: Any,
        sm_count: int,
    ) -> None:
        self._core, self._kernels, self.settings = core, kernels, settings
        self.candidate_cap = candidate_cap
        self._allocate = allocate  # (size, what) -> device buffer, one-line OOM errors
        self._stream = stream
        self._sm_count = sm_count
        self.record_words = record_words(settings.max_total)
        self.debug_ptr = 0  # device pointer of 16 int64 phase stamps per image, or 0
        self._launches: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        self._mask: Any = None
        self._cand: Any = None  # candidate records [batch, CAND_WORDS] int32
        self._hist: Any = None  # stage-1 histograms [batch, NBINS] int32, kept zero
        self._count: Any = None  # stage-2 list lengths [batch] int32, kept zero
        self._out: Any = None
        self.out_ptr = 0

    @property
    def capacity(self) -> int:
        """Images the buffers hold."""
        return 0 if self._out is None else self._out.size // (self.record_words * 4)

    def grow(self, batch: int) -> None:
        """Buffers for ``batch`` images. Where they are replaced, the caller first drops the
        CUDA graphs that point at the old ones (the launch arguments are dropped here)."""
        if self.capacity >= batch:
            return
        stream = self._stream
        stream.sync()
        self._free()
        self._launches.clear()
        k = gpu_kernels
        self._mask = self._allocate(batch * k.MAX_CANDIDATES * 32 * 4, "NMS scratch")
        self._cand = self._allocate(batch * k.CAND_WORDS * 4, "NMS candidates")
        self._out = self._allocate(batch * self.record_words * 4, "NMS outputs")
        self._hist = self._allocate(batch * k.NBINS * 4, "NMS histograms")
        self._count = self._allocate(batch * 4, "NMS counters")
        self.out_ptr = int(self._out.handle)
        for buf in (self._hist, self._count):  # the NMS kernels keep them zero
            cuda.enqueue("cuMemsetD32Async", int(buf.handle), 0, buf.size // 4, stream=stream)

    def forget_launches(self) -> None:
        self._launches.clear()

    def launch(self, net: NetworkRunner) -> None:
        """Five kernels: a coarse score histogram and the candidate list above the cut, both
        with several blocks per image; one block per image for the exact top-``cap`` cut, the
        sort and the class grouping; the suppression rows, one warp per candidate; the walk,
        one warp per image, over the whole network batch. Arguments are built once per batch
        size."""
        key = (net.batch, self.debug_ptr)
        launches = self._launches.get(key)
        if launches is None:
            launches = self._launches[key] = self._arguments(net)
        launch, stream = self._core.launch, self._stream
        for args in launches:
            launch(stream, *args)

    def _arguments(self, net: NetworkRunner) -> list[tuple[Any, ...]]:
        s, core, k = self.settings, self._core, self._kernels
        sdt = dtype_name(net.dtypes["scores"])
        total = net.anchors * net.classes
        n = net.batch
        per_image = max(1, min(-(-total // 8192), -(-2 * self._sm_count // n)))
        thr = np.float32(s.score_threshold)
        grid = core.LaunchConfig(grid=(per_image, n), block=gpu_kernels.BLOCK_NMS)
        scores, anchors, classes = (
            np.uint64(net.ptr["scores"]), np.int32(net.anchors), np.int32(net.classes)
        )  # fmt: skip
        cap, warps = self.candidate_cap, gpu_kernels.ROW_WARPS
        return [
            (grid, k.nms_hist[sdt], scores, anchors, classes, thr, self._hist),
            (grid, k.nms_compact[sdt], scores, anchors, classes, thr, np.int32(cap),
             self._hist, self._count, self._mask),
            (
                core.LaunchConfig(grid=n, block=gpu_kernels.BLOCK_NMS),
                k.select_nms[(dtype_name(net.dtypes["boxes"]), sdt)],
                np.uint64(net.ptr["boxes"]), scores, anchors, classes, thr,
                np.float32(s.iou_threshold), np.int32(s.max_per_class), np.int32(s.max_total),
                np.int32(cap), self._mask, self._cand, self._hist, self._count,
                np.uint64(self.debug_ptr),
            ),
            (core.LaunchConfig(grid=(-(-cap // warps), n), block=32 * warps), k.nms_rows,
             self._cand, np.float32(s.iou_threshold), self._mask),
            (core.LaunchConfig(grid=n, block=32), k.nms_walk, self._cand, self._mask,
             np.int32(s.max_per_class), np.int32(s.max_total), self._out,
             np.uint64(self.debug_ptr)),
        ]  # fmt: skip

    @contextmanager
    def debug(self, pointer: int) -> Iterator[None]:
        """Within: the kernels write 16 int64 phase stamps per image to device memory at
        ``pointer`` (for launches of NMS alone, as ``profile`` does)."""
        self.debug_ptr = pointer
        try:
            yield
        finally:
            self.debug_ptr = 0

    def profile(self, net: NetworkRunner, device: Any, reps: int = 100) -> dict[str, Any]:
        """The kernels alone on ``net``'s last outputs (CUDA events, ms per run), and the select
        kernel's phase stamps (us, mean over images; the last phase is rows + walk)."""
        stream = self._stream
        opts = self._core.EventOptions(timing_enabled=True)
        a, b = (device.create_event(options=opts) for _ in range(2))
        self.launch(net)
        stream.record(a)
        for _ in range(reps):
            self.launch(net)
        stream.record(b)
        b.sync()
        stamps = np.zeros(net.batch * 16, np.int64)
        scratch = device.allocate(stamps.nbytes, stream=stream)
        try:
            with self.debug(int(scratch.handle)):
                for _ in range(3):
                    self.launch(net)
                stream.sync()
                cuda.call("cuMemcpyDtoH", stamps.ctypes.data, int(scratch.handle), stamps.nbytes)
        finally:
            stream.sync()
            scratch.close(stream)
        t = stamps.reshape(net.batch, 16)[:, :8]
        return {
            "nms_ms": float(b - a) / reps,
            "select_phases_us": (np.diff(t, axis=1).mean(0) / 1e3).round(2).tolist(),
        }

    def _free(self) -> None:
        for buf in (self._mask, self._cand, self._out, self._hist, self._count):
            if buf is not None:
                buf.close(self._stream)
        self._mask = self._cand = self._out = self._hist = self._count = None
        self.out_ptr = 0

    def close(self) -> None:
        self._free()
        self._launches.clear()
