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
from ssd_trt.errors import SsdTrtError, first_line, require
from ssd_trt.preprocess import check_image

from .. import cuda
from ..ort import provider_missing
from . import kernels as gpu_kernels
from .enqueue import OVERLAP_MIN_BATCH, BatchEnqueuer
from .gpu_nms import GpuNms
from .options import DEFAULT_BATCH_SIZES, FastPathOptions, batch_for
from .ort_network import ModelSpec, NetworkRunner, OrtNetwork, fp16_model_bytes
from .staging import FastPathHandle, Layout, Slot, read_records
from .trt_network import TensorRTNetwork

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
        self._ort = None if engine is not None else require("onnxruntime", "gpu")
        why = None if engine is not None else provider_missing("CUDAExecutionProvider", "cuda")
        if why is not None:
            raise SsdTrtError(why)
        self.batch_sizes = opts.batch_sizes
        self.candidate_cap = opts.candidate_cap
        self.last_stage_ms: dict[str, float] = {}
        self._networks: dict[int, NetworkRunner] = {}
        self._engine = engine  # a TensorRT engine of the --nms none network runs it instead
        self._slots: list[Slot] = []
        self._next_slot = 0
        # Host-side launch work done once: network per frame count, upload layout per list of
        # frame shapes (launch arguments and graphs: enqueue.py).
        self._net_for: dict[int, NetworkRunner] = {}
        self._layouts: dict[tuple[tuple[int, ...], ...], Layout] = {}
        self._thread: int | None = None  # the thread whose CUDA context is current (submit)
        self._closed = False
        self._enq: BatchEnqueuer | None = None
        self._nms: GpuNms | None = None

        path = Path(onnx_path)
        if not path.is_file():
            raise SsdTrtError(f"{path} does not exist")
        info = info or ModelInfo.from_onnx(path)
        self.spec = ModelSpec(info.preprocess, opts.nms or info.nms_settings)
        convert = opts.fp16 and engine is None  # an engine already has its precision
        self._model: bytes | str = fp16_model_bytes(path) if convert else str(path)

        try:
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
            for _ in range(opts.n_slots):
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
        self._check_open()
        if self._thread != threading.get_ident():  # CUDA contexts are current per thread
            self.device.set_current()
            self._thread = threading.get_ident()
        n = len(frames)
        net = self._net_for.get(n)
        if net is None:
            if n == 0 or n > self.batch_sizes[-1]:
                raise SsdTrtError(f"a batch holds 1..{self.batch_sizes[-1]} frames, not {n}")
            net = self._net_for[n] = self._network(batch_for(self.batch_sizes, n))
        frames = [self._checked(i, f) for i, f in enumerate(frames)]
        slot = self._take_slot()

        # Pack meta (offset, h, w, 0 per frame) and the frames into pinned memory; the layout
        # of a list of frame shapes is computed once.
        shapes = tuple(f.shape for f in frames)
        layout = self._layouts.get(shapes)
        if layout is None:
            layout = self._layouts[shapes] = Layout.of(shapes, net.batch)
            if len(self._layouts) > 64:
                del self._layouts[next(iter(self._layouts))]
        layout.pack(slot.upload.reserve(layout.total), frames)
        dev = self._frames_buffer(slot, layout.total)
        slot.download.reserve(net.batch * self._nms_.record_words * 4)
        self._enq_.enqueue(slot, net, n, int(dev.handle), layout.total, layout.start, bgr,
                           self.options.is_large(net.batch))  # fmt: skip
        handle = FastPathHandle(count=n, _slot=slot)
        slot.handle = handle
        return handle

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
        self.collect(self.submit(frames, bgr=bgr))
        net = self._network(batch_for(self.batch_sizes, n))
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
        net = self._network(batch_for(self.batch_sizes, n))
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
        handle = FastPathHandle(count=n, _slot=slot)
        slot.handle = handle
        return self.collect(handle)

    @property
    def graph_mode(self) -> str:
        """How batches replay: "whole", "split" or "off" (see FastPathOptions)."""
        return self._enq_.graph_mode

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
        """The NMS kernels alone on the last network outputs at ``batch`` (see GpuNms.profile)."""
        return self._nms_.profile(self._network(batch), self.device, reps)

    def nms_debug(self, pointer: int) -> AbstractContextManager[None]:
        """Within: the NMS kernels write 16 int64 phase stamps per image to device memory at
        ``pointer`` (launches of NMS alone, as nms_profile does)."""
        return self._nms_.debug(pointer)

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
        return Slot(
            index=len(self._slots),
            upload=cuda.PinnedBuffer(self._core),
            download=cuda.PinnedBuffer(self._core),
            events=[self.device.create_event(options=opts) for _ in range(len(STAGES) + 1)],
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

    def _network(self, batch: int) -> NetworkRunner:
        net = self._networks.get(batch)
        if net is not None:
            return net
        runtime = "TensorRT" if self._engine else "ONNX Runtime CUDA EP"
        log.info("building the batch-%d network (%s, CUDA graph)", batch, runtime)
        too_big = f"a batch of {batch} does not fit in GPU memory; use smaller batches"
        try:
            net = self._new_network(batch)
        except SsdTrtError:
            raise
        except Exception as exc:
            if cuda.is_oom(exc):
                raise SsdTrtError(too_big) from None
            raise SsdTrtError(
                f"cannot set up the batch-{batch} network: {first_line(exc)}"
            ) from exc
        # Padding images of a partial batch must be finite: zero the input once.
        cfg = self.spec.preprocess
        size = batch * 3 * cfg.height * cfg.width * net.dtypes["images"].itemsize
        cuda.enqueue("cuMemsetD8Async", net.ptr["images"], 0, size, stream=self.stream)
        try:
            net.warm_up(self.stream)
        except Exception as exc:
            net.close(self.stream)
            if cuda.is_oom(exc):
                raise SsdTrtError(too_big) from None
            raise SsdTrtError(f"the batch-{batch} network failed: {first_line(exc)}") from exc
        if net.classes > gpu_kernels.MAX_CLASSES:
            net.close(self.stream)
            raise SsdTrtError(f"the fast path handles up to {gpu_kernels.MAX_CLASSES} classes")
        enq = self._enq_
        large = self.options.is_large(batch)
        if enq.graph_mode == "whole" and not large and not enq.capturable(net):
            # Its run does something a capture refuses: let the runtime replay its own graph.
            log.info("the network's run cannot be captured; using its own CUDA graph instead")
            net.close(self.stream)
            for other in self._networks.values():
                other.close(self.stream)
            self._networks.clear()
            self._net_for.clear()
            enq.drop_graphs()
            enq.graph_mode = "split"
            return self._network(batch)
        self._networks[batch] = net
        if self._nms_.capacity < batch:
            self.stream.sync()
            enq.drop_graphs()  # they point at the NMS buffers replaced next
            self._nms_.grow(batch)
        return net

    def _new_network(self, batch: int) -> NetworkRunner:
        opts, whole = self.options, self._enq_.graph_mode == "whole"
        if self._engine is not None:
            graphs = opts.cuda_graphs and not whole
            return TensorRTNetwork(self._engine, batch, self.spec.preprocess, self.device,
                                   self.stream, cuda_graphs=graphs)  # fmt: skip
        return OrtNetwork(
            self._ort,
            self._model,
            batch,
            self.spec,
            self.device,
            self.stream,
            cuda_graphs=opts.cuda_graphs and not opts.is_large(batch) and not whole,
            tf32=opts.tf32,
            extra_provider_options=opts.session_options(batch),
        )
