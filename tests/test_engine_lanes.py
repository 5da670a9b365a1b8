"""The one video engine (video/engine.py): one source is one lane, so one source gets what many
get: two batches in flight where the detector queues work, the same stop rule, drop policy,
batch deadline and stats. Fake detectors and array sources: fast, no model needed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_multi import _ArraySource, _QueuedDetector, _Record

from ssd_trt.batching import FILE_WAIT_MS, GPU_MAX_BATCH, HOST_MAX_BATCH, LIVE_WAIT_MS
from ssd_trt.detections import Detections
from ssd_trt.errors import SsdTrtError, Terminated
from ssd_trt.sources import Frame
from ssd_trt.video.engine import Engine
from ssd_trt.video.multi import MultiPipeline, MultiStats
from ssd_trt.video.outputs import JsonLinesOutput, Output, OutputWriteError, frame_record
from ssd_trt.video.pipeline import Pipeline, RunStats


class _LiveArraySource(_ArraySource):
    """A camera: frames at ``fps``, live."""

    live = True

    def __init__(self, source: int, count: int, fps: float) -> None:
        super().__init__(source, count)
        self.interval = 1.0 / fps

    def read(self) -> Frame | None:
        time.sleep(self.interval)
        return super().read()


class _BrokenSource(_ArraySource):
    """Fails after ``good`` frames, as a stream whose reconnects ran out."""

    def __init__(self, source: int, good: int) -> None:
        super().__init__(source, 1000)
        self.good = good

    def read(self) -> Frame | None:
        if self.index >= self.good:
            raise SsdTrtError(f"array{self.source} broke")
        return super().read()


def _identities(record: _Record, source: int) -> bool:
    """Each frame got its own result, not a neighbour's."""
    return [s for _, s in record.rows] == [source * 1e6 + f for f, _ in record.rows]


# ------------------------------------------------------------------- two batches for one


@pytest.mark.parametrize("one_source", ["Engine", "Pipeline"])
def test_one_source_keeps_two_batches_in_flight(one_source: str) -> None:
    """`detect video.mp4 --backend cuda` overlaps as the many-source engine does."""
    detector = _QueuedDetector(gpu_s=0.004)
    out = _Record()
    source = _ArraySource(0, 120)
    if one_source == "Engine":
        engine = Engine(detector, [source], [[out]], max_batch=4, max_wait_ms=2, draw=False)  # type: ignore[arg-type]
        stats = engine.run()
    else:
        pipeline = Pipeline(detector, source, [out], max_batch=4, max_wait_ms=2)  # type: ignore[arg-type]
        stats = pipeline.run()
    assert [f for f, _ in out.rows] == list(range(120)) and _identities(out, 0)
    assert detector.most_open == 2 and stats.overlapped_batches > 0
    assert stats.batches == detector.submits and stats.frames == 120
    assert stats.summary().endswith("stopped by end of stream")


def test_the_synchronous_loop_has_one_batch_of_one_in_flight() -> None:
    detector = _QueuedDetector(gpu_s=0.0)
    out = _Record()
    stats = Pipeline(detector, _ArraySource(0, 30), [out], sync=True).run()  # type: ignore[arg-type]
    assert [f for f, _ in out.rows] == list(range(30)) and _identities(out, 0)
    assert detector.most_open == 1 and stats.batches == 30 and stats.overlapped_batches == 0


# ---------------------------------------------------------------------------- stop rule


def _count_lines(path: Path) -> list[int]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_stops_many_sources_at_a_frame_boundary(sig, tmp_path: Path) -> None:
    """Every output of a source holds the same whole frames, 0..n-1, after Ctrl-C or SIGTERM;
    the run then ends as the signal asks (KeyboardInterrupt, or Terminated for SIGTERM)."""

    def cli_sigterm(signum: int, frame: object) -> None:  # what the CLI installs
        raise Terminated

    n_sources, frames = 3, 5000
    detector = _QueuedDetector(gpu_s=0.002)
    records = [_Record() for _ in range(n_sources)]
    jsonl = [tmp_path / f"s{i}.jsonl" for i in range(n_sources)]
    sent: list[bool] = []

    def on_frame(index: int, result, annotated) -> None:
        if index == 1 and result.frame.index == 20 and not sent:
            sent.append(True)
            os.kill(os.getpid(), sig)  # from an emitter thread, as a user's Ctrl-C would come

    previous = signal.signal(signal.SIGTERM, cli_sigterm)
    try:
        engine = Engine(
            detector,  # type: ignore[arg-type]
            [_ArraySource(i, frames) for i in range(n_sources)],
            [[JsonLinesOutput(p), r] for p, r in zip(jsonl, records, strict=True)],
            max_batch=4,
            max_wait_ms=2,
            draw=False,
            on_frame=on_frame,
        )
        with pytest.raises(KeyboardInterrupt) as stopped:
            engine.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(stopped.value, Terminated) == (sig == signal.SIGTERM)
    word = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert engine.stats.stopped_by == word
    assert engine.stats.summary().splitlines()[0].endswith(f"stopped by {word}")
    for i, (path, record) in enumerate(zip(jsonl, records, strict=True)):
        written = _count_lines(path)  # closed and renamed into place, whole lines only
        assert written == [f for f, _ in record.rows] == list(range(len(written))), i
        assert 0 < len(written) < frames, i  # stopped mid-run, not at the end
        assert engine.stats.sources[f"array{i}"].frames == len(written)
    assert not list(tmp_path.glob(".*")), "a temp file was left behind"


