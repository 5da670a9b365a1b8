"""Batching: the one home of ``max_batch`` and the batch deadline, and their defaults.

Every other setting derives from these: the TensorRT engine's input profile, the GPU fast
path's graph sizes, the video engine's batches, Ray Serve's ``@serve.batch``. A verb's
``--max-batch`` reaches the Detector, which resolves the default once it knows its backend.
"""

from __future__ import annotations

from .errors import SsdTrtError

# The GPU fast path: 32 frames a batch is what sustained 32 camera streams on the H100 (larger
# batches wait longer to fill than they save on the GPU).
GPU_MAX_BATCH = 32
# Host-stage backends (ONNX Runtime, TensorRT with host arrays): batches of 8 amortize the
# per-call cost without holding frames long on a CPU.
HOST_MAX_BATCH = 8
# A batch closes this long after its first frame even when not full: a third of a 30 FPS
# frame interval keeps live latency low; files wait longer so GPU batches fill.
LIVE_WAIT_MS = 10.0
FILE_WAIT_MS = 50.0


def default_max_batch(on_gpu: bool) -> int:
    """The batch size a run uses when none is asked for."""
    return GPU_MAX_BATCH if on_gpu else HOST_MAX_BATCH


def default_wait_ms(live: bool) -> float:
    """How long a batch waits to fill: short when any source is live, longer for files."""
    return LIVE_WAIT_MS if live else FILE_WAIT_MS


def check_max_batch(value: int | None) -> int | None:
    """``None`` (the default for the backend) or a positive int; else one clear error."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SsdTrtError(f"max_batch {value!r} must be a whole number >= 1 (or None)")
    return value
