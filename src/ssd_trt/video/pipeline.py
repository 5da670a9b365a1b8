"""One source through the engine (video/engine.py), for callers that think in one source: the
bench, ``ssd-trt bench``'s synchronous reference, and code written against ``Pipeline``.

Also the old home of the run statistics and the frame-rate meter (now video/stats.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..detector import Detector
from ..sources import Source
from .engine import Engine
from .outputs import FrameResult, Output
from .stats import STAGES, FpsMeter, RunStats, stopped_by

__all__ = ["STAGES", "FpsMeter", "Pipeline", "RunStats", "stopped_by"]


class Pipeline:
    """Run ``detector`` over ``source`` into ``outputs``: the engine with one lane.

    ``sync=True`` runs the plain capture/infer/draw loop (for comparison). ``queue_size``: the
    frames a file's lane holds at least. ``max_batch``: at most this many frames per detector
    call (None: ``batching``'s default for the device). ``draw=None`` draws when an output
    shows pictures. ``on_frame`` is called after each frame's outputs (progress).
    """

    def __init__(
        self,
        detector: Detector,
        source: Source,
        outputs: Sequence[Output] = (),
        *,
        sync: bool = False,
        queue_size: int | None = None,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        draw: bool | None = None,
        max_frames: int | None = None,
        on_frame: Callable[[FrameResult], None] | None = None,
    ) -> None:
        self.detector, self.source, self.outputs = detector, source, list(outputs)
        self.engine = Engine(
            detector,
            [source],
            [self.outputs],
            sync=sync,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            file_depth=queue_size,
            draw=any(o.shows_image for o in self.outputs) if draw is None else draw,
            max_frames=max_frames,
            on_frame=None if on_frame is None else lambda _, result, __: on_frame(result),
        )
        self.sync = sync
        self.max_batch = self.engine.max_batch
        self.draw = self.engine.draw

    @property
    def stats(self) -> RunStats:
        return self.engine.stats

    def run(self) -> RunStats:
        """Process until the stream ends, an output stops it, or Ctrl-C; then finalize the
        outputs (see ``Engine.run``)."""
        return self.engine.run()