# ------------------------------------------------------------------- drop policy, deadline


def test_defaults_come_from_batching_per_device_and_source_kind() -> None:
    def engine(detector: _QueuedDetector, *sources) -> Engine:
        return Engine(detector, list(sources), [[_Record()] for _ in sources], draw=False)  # type: ignore[arg-type]

    queued, host = _QueuedDetector(0.0), _QueuedDetector(0.0)
    host.supports_submit = False
    assert engine(queued, _ArraySource(0, 1)).max_batch == GPU_MAX_BATCH
    assert engine(host, _ArraySource(0, 1)).max_batch == HOST_MAX_BATCH
    assert Pipeline(host, _ArraySource(0, 1)).max_batch == HOST_MAX_BATCH  # type: ignore[arg-type]
    assert engine(host, _ArraySource(0, 1)).max_wait_s * 1000 == FILE_WAIT_MS
    live = _LiveArraySource(1, 1, 30.0)
    assert engine(host, _ArraySource(0, 1), live).max_wait_s * 1000 == LIVE_WAIT_MS
    assert engine(host, live).max_batch == HOST_MAX_BATCH  # no special case for one camera
    with pytest.raises(SsdTrtError, match="must be a whole number"):
        Engine(host, [_ArraySource(0, 1)], [[]], max_batch=0)  # type: ignore[arg-type]


def test_a_lone_camera_is_not_held_for_the_batch_deadline() -> None:
    """A camera's next frame is a frame interval away: its batch closes at once, however long
    the deadline, so one camera's latency is what it was with single-frame batches."""
    detector = _QueuedDetector(gpu_s=0.0)
    detector.supports_submit = False
    out: list[float] = []
    source = _LiveArraySource(0, 20, fps=50.0)
    engine = Engine(
        detector,  # type: ignore[arg-type]
        [source],
        [[_Record()]],
        max_wait_ms=2000,
        draw=False,
        on_frame=lambda i, r, a: out.append(r.latency_ms),
    )
    t0 = time.perf_counter()
    stats = engine.run()
    assert time.perf_counter() - t0 < 5  # not 20 frames x 2 s
    assert stats.frames + stats.dropped == 20 and max(out) < 1000


def test_live_lanes_keep_their_newest_frame_and_files_never_drop() -> None:
    """A slow detector: the camera drops stale frames but ends on its newest; the file loses
    none."""
    detector = _QueuedDetector(gpu_s=0.03)
    detector.supports_submit = False
    camera, video = _Record(), _Record()
    stats = MultiPipeline(
        detector,  # type: ignore[arg-type]
        [_LiveArraySource(0, 60, fps=200.0), _ArraySource(1, 40)],
        [[camera], [video]],
        max_batch=2,
        draw=False,
    ).run()
    got = [f for f, _ in camera.rows]
    assert stats.sources["array0"].dropped > 0 and got[-1] == 59
    assert got == sorted(set(got)) and len(got) + stats.sources["array0"].dropped == 60
    assert [f for f, _ in video.rows] == list(range(40)) and stats.sources["array1"].dropped == 0


# ------------------------------------------------------------------- failures, one stats type


