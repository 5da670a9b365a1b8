"""GPU fast path: host uint8 frames -> host detections with one stream and one final wait.

Per batch, all on one cuda.core stream: the frames (any sizes) are packed into pinned host
memory and copied to the GPU in one transfer; a kernel resizes/normalizes them into the network
input; ONNX Runtime's CUDA execution provider runs the ``--nms none`` network on the same stream
(IOBinding on our buffers, replayed as a CUDA graph, one session per batch size because a graph
is captured for fixed shapes and addresses); a kernel selects the top candidates and runs exact
per-class NMS; the compact top-K rows are copied back to pinned memory. The host waits once.

``submit`` returns a handle without waiting, so the next frames can be decoded on the CPU while
the GPU works; ``collect`` waits for that batch. ``n_slots`` pinned buffer sets are rotated.

By concern: this module holds the public API and the networks per batch size; options.py the
settings; staging.py the packed upload and the records read back; enqueue.py how a batch is
launched (and our CUDA graphs); gpu_nms.py the NMS kernels' buffers and launches; kernels.py
and cuda/*.cu the kernels; runtime/cuda.py every raw CUDA call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from ssd_trt.contract import ModelInfo
from ssd_trt.detection_batch import GPU_STAGES, TOTAL, DetectionBatch
from ssd_trt.device_frames import DeviceFrame
from ssd_trt.errors import SsdTrtError, first_line, require
from ssd_trt.preprocess import check_image

from .. import cuda
from ..ort import provider_missing
from . import kernels as gpu_kernels
from .device_input import Input, ProducerWaits, batch_kind, device_copies, nv12_header, shapes_of
from .enqueue import OVERLAP_MIN_BATCH, BatchEnqueuer
from .gpu_nms import GpuNms
from .networks import NetworkSet
from .options import DEFAULT_BATCH_SIZES, FastPathOptions, batch_for
from .ort_network import ModelSpec, NetworkRunner, fp16_model_bytes
from .staging import FastPathHandle, Layout, Slot, read_records

log = logging.getLogger(__name__)

STAGES = GPU_STAGES  # timed by CUDA events, in the one stage vocabulary (detection_batch)
# Names other modules imported from here before the split.
__all__ = ["DEFAULT_BATCH_SIZES", "OVERLAP_MIN_BATCH", "STAGES", "FastPathHandle",
           "FastPathOptions", "GpuFastPath"]  # fmt: skip


class GpuFastPath:
    """Detections from uint8 frames on one NVIDIA GPU (see the module docstring).

    ``onnx_path``: an ``ssd-trt export --nms none`` ONNX (its metadata, and the network for
    ONNX Runtime); ``engine``: a TensorRT engine of that network, which then runs it instead;
    ``options``: how it runs (FastPathOptions; the keyword arguments this class once took,
    such as ``batch_sizes=`` or ``fp16=``, still override single fields).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        options: FastPathOptions | None = None,
        *,
        engine: Path | None = None,
        info: ModelInfo | None = None,
        **overrides: Any,
    ) -> None:
        self.options = opts = FastPathOptions.of(options, **overrides)
        self._core = require("cuda.core", "gpu")
        cuda.driver()
        ort = None if engine is not None else require("onnxruntime", "gpu")
        why = None if engine is not None else provider_missing("CUDAExecutionProvider", "cuda")
        if why is not None:
            raise SsdTrtError(why)
        self.batch_sizes = opts.batch_sizes
        self.candidate_cap = opts.candidate_cap
        self.last_stage_ms: dict[str, float] = {}
        self._slots: list[Slot] = []
        self._next_slot = 0
        # Host-side work done once: the upload layout per list of frame shapes (networks per
        # frame count: networks.py; launch arguments and graphs: enqueue.py).
        self._layouts: dict[tuple[tuple[tuple[int, ...], ...], tuple[bool, ...]], Layout] = {}
        self._thread: int | None = None  # the thread whose CUDA context is current (submit)
        self._closed = False
        self._enq: BatchEnqueuer | None = None
        self._nms: GpuNms | None = None
        self._waits: ProducerWaits | None = None
        self._nets: NetworkSet | None = None

        path = Path(onnx_path)
        if not path.is_file():
            raise SsdTrtError(f"{path} does not exist")
        info = info or ModelInfo.from_onnx(path)
        self.spec = ModelSpec(info.preprocess, opts.nms or info.nms_settings)
        convert = opts.fp16 and engine is None  # an engine already has its precision
        model: bytes | str = fp16_model_bytes(path) if convert else str(path)

        try:
            if opts.blocking_wait:
                cuda.block_on_waits(opts.device_id)
            self.device = self._core.Device(opts.device_id)
            self.device.set_current()
        except Exception as exc:
            raise SsdTrtError(
                f"no usable NVIDIA GPU {opts.device_id} ({first_line(exc)}); the fast path "
                "needs one, with: pip install 'ssd-trt[gpu]'"
            ) from exc
        self.stream = self.device.create_stream()
        try:
            kernels = gpu_kernels.Kernels.load(self.device.arch)
            self._nms = GpuNms(self._core, kernels, self.spec.nms, opts.candidate_cap,
                               self._allocate, self.stream, self._sm_count())  # fmt: skip
            self._enq = BatchEnqueuer(self._core, self.device, self.stream, kernels, self.spec,
                                      self._nms, opts.graph_mode)  # fmt: skip
            self._waits = ProducerWaits(self.device, self.stream)
            self._nets = NetworkSet(model, engine, ort, self.spec, opts, self.device, self.stream,
                                    self._enq, self._nms)  # fmt: skip
            for _ in range(opts.n_slots):
                self._slots.append(self._new_slot())
            # The first network fixes anchors, classes and dtypes for the NMS buffers.
            self._nets_.get(self.batch_sizes[0])
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API

    def run(self, frames: Sequence[Input], bgr: bool = True) -> DetectionBatch:
        """uint8 HxWx3 frames or DeviceFrames (any sizes, any number) -> their detections."""
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

    def submit(self, frames: Sequence[Input], bgr: bool = True) -> FastPathHandle:
        """Queue one batch (at most the largest batch size) on the GPU; returns at once.
        Frames are uint8 HxWx3 numpy arrays or ``DeviceFrame``s (read in place on the GPU,
        see device_input.py); NV12 frames are not mixed with others in one batch."""
        self._check_open()
        if self._thread != threading.get_ident():  # CUDA contexts are current per thread
            self.device.set_current()
            self._thread = threading.get_ident()
        n = len(frames)
        net = self._nets_.for_count(n)
        kind = batch_kind(frames, bgr, self.options.device_id)
        if kind == "nv12":
            return self._submit_nv12([f for f in frames if isinstance(f, DeviceFrame)], net)
        frames = [f if isinstance(f, DeviceFrame) else self._checked(i, f)
                  for i, f in enumerate(frames)]  # fmt: skip
        slot = self._take_slot()

        # Pack meta (offset, h, w, 0 per frame) and the host frames into pinned memory; the
        # layout of a list of frame shapes is computed once.
        on_device = tuple(isinstance(f, DeviceFrame) for f in frames)
        shapes = shapes_of(frames)
        layout = self._layouts.get((shapes, on_device))
        if layout is None:
            layout = self._layouts[(shapes, on_device)] = Layout.of(shapes, net.batch, on_device)
            if len(self._layouts) > 64:
                del self._layouts[next(iter(self._layouts))]
        host = [None if isinstance(f, DeviceFrame) else f for f in frames]
        layout.pack(slot.upload.reserve(layout.upload), host)
        dev = int(self._frames_buffer(slot, layout.total).handle)
        slot.download.reserve(net.batch * self._nms_.record_words * 4)
        before = None
        if kind == "packed":
            copies = device_copies(frames, layout, dev, self.stream)

            def before() -> None:
                self._waits_.before_reading(frames)
                copies()

        self._enq_.enqueue(slot, net, n, dev, layout.upload, layout.start, bgr,
                           self.options.is_large(net.batch), before=before)  # fmt: skip
        return self._handle(slot, n, frames if kind == "packed" else ())

    def _submit_nv12(self, frames: Sequence[DeviceFrame], net: NetworkRunner) -> FastPathHandle:
        """NV12 surfaces: only their header is uploaded; the kernel reads them in place."""
        slot = self._take_slot()
        header = nv12_header(frames, net.batch)
        slot.upload.reserve(header.nbytes)[: header.nbytes] = header
        dev = int(self._frames_buffer(slot, header.nbytes).handle)
        slot.download.reserve(net.batch * self._nms_.record_words * 4)
        self._enq_.enqueue(slot, net, len(frames), dev, header.nbytes, 0, True,
                           self.options.is_large(net.batch), kind="nv12",
                           before=lambda: self._waits_.before_reading(frames))  # fmt: skip
        return self._handle(slot, len(frames), tuple(frames))

    def _handle(self, slot: Slot, n: int, keep: Sequence[Any]) -> FastPathHandle:
        handle = FastPathHandle(count=n, _slot=slot, _keep=tuple(keep))
        slot.handle = handle
        return handle

    def collect(self, handle: FastPathHandle) -> DetectionBatch:
        """Wait for a submitted batch and return its detections (copies, safe to keep)."""
        if handle._result is None:
            self._materialize(handle)
        self.last_stage_ms = dict(handle._stage_ms)
        assert handle._result is not None
        return handle._result

    def preprocessed(self, frames: Sequence[Input], bgr: bool = True) -> np.ndarray:
        """The network input the GPU makes of ``frames`` (float32 NCHW), for checks."""
        n = len(frames)
        self.collect(self.submit(frames, bgr=bgr))
        net = self._nets_.get(batch_for(self.batch_sizes, n))
        cfg = self.spec.preprocess
        host = np.empty((n, 3, cfg.height, cfg.width), net.dtypes["images"])
        cuda.enqueue("cuMemcpyDtoHAsync", host.ctypes.data, net.ptr["images"], host.nbytes,
                     stream=self.stream)  # fmt: skip
        self.stream.sync()
        return host.astype(np.float32)

    def nms(self, boxes: np.ndarray, scores: np.ndarray) -> DetectionBatch:
        """Run only the GPU NMS on given boxes [N, A, 4] and scores [N, A, C], for checks."""
        self._check_open()
        n = boxes.shape[0]
        net = self._nets_.get(batch_for(self.batch_sizes, n))
        if scores.shape[1:] != (net.anchors, net.classes) or boxes.shape[1:] != (net.anchors, 4):
            raise SsdTrtError(f"nms needs boxes [N, {net.anchors}, 4], scores [N, {net.anchors}, "
                              f"{net.classes}]")  # fmt: skip
        for name, array in (("boxes", boxes), ("scores", scores)):
            host = np.ascontiguousarray(array, net.dtypes[name])
            cuda.enqueue("cuMemcpyHtoDAsync", net.ptr[name], host.ctypes.data, host.nbytes,
                         stream=self.stream)  # fmt: skip
            self.stream.sync()
        slot = self._take_slot()
        self._nms_.launch(net)
        out_bytes = n * self._nms_.record_words * 4
        slot.download.reserve(out_bytes)
        cuda.enqueue("cuMemcpyDtoHAsync", slot.download.ptr, self._nms_.out_ptr, out_bytes,
                     stream=self.stream)  # fmt: skip
        for ev in slot.events:
            self.stream.record(ev)
        return self.collect(self._handle(slot, n, ()))

    @property
    def graph_mode(self) -> str:
        """How batches replay: "whole", "split" or "off" (see FastPathOptions)."""
        return self._enq_.graph_mode

    @property
    def graph_count(self) -> int:
        """CUDA graphs of ours built so far (one per batch layout), for checks."""
        return self._enq_.graph_count

    def network_ms(self, batch: int, iters: int) -> float:
        """p50 of one network run at ``batch`` (graph replay where it has one) plus a stream
        sync, host-timed, for benchmarks."""
        net = self._nets_.get(batch)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            net.run()
            self.stream.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    def nms_profile(self, batch: int, reps: int = 100) -> dict[str, Any]:
        """The NMS kernels alone on the last network outputs at ``batch`` (see GpuNms.profile)."""
        return self._nms_.profile(self._nets_.get(batch), self.device, reps)

    def nms_debug(self, pointer: int) -> AbstractContextManager[None]:
        """Within: the NMS kernels write 16 int64 phase stamps per image to device memory at
        ``pointer`` (launches of NMS alone, as nms_profile does)."""
        return self._nms_.debug(pointer)

    def warm_up(self, max_batch: int | None = None) -> None:
        """Build the networks (and graphs) of the batch sizes that batches of up to
        ``max_batch`` frames use (None: all) now rather than on first use."""
        for b in self.batch_sizes:
            self._nets_.get(b)
            if max_batch is not None and b >= max_batch:
                break

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stream.sync()
        finally:
            if self._nets is not None:
                self._nets.close()
            if self._enq is not None:
                self._enq.drop_graphs()
            if self._nms is not None:
                self._nms.close()
            for slot in self._slots:
                if slot.frames_dev is not None:
                    slot.frames_dev.close(self.stream)
                    slot.frames_dev = None
            self.stream.sync()
            if self._enq is not None:
                self._enq.close()
            if self._waits is not None:
                self._waits.close()
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
    def _enq_(self) -> BatchEnqueuer:
        assert self._enq is not None  # set in __init__ before any use
        return self._enq

    @property
    def _nms_(self) -> GpuNms:
        assert self._nms is not None
        return self._nms

    @property
    def _nets_(self) -> NetworkSet:
        assert self._nets is not None
        return self._nets

    @property
    def _waits_(self) -> ProducerWaits:
        assert self._waits is not None
        return self._waits

    def _check_open(self) -> None:
        if self._closed:
            raise SsdTrtError("this GpuFastPath is closed")

    @staticmethod
    def _checked(i: int, frame: np.ndarray) -> np.ndarray:
        check_image(i, frame)
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise SsdTrtError(f"frame {i} is empty")
        return np.ascontiguousarray(frame)

    def _new_slot(self) -> Slot:
        opts = self._core.EventOptions(timing_enabled=self.options.timing)
        # The last one is the batch's host wait: it sleeps rather than spins (blocking_wait).
        last = self._core.EventOptions(
            timing_enabled=self.options.timing, blocking_sync=self.options.blocking_wait
        )
        events = [self.device.create_event(options=opts) for _ in range(len(STAGES))]
        return Slot(
            index=len(self._slots),
            upload=cuda.PinnedBuffer(self._core),
            download=cuda.PinnedBuffer(self._core),
            events=[*events, self.device.create_event(options=last)],
        )

    def _take_slot(self) -> Slot:
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
        handle._result = read_records(slot.download.array, handle.count, self.spec.nms.max_total)
        if self.options.timing:
            handle._stage_ms = {name: float(ev[i + 1] - ev[i]) for i, name in enumerate(STAGES)} | {
                TOTAL: float(ev[-1] - ev[0])
            }
        handle._keep = ()  # the batch is done: its device frames may be reused
        slot.handle = None

    def _frames_buffer(self, slot: Slot, size: int) -> Any:
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
            if cuda.is_oom(exc):
                raise SsdTrtError(
                    f"{what} ({size / 2**20:.0f} MiB) do not fit in GPU memory; use smaller batches"
                ) from None
            raise SsdTrtError(f"GPU allocation failed: {first_line(exc)}") from exc

    def _sm_count(self) -> int:
        try:
            return int(self.device.properties.multiprocessor_count)
        except Exception:
            return 132
