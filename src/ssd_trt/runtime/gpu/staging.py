"""The fast path's host side of a batch: where frames go in the packed upload, the buffers and
events of one batch in flight, and the detections read back from the compact NMS records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...detection_batch import DetectionBatch
from ..cuda import PinnedBuffer

ALIGN = 256  # byte alignment of each frame in the packed upload


@dataclass(frozen=True)
class Layout:
    """Where the frames of one list of frame shapes go in the packed frame buffer. The header
    has a row per image of the network batch: padding rows repeat the last frame, so the
    kernels always run the whole batch and one graph serves any frame count that pads to it.
    Host frames come first, so one upload of ``upload`` bytes carries the header and all of
    them; frames already on the GPU (``on_device``) are copied in behind them on the device."""

    meta: np.ndarray  # uint8 bytes of the header: (offset, h, w, 0) int64 per frame
    spans: tuple[tuple[int, int], ...]  # byte range of each frame in the buffer
    start: int  # first frame byte
    total: int  # bytes of the buffer in use
    upload: int  # bytes to upload: the header and the host frames

    @classmethod
    def of(
        cls, shapes: Sequence[tuple[int, ...]], batch: int, on_device: Sequence[bool] = ()
    ) -> Layout:
        header = 4 * 8 * batch
        start = -(-header // ALIGN) * ALIGN
        meta = np.zeros((batch, 4), np.int64)
        spans: list[tuple[int, int]] = [(0, 0)] * len(shapes)
        device = list(on_device) or [False] * len(shapes)
        cursor, upload = 0, start
        for i in sorted(range(len(shapes)), key=lambda i: device[i]):  # host frames first
            nbytes = int(np.prod(shapes[i]))
            meta[i] = (cursor, shapes[i][0], shapes[i][1], 0)
            spans[i] = (start + cursor, start + cursor + nbytes)
            upload = spans[i][1] if not device[i] else upload
            cursor += -(-nbytes // ALIGN) * ALIGN
        meta[len(shapes) :] = meta[len(shapes) - 1]
        total = start + cursor
        return cls(meta.view(np.uint8).reshape(-1), tuple(spans), start, total,
                   total if not any(device) else upload)  # fmt: skip

    def pack(self, host: np.ndarray, frames: Sequence[np.ndarray | None]) -> None:
        """Header and host frames into ``host`` (the pinned upload buffer, >= ``upload``
        bytes); None marks a frame that is copied on the device instead."""
        host[: self.meta.nbytes] = self.meta
        for f, (lo, hi) in zip(frames, self.spans, strict=True):
            if f is not None:
                host[lo:hi] = f.reshape(-1)


@dataclass
class Slot:
    """Host-side buffers and events of one batch in flight."""

    index: int
    upload: PinnedBuffer
    download: PinnedBuffer
    events: list[Any]  # recorded before upload and after each stage
    handle: FastPathHandle | None = None
    frames_dev: Any = None  # device copy of the packed frames (its batch is done on reuse)


@dataclass
class FastPathHandle:
    """A submitted batch. Pass it to ``GpuFastPath.collect``."""

    count: int
    _slot: Slot
    _result: DetectionBatch | None = None
    _stage_ms: dict[str, float] = field(default_factory=dict)
    _keep: tuple[Any, ...] = ()  # device frames read by the batch: alive until it is done


def record_words(max_total: int) -> int:
    """int32 words of one image's NMS record: the count, then top-K boxes, scores, classes."""
    return 1 + 6 * max_total


def read_records(raw: np.ndarray, n: int, max_total: int) -> DetectionBatch:
    """The detections of ``n`` images from the downloaded records (copies, safe to keep)."""
    words, k = record_words(max_total), max_total
    rec = raw[: n * words * 4].view(np.int32).reshape(n, words)
    return DetectionBatch(
        num_detections=rec[:, :1].copy(),
        detection_boxes=rec[:, 1 : 1 + 4 * k].view(np.float32).reshape(n, k, 4).copy(),
        detection_scores=rec[:, 1 + 4 * k : 1 + 5 * k].view(np.float32).copy(),
        detection_classes=rec[:, 1 + 5 * k :].copy(),
    )
