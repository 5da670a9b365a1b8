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
    """Where the frames of one list of frame shapes go in the packed upload. The header has a
    row per image of the network batch: padding rows repeat the last frame, so the kernels
    always run the whole batch and one graph serves any frame count that pads to it."""

    meta: np.ndarray  # uint8 bytes of the header: (offset, h, w, 0) int64 per frame
    spans: tuple[tuple[int, int], ...]  # byte range of each frame in the upload
    start: int  # first frame byte
    total: int  # bytes to upload

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, ...]], batch: int) -> Layout:
        header = 4 * 8 * batch
        start = -(-header // ALIGN) * ALIGN
        meta = np.zeros((batch, 4), np.int64)
        spans, cursor = [], 0
        for i, shape in enumerate(shapes):
            nbytes = int(np.prod(shape))
            meta[i] = (cursor, shape[0], shape[1], 0)
            spans.append((start + cursor, start + cursor + nbytes))
            cursor += -(-nbytes // ALIGN) * ALIGN
        meta[len(shapes) :] = meta[len(shapes) - 1]
        return cls(meta.view(np.uint8).reshape(-1), tuple(spans), start, start + cursor)

    def pack(self, host: np.ndarray, frames: Sequence[np.ndarray]) -> None:
        """Header and frames into ``host`` (the pinned upload buffer, >= ``total`` bytes)."""
        host[: self.meta.nbytes] = self.meta
        for f, (lo, hi) in zip(frames, self.spans, strict=True):
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
