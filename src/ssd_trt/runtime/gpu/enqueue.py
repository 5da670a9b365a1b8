"""How one batch is put on the fast path's stream: upload, preprocess kernel, network, NMS,
download and stage events, launched one by one or replayed from CUDA graphs of our own.

Three strategies, by graph mode and batch size:
- "whole" (small batches): the upload, then ONE graph per (slot, network batch) holding the
  preprocess, the network's own kernels, NMS, download and events. Frame sizes and offsets are
  data for the preprocess kernel, so one graph serves every list of frames padding to that batch.
- "split" (the network's run cannot be captured): two graphs of ours per exact batch layout,
  seen twice before it is captured, around the runtime replaying its own graph.
- large batches (>= OVERLAP_MIN_BATCH) outside "whole": launch by launch, with the upload on a
  second stream so that it overlaps the previous batch's network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ...colour import coefficient_table
from ...errors import SsdTrtError, first_line
from .. import cuda
from . import kernels as gpu_kernels
from .gpu_nms import GpuNms, dtype_name
from .ort_network import ModelSpec, NetworkRunner
from .staging import Slot

log = logging.getLogger(__name__)

# Batches of at least this many frames are uploaded on a second stream, so that the upload of one
# batch overlaps the network of the previous one (at batch 1 the extra event wait only costs).
OVERLAP_MIN_BATCH = 8
# Our own CUDA graphs: at most this many batch layouts.
MAX_GRAPHS = 64


class BatchEnqueuer:
    """Issues batches on ``stream`` (see the module docstring); owns our CUDA graphs."""

    def __init__(
        self,
        core: Any,
        device: Any,
        stream: Any,
        kernels: gpu_kernels.Kernels,
        spec: ModelSpec,
        nms: GpuNms,
        graph_mode: str,
    ) -> None:
        self._core, self._device, self.stream = core, device, stream
        self._kernels, self._spec, self._nms = kernels, spec, nms
        self.graph_mode = graph_mode
        self.upload_stream: Any = None  # second stream for uploads of large batches
        self._graphs: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._graph_seen: dict[tuple[Any, ...], int] = {}
        self._prep_launches: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._capturing = False
        # The NV12 kernel's colour coefficients, uploaded now: an allocation inside a graph
        # capture fails (seen on the H200 when this was done on the first NV12 batch).
        self._coef: Any = self._upload_coefficients()

    def enqueue(
        self, slot: Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool,
        large: bool, kind: str = "packed", before: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """Queue one batch: ``total`` bytes of ``slot.upload`` to ``dev`` (a header, then
        frames from byte ``start``); ``large``: the network runs without graphs
        (options.is_large). Frames already on the GPU: ``kind`` "nv12" (the header names
        decoder surfaces) or "packed", and ``before`` issues what must run between the upload
        and the preprocess kernel (producer waits, device copies); such batches are never
        captured whole-layout ("split" graphs), since their pointers change every batch.
        NV12 batches are not captured at all: while NVDEC decoders worked in other threads,
        a capture failed inside cuDNN and left ONNX Runtime unable to run (H100, Dec 5)."""
        if before is not None:
            self._upload(slot, n, dev, total)
            before()
            if self.graph_mode == "whole" and not large and kind != "nv12":
                self._whole(slot, net, dev, start, bgr, kind)
            else:
                self._issue_preprocess(slot, net, dev, start, bgr, kind)
                self.run_network(net)
                self._issue_tail(slot, net)
        elif self.graph_mode == "whole" and not large:
            self._upload(slot, n, dev, total)
            self._whole(slot, net, dev, start, bgr, kind)
        elif n >= OVERLAP_MIN_BATCH:
            self._upload(slot, n, dev, total)
            self._issue_preprocess(slot, net, dev, start, bgr)
            self.run_network(net)
            self._issue_tail(slot, net)
        else:
            self._small(slot, net, n, dev, total, start, bgr)

    def _small(
        self, slot: Slot, net: NetworkRunner, n: int, dev: int, total: int, start: int, bgr: bool
    ) -> None:
        """One batch on one stream: from our own CUDA graph when this exact batch layout (slot,
        buffers, byte count) was seen before, else launch by launch (and count the layout)."""
        key = (slot.index, slot.upload.ptr, slot.download.ptr, dev, total, start, n, net.batch,
               bgr, self._nms.debug_ptr)  # fmt: skip
        graph = self._graphs.get(key)
        if graph is not None:
            self._replay(graph, net)
            return
        seen = self._graph_seen.get(key, 0) + 1
        if len(self._graph_seen) > 4096:
            self._graph_seen.clear()
        self._graph_seen[key] = seen
        if self.graph_mode != "off" and seen >= 2:
            graph = self._split_graphs(slot, net, dev, total, start, bgr)
            if graph is not None:
                self._keep(key, graph)
                self._replay(graph, net)
                return
        self._issue_upload(slot, dev, total, self.stream)
        self._issue_preprocess(slot, net, dev, start, bgr)
        self.run_network(net)
        self._issue_tail(slot, net)

    def _whole(
        self, slot: Slot, net: NetworkRunner, dev: int, start: int, bgr: bool, kind: str
    ) -> None:
        """After the upload: one graph of ours, captured on first use."""
        key = (slot.index, slot.download.ptr, dev, start, net.batch, bgr, self._nms.debug_ptr,
               kind)  # fmt: skip
        graph = self._graphs.get(key)
        if graph is None:

            def body() -> None:
                self._issue_preprocess(slot, net, dev, start, bgr, kind)
                self.run_network(net)
                self._issue_tail(slot, net)

            exe = self.capture(body)
            if exe is None:  # correct, only slower: this batch runs launch by launch
                log.warning("the batch-%d network could not be captured this time", net.batch)
                body()
                return
            graph = (exe,)
            self._keep(key, graph)
        self._replay(graph, net)

    def _keep(self, key: tuple[Any, ...], graph: tuple[Any, ...]) -> None:
        self._graphs[key] = graph
        while len(self._graphs) > MAX_GRAPHS:
            for exe in self._graphs.pop(next(iter(self._graphs))):
                cuda.destroy_graph(exe)

    def _upload(self, slot: Slot, n: int, dev: int, total: int) -> None:
        """From OVERLAP_MIN_BATCH frames on a second stream: the slot's buffers are free (its last
        batch finished before the slot was taken), so only the preprocess waits for the copy."""
        if n < OVERLAP_MIN_BATCH:
            self._issue_upload(slot, dev, total, self.stream)
            return
        up = self.upload_stream
        if up is None:
            up = self.upload_stream = self._device.create_stream()
        self._issue_upload(slot, dev, total, up)
        self.stream.wait(slot.events[1])

    def _issue_upload(self, slot: Slot, dev: int, total: int, stream: Any) -> None:
        ev = slot.events
        self.record(ev[0], stream)
        cuda.enqueue("cuMemcpyHtoDAsync", dev, slot.upload.ptr, total, stream=stream)
        self.record(ev[1], stream)

    def _issue_preprocess(
        self, slot: Slot, net: NetworkRunner, dev: int, start: int, bgr: bool,
        kind: str = "packed",
    ) -> None:  # fmt: skip
        """The resize kernel: from the packed frames after the header at ``dev`` ("packed"),
        or from the NV12 surfaces the header at ``dev`` names ("nv12", which converts to BGR
        first: its channel swap is always on)."""
        key = (net.batch, dev, start, bgr, kind)
        launch = self._prep_launches.get(key)
        if launch is None:
            cfg = self._spec.preprocess
            plane = cfg.height * cfg.width
            block = gpu_kernels.BLOCK_PREPROCESS
            out = dtype_name(net.dtypes["images"])
            head = (
                (self._kernels.preprocess_nv12[out], np.uint64(dev), self._coef)
                if kind == "nv12"
                else (self._kernels.preprocess[out], np.uint64(dev + start), np.uint64(dev))
            )
            launch = self._prep_launches[key] = (
                self._core.LaunchConfig(grid=(-(-plane // block), net.batch), block=block),
                *head,
                np.uint64(net.ptr["images"]),
                np.int32(cfg.height),
                np.int32(cfg.width),
                np.float32(cfg.scale),
                np.float32(cfg.offset),
                np.int32(1 if bgr or kind == "nv12" else 0),
            )
            if len(self._prep_launches) > 256:
                del self._prep_launches[next(iter(self._prep_launches))]
        self._core.launch(self.stream, *launch)
        self.record(slot.events[2], self.stream)

    def _upload_coefficients(self) -> Any:
        """The YUV->RGB coefficient table (colour.py) on the device."""
        table = np.ascontiguousarray(coefficient_table(), np.int32)
        coef = self._device.allocate(table.nbytes, stream=self.stream)
        cuda.enqueue("cuMemcpyHtoDAsync", int(coef.handle), table.ctypes.data, table.nbytes,
                     stream=self.stream)  # fmt: skip
        self.stream.sync()  # the table is a local array: wait before it goes
        return coef

    def run_network(self, net: NetworkRunner) -> None:
        try:
            net.run()
        except Exception as exc:
            raise SsdTrtError(f"the network failed on the GPU: {first_line(exc)}") from exc

    def _issue_tail(self, slot: Slot, net: NetworkRunner) -> None:
        """After the network: NMS, the download of the top-K rows, the batch's last event."""
        ev, stream = slot.events, self.stream
        self.record(ev[3], stream)
        self._nms.launch(net)
        self.record(ev[4], stream)
        size = net.batch * self._nms.record_words * 4
        cuda.enqueue("cuMemcpyDtoHAsync", slot.download.ptr, self._nms.out_ptr, size,
                     stream=stream)  # fmt: skip
        self.record(ev[5], stream)

    def _replay(self, graph: tuple[Any, ...], net: NetworkRunner) -> None:
        """Our graphs in order; None marks where the network runs its own launch."""
        for part in graph:
            if part is None:
                self.run_network(net)
            else:
                cuda.launch_graph(part, self.stream)

    def _split_graphs(
        self, slot: Slot, net: NetworkRunner, dev: int, total: int, start: int, bgr: bool
    ) -> tuple[Any, ...] | None:
        """This batch layout as two graphs of ours, one before and one after the network's
        launch. None (and no more tries) where capture fails."""

        def head() -> None:
            self._issue_upload(slot, dev, total, self.stream)
            self._issue_preprocess(slot, net, dev, start, bgr)

        first = self.capture(head)
        second = self.capture(lambda: self._issue_tail(slot, net)) if first is not None else None
        if first is None or second is None:
            cuda.destroy_graph(first)
            log.info("own CUDA graphs: capture failed; launching kernel by kernel")
            self.graph_mode = "off"
            return None
        return (first, None, second)

    def capture(self, issue: Any) -> Any:
        """``issue()`` captured on our stream into an instantiated graph, or None."""
        self._capturing = True
        try:
            return cuda.capture(self.stream, issue)
        except SsdTrtError as exc:  # CaptureFailed, or the capture could not begin
            log.info("graph capture failed: %s", first_line(exc))
            log.debug("the capture's cause", exc_info=getattr(exc, "cause", exc))
            return None
        finally:
            self._capturing = False

    def capturable(self, net: NetworkRunner) -> bool:
        """Whether one run of ``net`` captures into a graph of ours (checked once per session)."""
        exe = self.capture(net.run)
        cuda.destroy_graph(exe)
        return exe is not None

    def record(self, event: Any, stream: Any) -> None:
        cuda.record(event, stream, capturing=self._capturing)

    @property
    def graph_count(self) -> int:
        """Our instantiated CUDA graphs (batch layouts), for checks."""
        return len(self._graphs)

    def drop_graphs(self) -> None:
        for parts in self._graphs.values():
            for exe in parts:
                cuda.destroy_graph(exe)
        self._graphs.clear()
        self._graph_seen.clear()
        self._prep_launches.clear()  # they name network input buffers that may be rebuilt
        self._nms.forget_launches()

    def close(self) -> None:
        self.drop_graphs()
        if self._coef is not None:
            self._coef.close(self.stream)
            self._coef = None
        if self.upload_stream is not None:
            self.upload_stream.close()
            self.upload_stream = None
