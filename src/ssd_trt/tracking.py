"""Track IDs across a source's frames: one ``Tracker`` per source, each with its own ID space.

The trackers are Roboflow's ``trackers`` package (SORT, ByteTrack, OC-SORT, BoT-SORT;
``pip install 'ssd-trt[track]'``); this module only configures them, feeds them ``Detections``
and hands out the IDs. IDs start at 1 in every ``Tracker`` and count up; a ``Tracker`` never sees
another one's IDs, whatever the library does inside (trackers 2.6 counts per instance from 0;
the remap here keeps that promise if a version ever shares a counter).

Defaults: the library's own (ByteTrack: a track starts at score >= 0.7 and is confirmed after 2
frames in a row; a lost track is kept ``lost_track_buffer`` = 30 frames of 30 FPS, i.e. 1 s at
any frame rate, because the source's ``frame_rate`` is passed on), except that BoT-SORT's
camera-motion compensation runs only when ``update`` is given the frame.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detections import Detections
from .errors import SsdTrtError, require

log = logging.getLogger(__name__)

# Our names -> the trackers package's classes.
TRACKERS = {
    "bytetrack": "ByteTrackTracker",
    "ocsort": "OCSORTTracker",
    "sort": "SORTTracker",
    "botsort": "BoTSORTTracker",
}
DEFAULT_TRACKER = "bytetrack"
_OBJECT_PARAMS = {"self", "frame_rate", "state_estimator_class", "iou"}  # not settable as text


def tracker_class(kind: str) -> type[Any]:
    """The trackers package's class for ``kind`` (imports trackers)."""
    if kind not in TRACKERS:
        raise SsdTrtError(
            f"unknown tracker {kind!r}; choose one of: {', '.join(TRACKERS)} "
            f"(default {DEFAULT_TRACKER})"
        )
    return getattr(require("trackers", "track"), TRACKERS[kind])


def tracker_options(kind: str) -> dict[str, Any]:
    """The options ``kind`` takes as KEY=VALUE text, with the library's defaults."""
    params = inspect.signature(tracker_class(kind).__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name not in _OBJECT_PARAMS and isinstance(p.default, (bool, int, float, str))
    }


def parse_value(text: str) -> bool | int | float | str:
    """'true'/'false' -> bool, '3' -> int, '0.5' / '1e-3' -> float, anything else stays text."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if re.fullmatch(r"[+-]?\d+", low):
        return int(low)
    try:
        return float(low)
    except ValueError:
        return text.strip()


def _coerce(kind: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the library's default for ``key``, range-checked."""
    bad = f"tracker option {key}={value!r} for {kind}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SsdTrtError(f"{bad} must be true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SsdTrtError(f"{bad} must be a number (default {default})")
        if isinstance(default, int) and not float(value).is_integer():
            raise SsdTrtError(f"{bad} must be a whole number (default {default})")
        if not math.isfinite(value) or value < 0:
            raise SsdTrtError(f"{bad} must be a finite number >= 0 (default {default})")
        if key.endswith("threshold") and value > 1:
            raise SsdTrtError(f"{bad} must be between 0 and 1 (default {default})")
        return int(value) if isinstance(default, int) else float(value)
    if not isinstance(value, str):
        raise SsdTrtError(f"{bad} must be text (default {default!r})")
    return value


@dataclass(frozen=True)
class TrackerConfig:
    """Which tracker, the source's frame rate and the library options that differ from the
    defaults. Checked when made, before any video is opened: an unknown tracker, an unknown
    option or a bad value raises ``SsdTrtError`` saying what is valid."""

    kind: str = DEFAULT_TRACKER
    frame_rate: float = 30.0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.frame_rate, (int, float)) or not (
            math.isfinite(self.frame_rate) and self.frame_rate > 0
        ):
            raise SsdTrtError(f"tracker frame rate {self.frame_rate!r} must be a positive number")
        valid = tracker_options(self.kind)  # raises for an unknown kind
        options = {}
        for key, value in self.options.items():
            if key not in valid:
                raise SsdTrtError(
                    f"unknown tracker option {key!r} for {self.kind}; valid: {', '.join(valid)}"
                )
            options[key] = _coerce(self.kind, key, value, valid[key])
        object.__setattr__(self, "options", options)
        try:  # the library's own checks (e.g. cmc_method), once, now rather than mid-run
            self.build()
        except (ValueError, TypeError) as exc:
            raise SsdTrtError(f"bad tracker options for {self.kind}: {exc}") from None

    @classmethod
    def parse(
        cls, kind: str | None = None, options: Iterable[str] = (), frame_rate: float = 30.0
    ) -> TrackerConfig:
        """From CLI text: ``kind`` (None: ByteTrack) and ``KEY=VALUE`` strings. A
        ``frame_rate=`` option overrides the source's rate (for a stream that misreports it)."""
        parsed: dict[str, Any] = {}
        for item in options:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key or not text.strip():
                raise SsdTrtError(f"tracker option {item!r} must look like KEY=VALUE")
            parsed[key] = parse_value(text)
        if "frame_rate" in parsed:
            frame_rate = parsed.pop("frame_rate")
        return cls(kind or DEFAULT_TRACKER, frame_rate, parsed)

    def build(self) -> Any:
        """A fresh instance of the library's tracker."""
        return tracker_class(self.kind)(frame_rate=float(self.frame_rate), **self.options)


