"""The fast path's networks: one per batch size, built on first use and warmed up, run by
ONNX Runtime's CUDA provider or a TensorRT engine on the fast path's stream and buffers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...errors import SsdTrtError, first_line
from .. import cuda
from . import kernels as gpu_kernels
from .enqueue import BatchEnqueuer
from .gpu_nms import GpuNms
from .options import FastPathOptions, batch_for
from .ort_network import ModelSpec, NetworkRunner, OrtNetwork
from .trt_network import TensorRTNetwork

log = logging.getLogger(__name__)


class NetworkSet:
    """Networks by batch size. ``model``: the ONNX (bytes when converted to fp16) for ONNX
    Runtime; ``engine``: a TensorRT engine that runs instead. A network whose run cannot be
    captured into our graphs switches the enqueuer to "split" graphs (and rebuilds)."""

    def __init__(
        self,
        model: bytes | str,
        engine: Path | None,
        ort: Any,
        spec: ModelSpec,
        options: FastPathOptions,
        device: Any,
        stream: Any,
        enq: BatchEnqueuer,
        nms: GpuNms,
    ) -> None:
        self._model, self._engine, self._ort = model, engine, ort
        self.spec, self.options = spec, options
        self.device, self.stream = device, stream
        self._enq, self._nms = enq, nms
        self._networks: dict[int, NetworkRunner] = {}
        self._for_count: dict[int, NetworkRunner] = {}  # network per frame count, looked up once

    def for_count(self, n: int) -> NetworkRunner:
        """The network that runs a batch of ``n`` frames (the next batch size up)."""
        net = self._for_count.get(n)
        if net is None:
            sizes = self.options.batch_sizes
            if n == 0 or n > sizes[-1]:
                raise SsdTrtError(f"a batch holds 1..{sizes[-1]} frames, not {n}")
            net = self._for_count[n] = self.get(batch_for(sizes, n))
        return net

    def get(self, batch: int) -> NetworkRunner:
        net = self._networks.get(batch)
        if net is not None:
            return net
        runtime = "TensorRT" if self._engine else "ONNX Runtime CUDA EP"
        log.info("building the batch-%d network (%s, CUDA graph)", batch, runtime)
        too_big = f"a batch of {batch} does not fit in GPU memory; use smaller batches"
        try:
            net = self._new(batch)
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
        enq = self._enq
        large = self.options.is_large(batch)
        if enq.graph_mode == "whole" and not large and not enq.capturable(net):
            # Its run does something a capture refuses: let the runtime replay its own graph.
            log.info("the network's run cannot be captured; using its own CUDA graph instead")
            net.close(self.stream)
            for other in self._networks.values():
                other.close(self.stream)
            self._networks.clear()
            self._for_count.clear()
            enq.drop_graphs()
            enq.graph_mode = "split"
            return self.get(batch)
        self._networks[batch] = net
        if self._nms.capacity < batch:
            self.stream.sync()
            enq.drop_graphs()  # they point at the NMS buffers replaced next
            self._nms.grow(batch)
        return net

    def _new(self, batch: int) -> NetworkRunner:
        opts, whole = self.options, self._enq.graph_mode == "whole"
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

    def close(self) -> None:
        for net in self._networks.values():
            net.close(self.stream)
        self._networks.clear()
        self._for_count.clear()
