"""The engine's tracking stage (``--track``): one ``Tracker`` per source, each with its own ID
space (IDs from 1), run in that source's emitter after detection and before drawing and the
outputs, so it never holds up the detector. It also keeps each track's short trail of box
bottom-centres for the overlay.

A reconnected stream keeps its tracker: IDs go on counting (an ID is never reused within a
source), tracks lost over the gap end after the tracker's ``lost_track_buffer``, and the log
says so. Image folders have no time order, so tracking refuses them before any model work.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..detections import Detections
from ..errors import SsdTrtError
from ..sources import Frame, ImageSource, Source, innermost
from ..tracking import DEFAULT_TRACKER, TRACKERS, Tracker, TrackerConfig

log = logging.getLogger(__name__)

DEFAULT_FRAME_RATE = 30.0  # for a source that reports none
TRAIL_FRAMES = 30  # points in a trail, and how long a trail outlives its track's last box

Point = tuple[int, int]


@dataclass(frozen=True)
class TrackSettings:
    """``--track KIND`` and its ``--track-option KEY=VALUE`` texts, checked when made (an
    unknown tracker or option raises ``SsdTrtError`` before any source or model work); each
    source's config takes that source's frame rate unless ``frame_rate=`` is given."""

    kind: str = DEFAULT_TRACKER
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TRACKERS:
            raise SsdTrtError(
                f"--track {self.kind!r}: unknown tracker; choose one of {', '.join(TRACKERS)} "
                f"(no value: {DEFAULT_TRACKER}), and put the source before --track"
            )
        self.config(None)

    def config(self, fps: float | None) -> TrackerConfig:
        return TrackerConfig.parse(self.kind, self.options, fps or DEFAULT_FRAME_RATE)


def check_time_ordered(source: Source) -> None:
    """Tracking follows objects from frame to frame; a set of images has no such order."""
    if isinstance(innermost(source), ImageSource):
        raise SsdTrtError(
            f"--track needs frames in time order (a video, stream or camera), but "
            f"{source.description} is a set of images; drop --track for images"
        )


class LaneTracking:
    """One source's tracker and trails; used by that source's emitter thread only."""

    def __init__(self, tracker: Tracker, source: Source, trail_frames: int = TRAIL_FRAMES) -> None:
        self.tracker, self.source = tracker, source
        self.trail_frames = trail_frames
        self._reconnects = source.reconnects
        self._frame = 0
        self._trails: dict[int, deque[Point]] = {}
        self._last_seen: dict[int, int] = {}  # track id -> the frame count it was last seen at
        self._class: dict[int, int] = {}  # track id -> its latest class id (the trail colour)

    @classmethod
    def for_source(cls, settings: TrackSettings, source: Source, name: str) -> LaneTracking:
        """A fresh tracker at the source's own frame rate (checked for time order first)."""
        check_time_ordered(source)
        return cls(Tracker(settings.config(source.fps), name=name), source)

    def update(self, frame: Frame, detections: Detections) -> Detections:
        """The frame's detections with ``tracker_id``; trails updated."""
        if self.source.reconnects != self._reconnects:
            self._reconnects = self.source.reconnects
            log.info(
                "%s: reconnected; its tracker is kept (IDs go on from %d, tracks lost in the "
                "gap end after the tracker's lost_track_buffer)",
                self.tracker.name or self.source.description,
                self.tracker.tracks_started + 1,
            )
        # Pixels only for a tracker that reads them: a GPU frame is not downloaded otherwise.
        image = frame.image if self.tracker.uses_frame else None
        tracked = self.tracker.update(detections, frame=image, timestamp=frame.timestamp)
        self._frame += 1
        assert tracked.tracker_id is not None
        for box, tid, cid in zip(
            tracked.boxes, tracked.tracker_id.tolist(), tracked.class_ids.tolist(), strict=True
        ):
            if tid <= 0:
                continue
            trail = self._trails.setdefault(tid, deque(maxlen=self.trail_frames))
            trail.append((int(round((box[0] + box[2]) / 2)), int(round(box[3]))))
            self._last_seen[tid], self._class[tid] = self._frame, int(cid)
        for tid in [t for t, f in self._last_seen.items() if self._frame - f >= self.trail_frames]:
            del self._trails[tid], self._last_seen[tid], self._class[tid]
        return tracked

    def trails(self) -> list[tuple[int, np.ndarray]]:
        """(class id, [P, 2] int32 points, oldest first) for each recent track of 2+ points."""
        return [
            (self._class[tid], np.asarray(points, np.int32))
            for tid, points in self._trails.items()
            if len(points) > 1
        ]

    def tracks_per_class(self) -> dict[str, int]:
        return self.tracker.tracks_per_class()