class Tracker:
    """One source's tracker. ``update`` takes each frame's ``Detections`` in order and returns
    them (same order, same rows) with ``tracker_id``: 1, 2, 3 ... per confirmed track, counted in
    this Tracker only; -1 for a detection in no confirmed track (a track's first frames, a
    low-score box that matched nothing). Keep ``dets[dets.tracker_id > 0]`` for tracked ones.

    Tracks are class-agnostic (the library matches boxes, not labels); each track is counted
    under the label it was detected with most often (``tracks_per_class``).
    """

    def __init__(
        self,
        config: TrackerConfig | str = DEFAULT_TRACKER,
        *,
        frame_rate: float | None = None,
        name: str = "",
        **options: Any,
    ) -> None:
        if isinstance(config, str):
            config = TrackerConfig(config, 30.0 if frame_rate is None else frame_rate, options)
        elif options or frame_rate is not None:
            merged = {**config.options, **options}
            rate = config.frame_rate if frame_rate is None else frame_rate
            config = dataclasses.replace(config, frame_rate=rate, options=merged)
        self.config = config
        self.name = name
        self._tracker = config.build()
        self._sv = require("supervision", "track")
        self._public: dict[int, int] = {}  # the library's live track id -> ours
        self._labels: dict[int, Counter[str]] = {}  # our live track id -> labels seen
        self._finished: Counter[str] = Counter()  # tracks that ended, by label
        self._next_id = 1

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def uses_frame(self) -> bool:
        """Whether ``update`` reads the frame's pixels (BoT-SORT's camera-motion compensation)."""
        return self.kind == "botsort" and bool(getattr(self._tracker, "enable_cmc", False))

    def update(
        self,
        detections: Detections,
        frame: np.ndarray | None = None,
        timestamp: float | None = None,
    ) -> Detections:
        """Feed one frame's detections; ``frame`` (BGR) is used by BoT-SORT's camera-motion
        compensation only, ``timestamp`` (seconds) for sources with uneven frame times."""
        n = len(detections)
        sv_dets = self._sv.Detections(
            xyxy=detections.boxes.astype(np.float32).reshape(-1, 4),
            confidence=detections.scores.astype(np.float32),
            class_id=detections.class_ids.astype(int),
            data={"row": np.arange(n)},
        )
        use_frame = frame if self.uses_frame else None
        out = self._tracker.update(sv_dets, frame=use_frame, timestamp=timestamp)
        ids = np.full(n, -1, np.int64)
        if len(out) and out.tracker_id is not None:
            rows = np.asarray(out.data["row"], dtype=np.int64)
            for row, internal in zip(rows.tolist(), out.tracker_id.tolist(), strict=True):
                if internal < 0:
                    continue
                tid = self._public.get(internal)
                if tid is None:
                    tid = self._public[internal] = self._next_id
                    self._labels[tid] = Counter()
                    self._next_id += 1
                ids[row] = tid
                self._labels[tid][detections.labels[row]] += 1
        self._retire_ended()
        return dataclasses.replace(detections, tracker_id=ids)

    def _retire_ended(self) -> None:
        """Forget tracks the library dropped, so memory stays bounded on endless streams."""
        alive = {t.tracker_id for t in self._tracker.tracks}
        for internal in [i for i in self._public if i not in alive]:
            self._finish(self._public.pop(internal))

    def _finish(self, tid: int) -> None:
        labels = self._labels.pop(tid)
        if labels:
            self._finished[labels.most_common(1)[0][0]] += 1

    def tracks_per_class(self) -> dict[str, int]:
        """Distinct confirmed tracks seen so far by label, e.g. ``{"person": 14, "car": 3}``;
        counts over the Tracker's whole life, across ``reset()``."""
        counts = Counter(self._finished)
        for labels in self._labels.values():
            if labels:
                counts[labels.most_common(1)[0][0]] += 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def tracks_started(self) -> int:
        """IDs handed out since the last reset (the last ID issued)."""
        return self._next_id - 1

    def reset(self) -> None:
        """Drop all tracks (e.g. after a reconnect that jumped in time); IDs restart at 1."""
        for tid in list(self._labels):
            self._finish(tid)
        self._public.clear()
        self._tracker.reset()
        self._next_id = 1
        where = f" for {self.name}" if self.name else ""
        log.info("tracker%s reset: track IDs restart at 1", where)


class Trackers:
    """One ``Tracker`` per stream key, made on first use from one config (many sources)."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._by_key: dict[str, Tracker] = {}

    def __getitem__(self, key: str) -> Tracker:
        tracker = self._by_key.get(key)
        if tracker is None:
            tracker = self._by_key[key] = Tracker(self.config, name=key)
        return tracker

    def update(self, key: str, detections: Detections, **kwargs: Any) -> Detections:
        return self[key].update(detections, **kwargs)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def keys(self) -> list[str]:
        return list(self._by_key)
