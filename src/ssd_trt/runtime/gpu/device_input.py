"""Frames already in GPU memory (``DeviceFrame``) into the fast path, read in place.

Two kinds of batch:
- "nv12" (decoder surfaces): no pixel moves at all. The header the ``preprocess_nv12`` kernel
  reads (per image: luma and chroma pointers, pitch, size, colour matrix, range) is uploaded,
  and the kernel converts and resizes straight from the surfaces into the network input.
- "packed" (HxWx3 BGR/RGB device arrays, possibly mixed with numpy frames): each device frame
  is copied on the GPU (device to device, pitched rows packed) into the batch's frame buffer
  next to the uploaded host frames, then the usual ``preprocess`` kernel runs.

Before anything reads a frame, the fast path's stream waits for its producer: the frame's
``ready`` event (a decoder's stream event) or its ``stream``. Nothing here waits on the host.
The handle keeps the frames referenced until the batch is done, so their memory outlives the
reads. Ran on an H200 (Dec 2026): device BGR frames (CuPy-like producers) and NVDEC surfaces
(tests/test_gpu_fastpath.py, tests/test_gpu_nvdec.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...colour import MATRICES
from ...device_frames import DeviceFrame
from ...errors import SsdTrtError
from .. import cuda
from . import kernels as gpu_kernels
from .staging import Layout

Input = np.ndarray | DeviceFrame  # a frame on the host or on the GPU


def batch_kind(frames: Sequence[Input], bgr: bool, device_id: int) -> str:
    """ "nv12", "packed" or "host" for a batch; one-line errors for what cannot share a batch
    or run here."""
    device = [f for f in frames if isinstance(f, DeviceFrame)]
    if not device:
        return "host"
    for f in device:
        if f.device_id is not None and f.device_id != device_id:
            raise SsdTrtError(
                f"a frame is in the memory of GPU {f.device_id}; this detector runs on GPU "
                f"{device_id}"
            )
    nv12 = sum(f.layout == "nv12" for f in device)
    if nv12 and nv12 != len(frames):
        raise SsdTrtError("a batch mixes NV12 frames with others; submit them separately")
    if nv12:
        for f in device:
            if f.planes[0][1] != f.planes[1][1]:
                raise SsdTrtError(
                    "NV12 frames whose luma and chroma pitches differ are not supported; "
                    "copy the frame into one (H*3/2)xW block"
                )
        return "nv12"
    order = "bgr" if bgr else "rgb"
    if any(f.layout != order for f in device):
        raise SsdTrtError(
            f"this detector reads {order.upper()} frames and a device frame is "
            f"{'RGB' if order == 'bgr' else 'BGR'}; make the Detector with rgb="
            f"{order == 'bgr'} or convert the frame"
        )
    return "packed"


def nv12_header(frames: Sequence[DeviceFrame], batch: int) -> np.ndarray:
    """The ``preprocess_nv12`` header (NV12_META int64 per image of the network batch,
    padding rows repeating the last frame) as uint8 bytes."""
    meta = np.zeros((batch, gpu_kernels.NV12_META), np.int64)
    for i, f in enumerate(frames):
        assert f.matrix is not None  # DeviceFrame fills in the default
        (luma, pitch), (chroma, _) = f.planes
        meta[i, :7] = (luma, chroma, pitch, f.height, f.width, MATRICES.index(f.matrix),
                       int(f.full_range))  # fmt: skip
    meta[len(frames) :] = meta[len(frames) - 1]
    return meta.view(np.uint8).reshape(-1)


def shapes_of(frames: Sequence[Input]) -> tuple[tuple[int, ...], ...]:
    return tuple(
        (f.height, f.width, 3) if isinstance(f, DeviceFrame) else tuple(f.shape) for f in frames
    )


class ProducerWaits:
    """Makes the fast path's stream wait for the producers of device frames, once per
    distinct event or stream of a batch (a cuda.core event is reused for foreign streams)."""

    def __init__(self, device: Any, stream: Any) -> None:
        self._stream = stream
        self._event = device.create_event()

    def before_reading(self, frames: Sequence[Input]) -> None:
        events, streams = set(), set()
        for f in frames:
            if not isinstance(f, DeviceFrame):
                continue
            ready = f.ready_handle()
            if ready is not None:
                events.add(ready)
            elif f.stream is not None:
                streams.add(f.stream)
        for event in events:
            cuda.wait_event(self._stream, event)
        ours = cuda.stream_handle(self._stream)
        for producer in streams - {ours}:
            cuda.wait_stream(self._stream, producer, self._event)

    def close(self) -> None:
        self._event.close()


def device_copies(
    frames: Sequence[Input], layout: Layout, dev: int, stream: Any
) -> Callable[[], None]:
    """The copies of a packed batch's device frames into its frame buffer at ``dev``, to run
    after the upload and before the preprocess kernel."""

    def copy() -> None:
        for f, (lo, _) in zip(frames, layout.spans, strict=True):
            if isinstance(f, DeviceFrame):
                ptr, pitch = f.planes[0]
                cuda.copy_rows(dev + lo, ptr, pitch, 3 * f.width, f.height, stream)

    return copy