def test_a_failing_source_ends_its_lane_and_a_lone_one_fails_the_run() -> None:
    detector = _QueuedDetector(gpu_s=0.0)
    good, bad = _Record(), _Record()
    stats = Engine(
        detector,  # type: ignore[arg-type]
        [_ArraySource(0, 50), _BrokenSource(1, 7)],
        [[good], [bad]],
        max_batch=4,
        draw=False,
    ).run()
    assert len(good.rows) == 50 and len(bad.rows) == 7
    assert stats.sources["array1"].error == "array1 broke"
    assert "array1: 7 frames; failed: array1 broke" in stats.summary()
    with pytest.raises(SsdTrtError, match="array0 broke"):
        Pipeline(detector, _BrokenSource(0, 3), [_Record()]).run()  # type: ignore[arg-type]


class _FullDisk(Output):
    shows_image = False

    def __init__(self, after: int) -> None:
        self.after, self.frames = after, 0

    def write(self, result, annotated) -> None:
        if self.frames == self.after:
            raise OutputWriteError("writing x stopped after 5 frames: no space left on device")
        self.frames += 1


def test_a_full_disk_on_one_source_keeps_every_source_s_files(tmp_path: Path) -> None:
    """Many sources now keep what was written (closed, not discarded), as one source did."""
    detector = _QueuedDetector(gpu_s=0.0)
    kept = tmp_path / "kept.jsonl"
    engine = Engine(
        detector,  # type: ignore[arg-type]
        [_ArraySource(0, 400), _ArraySource(1, 400)],
        [[JsonLinesOutput(kept)], [_FullDisk(after=5)]],
        max_batch=2,
        draw=False,
    )
    with pytest.raises(OutputWriteError):
        engine.run()
    assert engine.stats.stopped_by == "an output write failure"
    assert _count_lines(kept) == list(range(len(_count_lines(kept))))  # whole lines, kept


def test_one_stats_type_and_its_summaries() -> None:
    assert MultiStats is RunStats
    detector = _QueuedDetector(gpu_s=0.0)
    one = Pipeline(detector, _ArraySource(0, 9), [_Record()], max_frames=5).run()  # type: ignore[arg-type]
    many = Engine(
        detector,  # type: ignore[arg-type]
        [_ArraySource(0, 9), _ArraySource(1, 3)],
        [[_Record()], [_Record()]],
        ["a", "b"],
        max_frames=5,
        draw=False,
    ).run()
    assert isinstance(one, RunStats) and isinstance(many, RunStats)
    assert list(one.sources) == ["array0"] and one.sources["array0"].frames == 5
    assert one.summary().startswith("5 frames in ")
    assert one.summary().endswith("; stopped by --max-frames")  # every source reached it
    assert one.mean_ms("decode") >= 0 and one.batched_frames == 5
    head, a, b = many.summary().splitlines()
    assert head.startswith("2 sources, 8 frames in ") and head.endswith("end of streams")
    assert (a, b) == ("a: 5 frames", "b: 3 frames")


def test_the_json_record_is_written_once() -> None:
    frame = Frame(3, 0.123456, np.zeros((4, 4, 3), np.uint8), "x.jpg")
    record = frame_record(frame, Detections(), 12.345, 4)
    assert record == {
        "frame": 3,
        "timestamp": 0.1235,
        "inference_ms": 12.35,
        "batch": 4,
        "detections": [],
        "name": "x.jpg",
    }


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_the_ray_writer_writes_json_lines_as_one_host_does(tmp_path: Path) -> None:
    """Same record, same writer: a full disk is the one-line OutputWriteError, not an OSError."""
    from ssd_trt.scale.batch import RayBatchJob, _SourceWriter

    job = RayBatchJob(sources=(), output_dir=tmp_path, json=True, video=False)
    ok = _SourceWriter(job, "ok", None)
    frame = Frame(0, 0.0, np.zeros((2, 2, 3), np.uint8))
    line = json.dumps(frame_record(frame, Detections(), 1, 1))
    ok.write(0, line, b"")
    assert not (tmp_path / "ok.jsonl").exists()  # a temp file until the end
    ok.close(True)
    assert json.loads((tmp_path / "ok.jsonl").read_text()) == json.loads(line)
    (tmp_path / "full.jsonl").symlink_to("/dev/full")
    full = _SourceWriter(job, "full", None)
    with pytest.raises(OutputWriteError, match="stopped after 0 frames: .*free some space"):
        full.write(0, line, b"")
    full.close(True)


def test_max_frames_bounds_every_mode() -> None:
    for sync in (True, False):
        out = _Record()
        stats = Pipeline(
            _QueuedDetector(0.0),  # type: ignore[arg-type]
            _ArraySource(0, 50),
            [out],
            sync=sync,
            max_frames=12,
        ).run()
        assert [f for f, _ in out.rows] == list(range(12)), sync
        assert stats.stopped_by == "--max-frames"
