"""``--track`` on the video verbs (video/tracks.py): one tracker per source in its emitter, IDs
from 1 per source in the JSON lines, the overlay's ``#ID`` labels and trails, tracks per class
in the summaries, the ``track`` stage time, and bad input refused before any model work.

Real runs: vtest.avi (pedestrians) with the person model, bikes.mp4 with the COCO model, and
four files at once. A reconnect is a real file source whose reconnect count is raised by hand
(no RTSP server here): the tracker is kept, IDs go on, and the log says so."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, optional, run_cli
from test_sources import rtsp_server  # noqa: F401 - the RTSP server fixture

from ssd_trt.detection_batch import STAGES
from ssd_trt.detections import Detections
from ssd_trt.errors import SsdTrtError
from ssd_trt.sources import Frame, open_source
from ssd_trt.video import stats as video_stats
from ssd_trt.video.app import FoundSummary
from ssd_trt.video.overlay import draw_frame, draw_labels
from ssd_trt.video.stats import RunStats, SourceStats
from ssd_trt.video.tracks import LaneTracking, TrackSettings, check_time_ordered

cv2 = optional("cv2", "video")

COCO = "ssdlite_mobilenet_v2_coco"
PERSON = "ssdlite_mobilenet_v2_person"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _walkers(frame: int) -> Detections:
    """Two people walking apart, one box each, as a detector would report them."""
    x = 10.0 + 4 * frame
    boxes = np.array([[x, 50, x + 30, 130], [300 - x, 60, 330 - x, 140]], np.float32)
    return Detections(boxes, np.array([0.9, 0.85], np.float32), np.array([1, 1], np.int32),
                      ["person", "person"])  # fmt: skip


# ------------------------------------------------------------------------------- fast, no model


@pytest.mark.fast
@pytest.mark.needs("trackers", "track")
def test_each_lane_counts_ids_from_one_and_keeps_trails(bikes_video: Path, caplog) -> None:
    sources = [open_source(str(bikes_video)), open_source(str(bikes_video))]
    try:
        lanes = [
            LaneTracking.for_source(TrackSettings(), s, f"cam{i}") for i, s in enumerate(sources)
        ]
        assert lanes[0].tracker.config.frame_rate == pytest.approx(sources[0].fps)
        image = np.zeros((200, 400, 3), np.uint8)
        ids = [[], []]
        for i in range(40):
            for lane, seen in zip(lanes, ids, strict=True):
                seen.append(lane.update(Frame(i, i / 25, image), _walkers(i)).tracker_id.tolist())
        # Same frames, same IDs: each source has its own ID space, from 1.
        assert ids[0] == ids[1] and ids[0][-1] == [1, 2]
        assert ids[0][0] == [-1, -1]  # unconfirmed at first: -1 in the JSON
        trails = lanes[0].trails()
        assert len(trails) == 2 and all(len(p) == lanes[0].trail_frames for _, p in trails)
        # The last point is the box's bottom-centre.
        assert trails[0][1][-1].tolist() == [10 + 4 * 39 + 15, 130]
        # A reconnect keeps the tracker: IDs go on, and the log says so.
        sources[0].reconnects += 1
        with caplog.at_level(logging.INFO, logger="ssd_trt.video.tracks"):
            out = lanes[0].update(Frame(40, 40 / 25, image), _walkers(40))
        assert out.tracker_id.tolist() == [1, 2]
        assert "cam0: reconnected; its tracker is kept (IDs go on from 3" in caplog.text
        # Trails outlive their track's last box by trail_frames frames only.
        for i in range(41, 41 + lanes[0].trail_frames):
            lanes[0].update(Frame(i, i / 25, image), Detections())
        assert lanes[0].trails() == []
        assert lanes[0].tracks_per_class() == {"person": 2}
    finally:
        for s in sources:
            s.close()


@pytest.mark.fast
@pytest.mark.needs("trackers", "track")
def test_track_settings_and_time_order_are_checked(coco_mini: Path, bikes_video: Path) -> None:
    with pytest.raises(SsdTrtError, match="unknown tracker; choose one of bytetrack"):
        TrackSettings("deepsort")
    with pytest.raises(SsdTrtError, match="must look like KEY=VALUE"):
        TrackSettings("bytetrack", ("lost_track_buffer",))
    with pytest.raises(SsdTrtError, match="unknown tracker option 'nope'"):
        TrackSettings("sort", ("nope=1",))
    assert TrackSettings("ocsort", ("frame_rate=12",)).config(25.0).frame_rate == 12
    assert TrackSettings().config(None).frame_rate == 30.0  # a source with no rate
    images = open_source(str(coco_mini / "images"))
    try:
        with pytest.raises(SsdTrtError, match="needs frames in time order"):
            check_time_ordered(images)
    finally:
        images.close()
    with open_source(str(bikes_video)) as video:
        check_time_ordered(video)


@pytest.mark.fast
def test_labels_carry_the_id_and_trails_are_drawn() -> None:
    dets = _walkers(0)
    plain = np.zeros((200, 400, 3), np.uint8)
    tagged = plain.copy()
    rects = draw_labels(plain, dets)
    tagged_rects = draw_labels(tagged, dets, ids=[3, -1])
    assert tagged_rects[0][2] - tagged_rects[0][0] > rects[0][2] - rects[0][0]  # "#3 " more
    assert tagged_rects[1] == rects[1]  # -1: no ID drawn
    image = np.zeros((200, 400, 3), np.uint8)
    trail = np.array([[100, 190], [150, 190], [200, 190]], np.int32)
    draw_frame(image, Detections(), None, 1.0, trails=[(1, trail)])
    assert image[190, 120:180].any(axis=1).all()  # the trail's line
    assert not image[100, 120:180].any()


@pytest.mark.fast
def test_summaries_say_tracks_per_class_and_the_track_stage() -> None:
    assert "track" in STAGES and "track" in video_stats.STAGES
    run = RunStats()
    run.sources["a"] = SourceStats("a", "a.mp4", frames=10, tracks={"person": 14, "car": 1})
    run.sources["b"] = SourceStats("b", "b.mp4", frames=10, tracks={"person": 2})
    assert run.tracks == {"person": 16, "car": 1}
    assert "a: 10 frames; person: 14 tracks, car: 1 track" in run.summary()
    run.add("track", 0.4)
    run.add("draw", 1.0)
    assert run.stages_line() == "per frame: track 0.40 ms, draw 1.00 ms"
    assert RunStats().tracks is None
    found = FoundSummary()
    found.per_class, found.frames = {"person": (9, 0.9), "dog": (1, 0.6)}, 10
    assert found.lines({"person": 14}) == [
        "person: in 9 of 10 frames (best 0.90), 14 tracks",
        "dog: in 1 of 10 frames (best 0.60), 0 tracks",
    ]
    assert found.lines()[0] == "person: in 9 of 10 frames (best 0.90)"


@pytest.mark.fast
@pytest.mark.needs("trackers", "track")
@pytest.mark.parametrize(
    "extra, message",
    [
        (["VIDEO", "--track", "deepsort"], "--track 'deepsort': unknown tracker"),
        (["--track", "VIDEO"], "put the source before --track"),
        (["VIDEO", "--track", "--track-option", "lost_track_buffer=-3"], "must be a finite"),
        (["VIDEO", "--track", "--track-option", "bogus"], "must look like KEY=VALUE"),
        (["VIDEO", "--track-option", "lost_track_buffer=60"], "--track-option needs --track"),
        (["IMAGES", "--track"], "needs frames in time order"),
        (["VIDEO", "IMAGES", "--output-dir", "OUT", "--track"], "needs frames in time order"),
        (["VIDEO", "--output-dir", "OUT", "--ray", "--track"], "--track cannot run with --ray"),
    ],
)
def test_bad_track_input_is_one_line_before_model_work(
    extra, message, tmp_path: Path, bikes_video: Path, coco_mini: Path
) -> None:
    # A model that does not exist: any error about it would mean model work started first.
    subs = {"VIDEO": str(bikes_video), "IMAGES": str(coco_mini / "images"), "OUT": str(tmp_path)}
    args = [subs.get(a, a) for a in extra]
    proc = run_cli("detect", *args, "--model", "no_such_model", "--no-show")
    assert proc.returncode == 2, proc.stderr
    assert message in error_line(proc)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- real models


@pytest.mark.needs("trackers", "track")
def test_vtest_pedestrians_are_tracked(vtest_video: Path, tmp_path: Path, model_cache) -> None:
    out = tmp_path / "vtest.jsonl"
    proc = run_cli(
        "detect", str(vtest_video), "--model", PERSON, "--track", "--json", str(out),
        "--no-show", "--cache-dir", str(model_cache),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _jsonl(out)
    assert len(records) == 795
    dets = [d for r in records for d in r["detections"]]
    assert dets and all(isinstance(d["track_id"], int) for d in dets)
    lengths = Counter(d["track_id"] for d in dets if d["track_id"] > 0)
    confident = [d for d in dets if d["score"] >= 0.5]
    with_id = sum(d["track_id"] > 0 for d in confident) / len(confident)
    median = float(np.median(list(lengths.values())))
    # Measured (ByteTrack defaults, ONNX Runtime CPU): 72 tracks, median 29.5 frames, 92%.
    assert 40 <= len(lengths) <= 110, (len(lengths), median, with_id)
    assert 15 <= median <= 80 and with_id >= 0.85, (len(lengths), median, with_id)
    assert min(lengths) == 1 and max(lengths) == len(lengths)  # IDs 1..N, none skipped
    # The summary agrees with the JSON, and the stage times include tracking.
    assert f"person: in 789 of 795 frames (best 1.00), {len(lengths)} tracks" in proc.stdout
    assert "track " in proc.stderr.split("per frame:")[1].splitlines()[0]


@pytest.mark.needs("trackers", "track")
def test_bikes_summary_counts_cars_and_cyclists(bikes_video: Path, model_cache) -> None:
    proc = run_cli(
        "detect", str(bikes_video), "--model", COCO, "--track", "--no-show",
        "--cache-dir", str(model_cache),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    tracks = {}
    for line in proc.stdout.splitlines():
        label, _, rest = line.partition(": in ")
        tracks[label] = int(rest.rsplit(", ", 1)[1].split()[0])
    # Measured: car 1, bicycle 2, person 3 (the riders).
    assert 1 <= tracks["car"] <= 3, proc.stdout
    assert 1 <= tracks["bicycle"] <= 4 and 1 <= tracks["person"] <= 6, proc.stdout


@pytest.mark.needs("trackers", "track")
def test_four_sources_each_count_ids_from_one(
    bikes_video: Path, vtest_video: Path, tmp_path: Path, model_cache
) -> None:
    shutil.copy(bikes_video, tmp_path / "again.mp4")
    shutil.copy(vtest_video, tmp_path / "walkers.avi")
    out = tmp_path / "out"
    sources = [str(bikes_video), str(tmp_path / "again.mp4"), str(vtest_video),
               str(tmp_path / "walkers.avi")]  # fmt: skip
    proc = run_cli(
        "detect", *sources, "--output-dir", str(out), "--json", "--track", "--max-frames", "60",
        "--model", COCO, "--cache-dir", str(model_cache),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = {}
    for name in ("bikes", "again", "vtest", "walkers"):
        records = _jsonl(out / f"{name}.jsonl")
        assert len(records) == 60
        ids[name] = [[d["track_id"] for d in r["detections"]] for r in records]
        seen = sorted({t for frame in ids[name] for t in frame if t > 0})
        assert seen == list(range(1, len(seen) + 1)), (name, seen)  # from 1, per source
    # The same frames give the same IDs in two sources: no ID space is shared, however the
    # batches mixed their frames.
    assert ids["bikes"] == ids["again"] and ids["vtest"] == ids["walkers"]
    assert any(t > 0 for frame in ids["vtest"] for t in frame)
    assert "vtest: 60 frames; person: " in proc.stderr
    assert "track " in proc.stderr.split("per frame:")[1].splitlines()[0]


def test_a_killed_rtsp_source_keeps_its_tracker_and_leaves_the_others_ids_alone(
    bikes_video: Path,
    graph_onnx: Path,
    rtsp_server,  # noqa: F811 - GStreamer's RTSP server, killed and restarted mid-run
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two copies of bikes.mp4 and a live RTSP stream, tracked together; the stream's server is
    killed after its 10th frame and restarted a second later. The files' IDs start at 1 and stay
    equal to each other (each source's tracker sees only its own frames), and the reconnected
    stream keeps its tracker and says so."""
    import threading
    import time

    from ssd_trt.detector import Detector
    from ssd_trt.source_names import unique_names
    from ssd_trt.video.app import MultiJob, StreamSettings, run_multi

    shutil.copy(bikes_video, tmp_path / "again.mp4")
    specs = (str(bikes_video), str(tmp_path / "again.mp4"), rtsp_server.url)
    rtsp, events = 2, {}
    counted = [0, 0, 0]

    def on_frame(index: int, result, annotated) -> None:
        counted[index] += 1
        if index == rtsp and counted[rtsp] == 10 and "killed" not in events:
            events["killed"] = time.monotonic()
            rtsp_server.kill()
            threading.Timer(1.0, rtsp_server.start).start()

    streams = StreamSettings(reconnect_attempts=12, backoff_s=0.2, max_backoff_s=0.5, timeout_s=3)
    job = MultiJob(
        sources=specs,
        output_dir=tmp_path / "out",
        json=True,
        max_frames=60,
        streams=streams,
        track=TrackSettings(),
    )
    with caplog.at_level(logging.INFO, logger="ssd_trt.video.tracks"):
        stats = run_multi(job, lambda: Detector(graph_onnx, "cpu"), on_frame=on_frame)
    live = stats.sources[unique_names(specs)[rtsp]]
    assert live.reconnects >= 1, live
    assert any("tracker is kept" in r.getMessage() for r in caplog.records), caplog.text
    ids = {}
    for name in ("bikes", "again"):
        records = _jsonl(tmp_path / "out" / f"{name}.jsonl")
        assert len(records) == 60
        ids[name] = [[d["track_id"] for d in r["detections"]] for r in records]
        seen = sorted({t for frame in ids[name] for t in frame if t > 0})
        assert seen and seen == list(range(1, len(seen) + 1)), (name, seen)
    assert ids["bikes"] == ids["again"]
