"""GPU fast path: host uint8 frames -> host detections with one stream and one final wait.

Per batch, all on one cuda.core stream: the frames (any sizes) are packed into pinned host
memory and copied to the GPU in one transfer; a kernel resizes/normalizes them into the network
input; ONNX Runtime's CUDA execution provider runs the ``--nms none`` network on the same stream
(IOBinding on our buffers, replayed as a CUDA graph, one session per batch size because a graph
is captured for fixed shapes and addresses); a kernel selects the top candidates and runs exact
per-class NMS; the compact top-K rows are copied back to pinned memory. The host waits once.

``submit`` returns a handle without waiting, so the next frames can be decoded on the CPU while
the GPU works; ``collect`` waits for that batch. ``n_slots`` pinned buffer sets are rotated.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssd_trt.contract import ModelInfo
from ssd_trt.detection_batch import GPU_STAGES, TOTAL, DetectionBatch
from ssd_trt.errors import SsdTrtError, first_line, require
from ssd_trt.nms import NmsSettings
from ssd_trt.preprocess import check_image

from ..cuda_graph import cudart
from ..ort import provider_missing
from . import kernels as gpu_kernels
from .ort_network import ModelSpec, NetworkRunner, OrtNetwork, fp16_model_bytes
from .trt_network import TensorRTNetwork

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
STAGES = GPU_STAGES  # timed by CUDA events, in the one stage vocabulary (detection_batch)
_ALIGN = 256  # byte alignment of each frame in the packed upload
# Batches of at least this many frames are uploaded on a second stream, so that the upload of one
# batch overlaps the network of the previous one (at batch 1 the extra event wait only costs).
OVERLAP_MIN_BATCH = 8
# Our own CUDA graphs (batches below OVERLAP_MIN_BATCH): at most this many batch layouts.
MAX_GRAPHS = 64


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out_of_memory" in text or "out of memory" in text or "failed to allocate" in text


def _dtype_name(dtype: np.dtype) -> str:
    return "f16" if dtype == np.float16 else "f32"


_DRIVER: Any = None
_SUCCESS: Any = None
_CAPTURE_MODE: Any = None
_RECORD_EXTERNAL: Any = None


def _load_driver() -> Any:
    global _DRIVER, _SUCCESS, _CAPTURE_MODE, _RECORD_EXTERNAL
    if _DRIVER is None:
        drv = require("cuda.bindings.driver", "gpu")
        _SUCCESS = drv.CUresult.CUDA_SUCCESS
        _CAPTURE_MODE = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        _RECORD_EXTERNAL = int(drv.CUevent_record_flags.CU_EVENT_RECORD_EXTERNAL)
        _DRIVER = drv
    return _DRIVER


def _check(result: Any, what: str) -> None:
    err = result[0] if isinstance(result, tuple) else result
    if err != _SUCCESS:
        raise SsdTrtError(f"{what} failed: {err}")


def _graph_launch(exe: Any, stream: Any) -> None:
    _check(_DRIVER.cuGraphLaunch(exe, stream.handle), "cuGraphLaunch")


def _destroy_graph(parts: Sequence[Any]) -> None:
    for exe in parts:
        if exe is not None:
            _DRIVER.cuGraphExecDestroy(exe)


@dataclass(frozen=True)
class _Layout:
    """Where the frames of one list of frame shapes go in the packed upload. The header has a
    row per image of the network batch: padding rows repeat the last frame, so the kernels
    always run the whole batch and one graph serves any frame count that pads to it."""

    meta: np.ndarray  # uint8 bytes of the header: (offset, h, w, 0) int64 per frame
    spans: tuple[tuple[int, int], ...]  # byte range of each frame in the upload
    start: int  # first frame byte
    total: int  # bytes to upload

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, ...]], batch: int) -> _Layout:
        header = 4 * 8 * batch
        start = -(-header // _ALIGN) * _ALIGN
        meta = np.zeros((batch, 4), np.int64)
        spans, cursor = [], 0
        for i, shape in enumerate(shapes):
            nbytes = int(np.prod(shape))
            meta[i] = (cursor, shape[0], shape[1], 0)
            spans.append((start + cursor, start + cursor + nbytes))
            cursor += -(-nbytes // _ALIGN) * _ALIGN
        meta[len(shapes) :] = meta[len(shapes) - 1]
        return cls(meta.view(np.uint8).reshape(-1), tuple(spans), start, start + cursor)


def _driver_call(name: str, *args: Any) -> None:
    """A cuda.bindings driver call with stream-ordered semantics; raises on failure."""
    _load_driver()
    *rest, stream = args
    result = getattr(_DRIVER, name)(*rest, stream.handle)
    err = result[0] if isinstance(result, tuple) else result
    if err != _DRIVER.CUresult.CUDA_SUCCESS:
        raise SsdTrtError(f"{name} failed: {err}")


class _PinnedBuffer:
    """Page-locked host memory with a numpy view, grown on demand."""

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


@dataclass
class _Slot:
    """Host-side buffers and events of one batch in flight."""

    index: int
    upload: _PinnedBuffer
    download: _PinnedBuffer
    events: list[Any]  # recorded before upload and after each stage
    handle: FastPathHandle | None = None
    frames_dev: Any = None  # device copy of the packed frames (its batch is done on reuse)


@dataclass
class FastPathHandle:
    """A submitted batch. Pass it to ``GpuFastPath.collect``."""

    count: int
    _slot: _Slot
    _result: DetectionBatch | None = None
    _stage_ms: dict[str, float] = field(default_factory=dict)


class GpuFastPath:
    """Detections from uint8 frames on one NVIDIA GPU (see the module docstring).

    ``onnx_path``: an ``ssd-trt export --nms none`` ONNX. ``batch_sizes``: the network batch
    sizes (one CUDA graph each, built on first use; smaller batches are padded to the next size,
    larger ones split). ``fp16``: convert the network to float16. ``candidate_cap``: at most
    this many (anchor, class) candidates per image go into NMS (<= 1024). ``tf32``: let ORT use TF32
    convolutions in fp32 mode (ORT's own default; scores move by ~2e-3 against the CPU, network
    0.89 instead of 1.30 ms at batch 1 on an H100); ``tf32=False`` for plain float32.
    ``own_graphs``: everything after the upload (preprocess, network, NMS, download, events)
    replays from one CUDA graph of our own per (slot, batch size): the network's sessions run
    without ONNX Runtime's graph and their kernels are captured into ours, so a batch costs the
    host one copy and one graph launch. Where that capture fails, ONNX Runtime replays its own
    graph between two of ours ("split"; ``own_graphs="split"`` asks for it). ``cuda_graphs=False``:
    no graphs at all.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        device_id: int = 0,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        fp16: bool = False,
        candidate_cap: int = 1000,
        cuda_graphs: bool = True,
        tf32: bool = True,
        n_slots: int = 2,
        timing: bool = True,
        nms: NmsSettings | None = None,
        provider_options: dict[str, str] | None = None,
        large_batch: int = 16,
        large_batch_options: dict[str, str] | None = None,
        engine: Path | None = None,
        own_graphs: bool | str = True,
        info: ModelInfo | None = None,
    ) -> None:
        self._core = require("cuda.core", "gpu")
        _load_driver()
        self._ort = None if engine is not None else require("onnxruntime", "gpu")
        why = None if engine is not None else provider_missing("CUDAExecutionProvider", "cuda")
        if why is not None:
            raise SsdTrtError(why)
        sizes = sorted({int(b) for b in batch_sizes})
        if not sizes or sizes[0] < 1:
            raise SsdTrtError(f"batch sizes must be positive integers, not {list(batch_sizes)}")
        if not 1 <= candidate_cap <= gpu_kernels.MAX_CANDIDATES:
            raise SsdTrtError(f"candidate_cap must be 1..{gpu_kernels.MAX_CANDIDATES}")
        if n_slots < 1:
            raise SsdTrtError("n_slots must be at least 1")
        self.batch_sizes = tuple(sizes)
        self.candidate_cap = candidate_cap
        self.last_stage_ms: dict[str, float] = {}
        self._timing = timing
        self._cuda_graphs = cuda_graphs
        self._tf32 = tf32
        self._provider_options = dict(provider_options or {})
        # Batch sizes >= large_batch: no CUDA graph (launch overhead does not matter there) and
        # these provider options on top (e.g. prefer_nhwc, which graph capture refuses); None
        # keeps every batch size like the small ones.
        self._large_batch = large_batch
        self._large_options = None if large_batch_options is None else dict(large_batch_options)
        self._upload_stream: Any = None  # second stream for uploads of large batches
        self._networks: dict[int, NetworkRunner] = {}
        self._engine = engine  # a TensorRT engine of the --nms none network runs it instead
        self._slots: list[_Slot] = []
        self._next_slot = 0
        self._frames_dev: Any = None
        self._mask_dev: Any = None
        self._out_dev: Any = None
        self._cand_dev: Any = None  # NMS candidate records [batch, CAND_WORDS] int32
        self._hist_dev: Any = None  # NMS stage-1 histograms [batch, 2048] int32, kept zero
        self._count_dev: Any = None  # NMS stage-2 list lengths [batch] int32, kept zero
        self._nms_debug = 0  # device pointer of 16 int64 phase stamps per image, or 0
        self._out_ptr = 0
        # Host-side launch work done once: network per frame count, upload layout per list of
        # frame shapes, preprocess/NMS launch arguments, our own CUDA graphs per batch layout.
        self._net_for: dict[int, NetworkRunner] = {}
        self._layouts: dict[tuple[tuple[int, ...], ...], _Layout] = {}
        self._prep_launches: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._nms_launches: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        self._graphs: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._graph_seen: dict[tuple[Any, ...], int] = {}
        # "whole": the network's kernels are captured into our graph (its sessions run without
        # ONNX Runtime's own graph, whose launch the driver (580) refuses to capture:
        # CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED). "split": ONNX Runtime replays its graph between
        # two of ours, for networks whose run cannot be captured. "off": launch by launch.
        if own_graphs not in (True, False, "whole", "split"):
            raise SsdTrtError(f"own_graphs is True, False, 'whole' or 'split', not {own_graphs!r}")
        mode = "whole" if own_graphs is True else own_graphs or "off"
        self._graph_mode = mode if cuda_graphs else "off"
        self._thread: int | None = None  # the thread whose CUDA context is current (submit)
        self._capturing = False
        self._closed = False

        path = Path(onnx_path)
        if not path.is_file():
            raise SsdTrtError(f"{path} does not exist")
        info = info or ModelInfo.from_onnx(path)
        self.spec = ModelSpec(info.preprocess, nms or info.nms_settings)
        convert = fp16 and engine is None  # an engine already has its precision
        self._model: bytes | str = fp16_model_bytes(path) if convert else str(path)

        try:
            self.device = self._core.Device(device_id)
            self.device.set_current()
        except Exception as exc:
            raise SsdTrtError(
                f"no usable NVIDIA GPU {device_id} ({first_line(exc)}); the fast path needs "
                "one, with: pip install 'ssd-trt[gpu]'"
            ) from exc
        self.stream = self.device.create_stream()
        try:
            self._kernels = gpu_kernels.Kernels.load(self.device.arch)
            for _ in range(n_slots):
                self._slots.append(self._new_slot())
            # The first network fixes anchors, classes and dtypes for the NMS buffers.
            self._network(self.batch_sizes[0])
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API

    def run(self, frames: Sequence[np.ndarray], bgr: bool = True) -> DetectionBatch:
        """uint8 HxWx3 frames (any sizes, any number) -> their detections."""
        largest = self.batch_sizes[-1]
        if len(frames) <= largest:
            return self.collect(self.submit(frames, bgr=bgr))
        handles: list[FastPathHandle] = []
        parts: list[DetectionBatch] = []
        for start in range(0, len(frames), largest):
            if len(handles) == len(self._slots):
                parts.append(self.collect(handles.pop(0)))
            handles.append(self.submit(frames[start : start + largest], bgr=bgr))
        parts += [self.collect(h) for h in handles]
        return DetectionBatch.concat(parts)

    def submit(self, frames: Sequence[np.ndarray], bgr: bool = True) -> FastPathHandle:
        """Queue one batch (at most the largest batch size) on the GPU; returns at once."""
        if self._closed:
            self._check_open()
        if self._thread != threading.get_ident():  # CUDA contexts are current per thread
            self.device.set_current()
            self._thread = threading.get_ident()
        n = len(frames)
        net = self._net_for.get(n)
        if net is None:
            if n == 0 or n > self.batch_sizes[-1]:
                raise SsdTrtError(f"a batch holds 1..{self.batch_sizes[-1]} frames, not {n}")
            net = self._network(next(b for b in self.batch_sizes if b >= n))
            self._net_for[n] = net
        frames = [self._checked(i, f) for i, f in enumerate(frames)]
        slot = self._take_slot()

        # Pack meta (offset, h, w, 0 per frame) and the frames into pinned memory; the layout
        # of a list of frame shapes is computed once.
        shapes = tuple(f.shape for f in frames)
        layout = self._layouts.get(shapes)
        if layout is None:
            layout = self._layouts[shapes] = _Layout.of(shapes, net.batch)
            if len(self._layouts) > 64:
                del self._layouts[next(iter(self._layouts))]
        total = layout.total
        host = slot.upload.reserve(total)
        host[: layout.meta.nbytes] = layout.meta
        for f, (lo, hi) in zip(frames, layout.spans, strict=True):
            host[lo:hi] = f.reshape(-1)
        dev = self._frames_buffer(slot, total)
        slot.download.reserve(net.batch * self._record_words * 4)

        if self._graph_mode == "whole" and not self._is_large(net.batch):
            self._enqueue_whole(slot, net, n, int(dev.handle), total, layout.start, bgr)
        elif n >= OVERLAP_MIN_BATCH:
            self._enqueue_overlapped(slot, net, n, int(dev.handle), total, layout.start, bgr)
        else:
            self._enqueue_small(slot, net, n, int(dev.handle), total, layout.start, bgr)
        handle = FastPathHandle(count=n, _slot=slot)
        slot.handle = handle
        return handle

    def _enqueue_small(
        self, slot: _Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool
    ) -> None:
        """One batch on one stream: from our own CUDA graph when this exact batch layout (slot,
        buffers, byte count) was seen before, else launch by launch (and count the layout)."""
        key = (slot.index, slot.upload.ptr, slot.download.ptr, dev, total, start, n, net.batch,
               bgr, self._nms_debug)  # fmt: skip
        graph = self._graphs.get(key)
        if graph is not None:
            self._replay(graph, net)
            return
        seen = self._graph_seen.get(key, 0) + 1
        if len(self._graph_seen) > 4096:
            self._graph_seen.clear()
        self._graph_seen[key] = seen
        if self._graph_mode != "off" and seen >= 2:
            graph = self._build_graph(slot, net, n, dev, total, start, bgr)
            if graph is not None:
                self._graphs[key] = graph
                while len(self._graphs) > MAX_GRAPHS:
                    _destroy_graph(self._graphs.pop(next(iter(self._graphs))))
                self._replay(graph, net)
                return
        self._issue_upload(slot, dev, total, self.stream)
        self._issue_preprocess(slot, net, dev, start, bgr)
        self._run_network(net)
        self._issue_tail(slot, net)

    def _enqueue_whole(
        self, slot: _Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool
    ) -> None:
        """The upload, then one graph of ours. Frame sizes and offsets are data for the
        preprocess kernel, so one graph per slot and network batch serves every list of frames
        that pads to that batch."""
        self._upload(slot, n, dev, total)
        key = (slot.index, slot.download.ptr, dev, start, net.batch, bgr, self._nms_debug)
        graph = self._graphs.get(key)
        if graph is None:

            def body() -> None:
                self._issue_preprocess(slot, net, dev, start, bgr)
                self._run_network(net)
                self._issue_tail(slot, net)

            exe = self._capture(body)
            if exe is None:  # correct, only slower: this batch runs launch by launch
                log.warning("the batch-%d network could not be captured this time", net.batch)
                body()
                return
            graph = self._graphs[key] = (exe,)
            while len(self._graphs) > MAX_GRAPHS:
                _destroy_graph(self._graphs.pop(next(iter(self._graphs))))
        self._replay(graph, net)

    def _enqueue_overlapped(
        self, slot: _Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool
    ) -> None:
        """The upload (see _upload), then the rest launch by launch."""
        self._upload(slot, n, dev, total)
        self._issue_preprocess(slot, net, dev, start, bgr)
        self._run_network(net)
        self._issue_tail(slot, net)

    def _upload(self, slot: _Slot, n: int, dev: int, total: int) -> None:
        """From OVERLAP_MIN_BATCH frames on a second stream: the slot's buffers are free (its last
        batch finished before the slot was taken), so only the preprocess waits for the copy."""
        if n < OVERLAP_MIN_BATCH:
            self._issue_upload(slot, dev, total, self.stream)
            return
        up = self._upload_stream
        if up is None:
            up = self._upload_stream = self.device.create_stream()
        self._issue_upload(slot, dev, total, up)
        self.stream.wait(slot.events[1])

    def _issue_upload(self, slot: _Slot, dev: int, total: int, stream: Any) -> None:
        ev = slot.events
        self._record(ev[0], stream)
        _check(_DRIVER.cuMemcpyHtoDAsync(dev, slot.upload.ptr, total, stream.handle), "H2D")
        self._record(ev[1], stream)

    def _issue_preprocess(
        self, slot: _Slot, net: NetworkRunner, dev: int, start: int, bgr: bool
    ) -> None:
        key = (net.batch, dev, start, bgr)
        launch = self._prep_launches.get(key)
        if launch is None:
            cfg = self.spec.preprocess
            plane = cfg.height * cfg.width
            block = gpu_kernels.BLOCK_PREPROCESS
            launch = self._prep_launches[key] = (
                self._core.LaunchConfig(grid=(-(-plane // block), net.batch), block=block),
                self._kernels.preprocess[_dtype_name(net.dtypes["images"])],
                np.uint64(dev + start),
                np.uint64(dev),
                np.uint64(net.ptr["images"]),
                np.int32(cfg.height),
                np.int32(cfg.width),
                np.float32(cfg.scale),
                np.float32(cfg.offset),
                np.int32(1 if bgr else 0),
            )
            if len(self._prep_launches) > 256:
                del self._prep_launches[next(iter(self._prep_launches))]
        self._core.launch(self.stream, *launch)
        self._record(slot.events[2], self.stream)

    def _run_network(self, net: NetworkRunner) -> None:
        try:
            net.run()
        except Exception as exc:
            raise SsdTrtError(f"the network failed on the GPU: {first_line(exc)}") from exc

    def _issue_tail(self, slot: _Slot, net: NetworkRunner) -> None:
        """After the network: NMS, the download of the top-K rows, the batch's last event."""
        ev, stream = slot.events, self.stream
        self._record(ev[3], stream)
        self._launch_nms(net)
        self._record(ev[4], stream)
        size = net.batch * self._record_words * 4
        _check(_DRIVER.cuMemcpyDtoHAsync(slot.download.ptr, self._out_ptr, size, stream.handle),
               "D2H")  # fmt: skip
        self._record(ev[5], stream)

    def _replay(self, graph: tuple[Any, ...], net: NetworkRunner) -> None:
        """Our graphs in order; None marks where the network runs its own launch."""
        for part in graph:
            if part is None:
                self._run_network(net)
            else:
                _graph_launch(part, self.stream)

    def _build_graph(
        self, slot: _Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool
    ) -> tuple[Any, ...] | None:
        """Capture this batch layout into two CUDA graphs of our own, one before and one after
        the network's launch. None (and no more tries) where capture fails."""

        def head() -> None:
            self._issue_upload(slot, dev, total, self.stream)
            self._issue_preprocess(slot, net, dev, start, bgr)

        def tail() -> None:
            self._issue_tail(slot, net)

        first = self._capture(head)
        second = self._capture(tail) if first is not None else None
        if first is None or second is None:
            _destroy_graph((first,))
            log.info("own CUDA graphs: capture failed; launching kernel by kernel")
            self._graph_mode = "off"
            return None
        return (first, None, second)

    def _capture(self, issue: Any) -> Any:
        """``issue()`` captured on our stream into an instantiated graph, or None."""
        drv, handle = _DRIVER, self.stream.handle
        (err,) = drv.cuStreamBeginCapture(handle, _CAPTURE_MODE)
        if err != _SUCCESS:
            return None
        self._capturing = True
        failed: BaseException | None = None
        try:
            issue()
        except Exception as exc:
            failed = exc
        finally:
            self._capturing = False
            err, graph = drv.cuStreamEndCapture(handle)
        if failed is not None or err != _SUCCESS:
            if graph is not None and int(graph):
                drv.cuGraphDestroy(graph)
            cudart().cudaGetLastError()  # leave no error pending for ONNX Runtime's next call
            log.info("graph capture failed: %s", first_line(failed) if failed else err)
            return None
        err, exe = drv.cuGraphInstantiate(graph, 0)
        drv.cuGraphDestroy(graph)
        if err != _SUCCESS:
            log.info("graph instantiation failed: %s", err)
            return None
        return exe

    def _record(self, event: Any, stream: Any = None) -> None:
        stream = self.stream if stream is None else stream
        if self._capturing:  # a graph node that records the event each replay
            (err,) = _DRIVER.cuEventRecordWithFlags(event.handle, stream.handle, _RECORD_EXTERNAL)
            if err != _SUCCESS:
                raise SsdTrtError(f"cuEventRecordWithFlags failed: {err}")
        else:
            stream.record(event)

    def collect(self, handle: FastPathHandle) -> DetectionBatch:
        """Wait for a submitted batch and return its detections (copies, safe to keep)."""
        if handle._result is None:
            self._materialize(handle)
        self.last_stage_ms = dict(handle._stage_ms)
        assert handle._result is not None
        return handle._result

    def preprocessed(self, frames: Sequence[np.ndarray], bgr: bool = True) -> np.ndarray:
        """The network input the GPU makes of ``frames`` (float32 NCHW), for checks."""
        n = len(frames)
        handle = self.submit(frames, bgr=bgr)
        self.collect(handle)
        net = self._network(next(b for b in self.batch_sizes if b >= n))
        cfg = self.spec.preprocess
        dtype = net.dtypes["images"]
        host = np.empty((n, 3, cfg.height, cfg.width), dtype)
        _driver_call("cuMemcpyDtoHAsync", host.ctypes.data, net.ptr["images"], host.nbytes,
                     self.stream)  # fmt: skip
        self.stream.sync()
        return host.astype(np.float32)

    def nms(self, boxes: np.ndarray, scores: np.ndarray) -> DetectionBatch:
        """Run only the GPU NMS on given boxes [N, A, 4] and scores [N, A, C], for checks."""
        self._check_open()
        n = boxes.shape[0]
        net = self._network(next(b for b in self.batch_sizes if b >= n))
        if scores.shape[1:] != (net.anchors, net.classes) or boxes.shape[1:] != (net.anchors, 4):
            raise SsdTrtError(f"nms needs boxes [N, {net.anchors}, 4], scores [N, {net.anchors}, "
                              f"{net.classes}]")  # fmt: skip
        for name, array in (("boxes", boxes), ("scores", scores)):
            host = np.ascontiguousarray(array, net.dtypes[name])
            _driver_call("cuMemcpyHtoDAsync", net.ptr[name], host.ctypes.data, host.nbytes,
                         self.stream)  # fmt: skip
            self.stream.sync()
        slot = self._take_slot()
        self._launch_nms(net)
        out_bytes = n * self._record_words * 4
        slot.download.reserve(out_bytes)
        _driver_call("cuMemcpyDtoHAsync", slot.download.ptr, int(self._out_dev.handle), out_bytes,
                     self.stream)  # fmt: skip
        for ev in slot.events:
            self._record(ev)
        handle = FastPathHandle(count=n, _slot=slot)
        slot.handle = handle
        return self.collect(handle)

    @property
    def graph_mode(self) -> str:
        """How batches replay: "whole", "split" or "off" (see the class docstring)."""
        return self._graph_mode

    def network_ms(self, batch: int, iters: int) -> float:
        """p50 of one network run at ``batch`` (graph replay where it has one) plus a stream
        sync, host-timed, for benchmarks."""
        net = self._network(batch)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            net.run()
            self.stream.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    def nms_profile(self, batch: int, reps: int = 100) -> dict[str, Any]:
        """The NMS kernels alone on the last network outputs at ``batch`` (CUDA events, ms per
        run), and the select kernel's phase stamps (us, mean over images; the last phase is
        rows + walk), written only while this runs (``nms_debug``)."""
        net = self._network(batch)
        opts = self._core.EventOptions(timing_enabled=True)
        a, b = (self.device.create_event(options=opts) for _ in range(2))
        self._launch_nms(net)
        self.stream.record(a)
        for _ in range(reps):
            self._launch_nms(net)
        self.stream.record(b)
        b.sync()
        stamps = np.zeros(net.batch * 16, np.int64)
        debug = self.device.allocate(stamps.nbytes, stream=self.stream)
        try:
            with self.nms_debug(int(debug.handle)):
                for _ in range(3):
                    self._launch_nms(net)
                self.stream.sync()
                _check(_DRIVER.cuMemcpyDtoH(stamps.ctypes.data, int(debug.handle), stamps.nbytes),
                       "cuMemcpyDtoH")  # fmt: skip
        finally:
            self.stream.sync()
            debug.close(self.stream)
        t = stamps.reshape(net.batch, 16)[:, :8]
        return {
            "nms_ms": float(b - a) / reps,
            "select_phases_us": (np.diff(t, axis=1).mean(0) / 1e3).round(2).tolist(),
        }

    @contextmanager
    def nms_debug(self, pointer: int) -> Iterator[None]:
        """Within: the NMS kernels write 16 int64 phase stamps per image to device memory at
        ``pointer`` (launches of NMS alone, as nms_profile does)."""
        self._nms_debug = pointer
        try:
            yield
        finally:
            self._nms_debug = 0

    def warm_up(self, max_batch: int | None = None) -> None:
        """Build the networks (and graphs) of the batch sizes that batches of up to
        ``max_batch`` frames use (None: all) now rather than on first use."""
        for b in self.batch_sizes:
            self._network(b)
            if max_batch is not None and b >= max_batch:
                break

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stream.sync()
        finally:
            for net in self._networks.values():
                net.close(self.stream)
            self._networks.clear()
            self._drop_graphs()
            for buf in (
                self._frames_dev,
                self._mask_dev,
                self._cand_dev,
                self._out_dev,
                self._hist_dev,
                self._count_dev,
            ):
                if buf is not None:
                    buf.close(self.stream)
            for slot in self._slots:
                if slot.frames_dev is not None:
                    slot.frames_dev.close(self.stream)
                    slot.frames_dev = None
            self.stream.sync()
            if self._upload_stream is not None:
                self._upload_stream.close()
            for slot in self._slots:
                slot.upload.close()
                slot.download.close()
            self._slots.clear()
            self.stream.close()

    def __enter__(self) -> GpuFastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    @property
    def _record_words(self) -> int:
        return 1 + 6 * self.spec.nms.max_total

    def _check_open(self) -> None:
        if self._closed:
            raise SsdTrtError("this GpuFastPath is closed")

    @staticmethod
    def _checked(i: int, frame: np.ndarray) -> np.ndarray:
        check_image(i, frame)
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise SsdTrtError(f"frame {i} is empty")
        return np.ascontiguousarray(frame)

    def _new_slot(self) -> _Slot:
        opts = self._core.EventOptions(timing_enabled=self._timing)
        return _Slot(
            index=len(self._slots),
            upload=_PinnedBuffer(self._core),
            download=_PinnedBuffer(self._core),
            events=[self.device.create_event(options=opts) for _ in range(len(STAGES) + 1)],
        )

    def _take_slot(self) -> _Slot:
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        if slot.handle is not None and slot.handle._result is None:
            # Its batch was not collected yet: finish it into host arrays before reuse.
            self._materialize(slot.handle)
        slot.handle = None
        return slot

    def _materialize(self, handle: FastPathHandle) -> None:
        slot = handle._slot
        if slot.handle is not handle:
            raise SsdTrtError("this handle's results were already taken")
        ev = slot.events
        ev[-1].sync()  # the one host wait of the batch
        n, k = handle.count, self.spec.nms.max_total
        words = slot.download.array[: n * self._record_words * 4].view(np.int32)
        rec = words.reshape(n, self._record_words)
        handle._result = DetectionBatch(
            num_detections=rec[:, :1].copy(),
            detection_boxes=rec[:, 1 : 1 + 4 * k].view(np.float32).reshape(n, k, 4).copy(),
            detection_scores=rec[:, 1 + 4 * k : 1 + 5 * k].view(np.float32).copy(),
            detection_classes=rec[:, 1 + 5 * k :].copy(),
        )
        if self._timing:
            handle._stage_ms = {name: float(ev[i + 1] - ev[i]) for i, name in enumerate(STAGES)} | {
                TOTAL: float(ev[-1] - ev[0])
            }
        slot.handle = None

    def _frames_buffer(self, slot: _Slot, size: int) -> Any:
        """The slot's device buffer for packed frames; grown when needed. The allocation is
        ordered on the main stream and the upload may run on the other: wait for it once."""
        if slot.frames_dev is None or slot.frames_dev.size < size:
            if slot.frames_dev is not None:
                slot.frames_dev.close(self.stream)
                slot.frames_dev = None
            slot.frames_dev = self._allocate(max(size, 1 << 22), "the frames")
            self.stream.sync()
        return slot.frames_dev

    def _allocate(self, size: int, what: str) -> Any:
        try:
            return self.device.allocate(size, stream=self.stream)
        except Exception as exc:
            if _is_oom(exc):
                raise SsdTrtError(
                    f"{what} ({size / 2**20:.0f} MiB) do not fit in GPU memory; use smaller batches"
                ) from None
            raise SsdTrtError(f"GPU allocation failed: {first_line(exc)}") from exc

    def _launch_nms(self, net: NetworkRunner) -> None:
        """Five kernels: a coarse score histogram and the candidate list above the cut, both
        with several blocks per image; one block per image for the exact top-``cap`` cut, the
        sort and the class grouping; the suppression rows, one warp per candidate; the walk, one
        warp per image, over the whole network batch. Arguments are built once per batch size."""
        launches = self._nms_launches.get((net.batch, self._nms_debug))
        if launches is None:
            launches = self._nms_launches[(net.batch, self._nms_debug)] = self._nms_args(net)
        launch, stream = self._core.launch, self.stream
        for args in launches:
            launch(stream, *args)

    def _nms_args(self, net: NetworkRunner) -> list[tuple[Any, ...]]:
        s = self.spec.nms
        core = self._core
        sdt = _dtype_name(net.dtypes["scores"])
        total = net.anchors * net.classes
        n = net.batch
        per_image = max(1, min(-(-total // 8192), -(-2 * self._sm_count // n)))
        thr = np.float32(s.score_threshold)
        grid = core.LaunchConfig(grid=(per_image, n), block=gpu_kernels.BLOCK_NMS)
        scores, anchors, classes = (
            np.uint64(net.ptr["scores"]), np.int32(net.anchors), np.int32(net.classes)
        )  # fmt: skip
        cap, warps = self.candidate_cap, gpu_kernels.ROW_WARPS
        k = self._kernels
        return [
            (grid, k.nms_hist[sdt], scores, anchors, classes, thr, self._hist_dev),
            (grid, k.nms_compact[sdt], scores, anchors, classes, thr, np.int32(cap),
             self._hist_dev, self._count_dev, self._mask_dev),
            (
                core.LaunchConfig(grid=n, block=gpu_kernels.BLOCK_NMS),
                k.select_nms[(_dtype_name(net.dtypes["boxes"]), sdt)],
                np.uint64(net.ptr["boxes"]), scores, anchors, classes, thr,
                np.float32(s.iou_threshold), np.int32(s.max_per_class), np.int32(s.max_total),
                np.int32(cap), self._mask_dev, self._cand_dev, self._hist_dev, self._count_dev,
                np.uint64(self._nms_debug),
            ),
            (core.LaunchConfig(grid=(-(-cap // warps), n), block=32 * warps), k.nms_rows,
             self._cand_dev, np.float32(s.iou_threshold), self._mask_dev),
            (core.LaunchConfig(grid=n, block=32), k.nms_walk, self._cand_dev, self._mask_dev,
             np.int32(s.max_per_class), np.int32(s.max_total), self._out_dev,
             np.uint64(self._nms_debug)),
        ]  # fmt: skip

    @property
    def _sm_count(self) -> int:
        count = self.__dict__.get("_sms")
        if count is None:
            try:
                count = int(self.device.properties.multiprocessor_count)
            except Exception:
                count = 132
            self.__dict__["_sms"] = count
        return count

    def _network(self, batch: int) -> NetworkRunner:
        net = self._networks.get(batch)
        if net is not None:
            return net
        runtime = "TensorRT" if self._engine else "ONNX Runtime CUDA EP"
        log.info("building the batch-%d network (%s, CUDA graph)", batch, runtime)
        try:
            net = self._new_network(batch)
        except SsdTrtError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise SsdTrtError(
                    f"a batch of {batch} does not fit in GPU memory; use smaller batches"
                ) from None
            raise SsdTrtError(
                f"cannot set up the batch-{batch} network: {first_line(exc)}"
            ) from exc
        # Padding images of a partial batch must be finite: zero the input once.
        cfg = self.spec.preprocess
        size = batch * 3 * cfg.height * cfg.width * net.dtypes["images"].itemsize
        _driver_call("cuMemsetD8Async", net.ptr["images"], 0, size, self.stream)
        try:
            net.warm_up(self.stream)
        except Exception as exc:
            net.close(self.stream)
            if _is_oom(exc):
                raise SsdTrtError(
                    f"a batch of {batch} does not fit in GPU memory; use smaller batches"
                ) from None
            raise SsdTrtError(f"the batch-{batch} network failed: {first_line(exc)}") from exc
        if net.classes > gpu_kernels.MAX_CLASSES:
            net.close(self.stream)
            raise SsdTrtError(f"the fast path handles up to {gpu_kernels.MAX_CLASSES} classes")
        if self._graph_mode == "whole" and not self._is_large(batch) and not self._capturable(net):
            # Its run does something a capture refuses: let the runtime replay its own graph.
            log.info("the network's run cannot be captured; using its own CUDA graph instead")
            net.close(self.stream)
            for other in self._networks.values():
                other.close(self.stream)
            self._networks.clear()
            self._net_for.clear()
            self._drop_graphs()
            self._graph_mode = "split"
            return self._network(batch)
        self._networks[batch] = net
        self._grow_nms_buffers(batch)
        return net

    def _new_network(self, batch: int) -> NetworkRunner:
        if self._engine is not None:
            return TensorRTNetwork(
                self._engine,
                batch,
                self.spec.preprocess,
                self.device,
                self.stream,
                cuda_graphs=self._cuda_graphs and self._graph_mode != "whole",
            )
        return OrtNetwork(
            self._ort,
            self._model,
            batch,
            self.spec,
            self.device,
            self.stream,
            cuda_graphs=self._cuda_graphs
            and not self._is_large(batch)
            and self._graph_mode != "whole",
            tf32=self._tf32,
            extra_provider_options=self._session_options(batch),
        )

    def _capturable(self, net: NetworkRunner) -> bool:
        """Whether one run of ``net`` captures into a graph of ours (checked once per session)."""
        exe = self._capture(net.run)
        if exe is None:
            return False
        _destroy_graph((exe,))
        return True

    def _drop_graphs(self) -> None:
        for parts in self._graphs.values():
            _destroy_graph(parts)
        self._graphs.clear()
        self._graph_seen.clear()
        self._nms_launches.clear()

    def _is_large(self, batch: int) -> bool:
        return self._large_options is not None and batch >= self._large_batch

    def _session_options(self, batch: int) -> dict[str, str]:
        """Provider options of the batch-``batch`` session."""
        if self._is_large(batch):
            return {**self._provider_options, **(self._large_options or {})}
        return self._provider_options

    def _grow_nms_buffers(self, batch: int) -> None:
        have = 0 if self._out_dev is None else self._out_dev.size // (self._record_words * 4)
        if have >= batch:
            return
        self.stream.sync()
        self._drop_graphs()  # they point at the buffers replaced here
        bufs = (self._mask_dev, self._cand_dev, self._out_dev, self._hist_dev, self._count_dev)
        for buf in bufs:
            if buf is not None:
                buf.close(self.stream)
        self._mask_dev = self._cand_dev = self._out_dev = self._hist_dev = self._count_dev = None
        self._mask_dev = self._allocate(batch * gpu_kernels.MAX_CANDIDATES * 32 * 4, "NMS scratch")
        self._cand_dev = self._allocate(batch * gpu_kernels.CAND_WORDS * 4, "NMS candidates")
        self._out_dev = self._allocate(batch * self._record_words * 4, "NMS outputs")
        self._hist_dev = self._allocate(batch * gpu_kernels.NBINS * 4, "NMS histograms")
        self._count_dev = self._allocate(batch * 4, "NMS counters")
        self._out_ptr = int(self._out_dev.handle)
        for buf in (self._hist_dev, self._count_dev):  # the NMS kernels keep them zero
            _driver_call("cuMemsetD32Async", int(buf.handle), 0, buf.size // 4, self.stream)
