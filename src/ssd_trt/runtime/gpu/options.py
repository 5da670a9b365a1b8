"""The fast path's settings, one frozen dataclass (checked when made, before any GPU work)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ...errors import SsdTrtError
from ...nms import NmsSettings
from . import kernels

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
GRAPH_MODES = ("whole", "split", "off")


@dataclass(frozen=True)
class FastPathOptions:
    """How ``GpuFastPath`` runs.

    ``batch_sizes``: the network batch sizes (one network and CUDA graph each, built on first
    use; smaller batches are padded to the next size, larger ones split). ``fp16``: convert the
    network to float16. ``candidate_cap``: at most this many (anchor, class) candidates per image
    go into NMS (<= 1024). ``tf32``: let ONNX Runtime use TF32 convolutions in fp32 mode (its
    own default; scores move by ~2e-3 against the CPU, network 0.89 instead of 1.30 ms at
    batch 1 on an H100); False for plain float32. ``own_graphs``: everything after the upload
    (preprocess, network, NMS, download, events) replays from one CUDA graph of our own per
    (slot, batch size), the network's kernels captured into it ("whole", True); where that
    capture fails, the runtime replays its own graph between two of ours ("split"); False:
    launch by launch. ``cuda_graphs=False``: no graphs at all. ``n_slots``: batches in flight.
    ``timing``: CUDA events per stage (the stage times). ``nms``: NMS settings (default: the
    model's). ``large_batch``/``large_batch_options``: batch sizes from ``large_batch`` up run
    without a CUDA graph and with these provider options on top (e.g. prefer_nhwc, which
    capture refuses); None keeps every batch size like the small ones. ``blocking_wait``: threads
    waiting for the GPU sleep instead of spinning a core (blocking synchronisation asked for on
    the primary context, if the fast path is first to make it, and a blocking event for each
    batch's host wait); False spins, CUDA's default, a few microseconds quicker per wait. NVDEC
    decoders ask for blocking waits regardless, so one made before the fast path decides.
    """

    device_id: int = 0
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    fp16: bool = False
    candidate_cap: int = 1000
    cuda_graphs: bool = True
    tf32: bool = True
    n_slots: int = 2
    timing: bool = True
    nms: NmsSettings | None = None
    provider_options: Mapping[str, str] = field(default_factory=dict)
    large_batch: int = 16
    large_batch_options: Mapping[str, str] | None = None
    own_graphs: bool | str = True
    blocking_wait: bool = True

    def __post_init__(self) -> None:
        sizes = tuple(sorted({int(b) for b in self.batch_sizes}))
        if not sizes or sizes[0] < 1:
            raise SsdTrtError(
                f"batch sizes must be positive integers, not {list(self.batch_sizes)}"
            )
        object.__setattr__(self, "batch_sizes", sizes)
        if not 1 <= self.candidate_cap <= kernels.MAX_CANDIDATES:
            raise SsdTrtError(f"candidate_cap must be 1..{kernels.MAX_CANDIDATES}")
        if self.n_slots < 1:
            raise SsdTrtError("n_slots must be at least 1")
        if self.own_graphs not in (True, False, "whole", "split"):
            raise SsdTrtError(
                f"own_graphs is True, False, 'whole' or 'split', not {self.own_graphs!r}"
            )
        if not isinstance(self.own_graphs, str):  # 0/1 mean False/True
            object.__setattr__(self, "own_graphs", bool(self.own_graphs))
        object.__setattr__(self, "provider_options", dict(self.provider_options or {}))
        if self.large_batch_options is not None:
            object.__setattr__(self, "large_batch_options", dict(self.large_batch_options))

    @classmethod
    def of(cls, options: FastPathOptions | None = None, **overrides: Any) -> FastPathOptions:
        """``options`` with keyword overrides (the keyword arguments GpuFastPath once took);
        an unknown name is a one-line error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SsdTrtError(f"unknown fast path option(s) {', '.join(unknown)}")
        return replace(options or cls(), **overrides)

    @property
    def graph_mode(self) -> str:
        """The starting graph mode: "whole", "split" or "off" (see the class docstring)."""
        if not self.cuda_graphs or self.own_graphs is False:
            return "off"
        return "whole" if self.own_graphs is True else str(self.own_graphs)

    def is_large(self, batch: int) -> bool:
        return self.large_batch_options is not None and batch >= self.large_batch

    def session_options(self, batch: int) -> dict[str, str]:
        """The ONNX Runtime CUDA provider options of the batch-``batch`` session."""
        if self.is_large(batch):
            return {**self.provider_options, **(self.large_batch_options or {})}
        return dict(self.provider_options)


def batch_for(sizes: Sequence[int], n: int) -> int:
    """The smallest network batch size that holds ``n`` frames."""
    return next(b for b in sizes if b >= n)
