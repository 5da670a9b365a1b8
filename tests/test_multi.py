"""Many sources on one host (video/multi.py): real files, images and an RTSP stream at once,
batched into shared inference calls, with per-source outputs."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, optional, run_cli
from test_sources import _free_port, rtsp_server  # noqa: F401 - the RTSP server fixture

from ssd_trt.detections import Detections
from ssd_trt.detector import Detector
from ssd_trt.errors import SsdTrtError
from ssd_trt.sources import Frame, Source
from ssd_trt.video.multi import (
    MultiJob,
    MultiPipeline,
    StreamSettings,
    decode_threads_for,
    read_source_list,
    run_multi,
    source_name,
    unique_names,
)
from ssd_trt.video.outputs import Output

cv2 = optional("cv2", "video")

MODEL = "ssdlite_mobilenet_v2_coco"


@pytest.mark.fast
def test_source_names_are_unique_and_file_safe(tmp_path: Path) -> None:
    specs = [
        "/data/cams/front door.mp4",
        "/other/front door.mp4",
        "rtsp://127.0.0.1:8554/live",
        "rtsp://user:pw@10.0.0.5/cam/1",
        "3",
        "/photos/",
        "front door",
    ]
    assert unique_names(specs) == [
        "front_door",
        "front_door-2",
        "127.0.0.1_8554_live",
        "10.0.0.5_cam_1",
        "camera3",
        "photos",
        "front_door-3",
    ]
    assert source_name("rtsp://h") == "h"
    listing = tmp_path / "list.txt"
    listing.write_text("# cameras\n a.mp4 \n\nrtsp://x/y\n")
    assert read_source_list(listing) == ["a.mp4", "rtsp://x/y"]
    listing.write_text("# nothing\n")
    with pytest.raises(SsdTrtError, match="lists no source"):
        read_source_list(listing)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


@pytest.fixture
def photo_dir(coco_mini: Path) -> Path:
    return coco_mini / "images"


def test_four_real_sources_batched_and_a_killed_rtsp_source_reconnects(
    tmp_path,
    exported,
    bikes_video,
    vtest_video,
    photo_dir,
    rtsp_server,  # noqa: F811
) -> None:
    onnx = exported(MODEL)
    limit = 120
    specs = (str(bikes_video), str(vtest_video), str(photo_dir), rtsp_server.url)
    names = unique_names(specs)
    rtsp = 3
    events: dict[str, float] = {}
    delivered: list[tuple[int, float]] = []  # (source, time) of every frame written
    lock = threading.Lock()

    def restart() -> None:
        rtsp_server.start()
        events["restarted"] = time.monotonic()

    def on_frame(index: int, result, annotated) -> None:
        now = time.monotonic()
        with lock:
            delivered.append((index, now))
            rtsp_frames = sum(1 for i, _ in delivered if i == rtsp)
        if index == rtsp and rtsp_frames == 10 and "killed" not in events:
            events["killed"] = now
            rtsp_server.kill()
            threading.Timer(1.0, restart).start()
        if index == rtsp and "restarted" in events and "back" not in events:
            events["back"] = now

    # Reconnect quickly for the test (the defaults back off for up to 8 s).
    streams = StreamSettings(reconnect_attempts=12, backoff_s=0.2, max_backoff_s=0.5, timeout_s=3)
    job = MultiJob(
        sources=specs, output_dir=tmp_path / "out", json=True, max_frames=limit, streams=streams
    )
    stats = run_multi(job, lambda: Detector(onnx, "cpu"), on_frame=on_frame)

    out = tmp_path / "out"
    per = stats.sources
    # Files and images never drop: every frame, in order, one jsonl line each.
    for name, expected in ((names[0], limit), (names[1], limit), (names[2], 16)):
        lines = _jsonl(out / f"{name}.jsonl")
        assert [r["frame"] for r in lines] == list(range(expected)), name
        assert per[name].frames == expected and per[name].dropped == 0
        assert _video_frames(out / f"{name}.mp4") == expected
    assert [r["name"] for r in _jsonl(out / f"{names[2]}.jsonl")] == sorted(
        p.name for p in photo_dir.glob("*.jpg")
    )
    # The RTSP source: killed, reconnected, and then delivered more; its jsonl has one line per
    # frame it delivered, indexes increasing (stale frames may be dropped between them).
    live = per[names[3]]
    assert live.reconnects >= 1 and "back" in events, (live, events)
    lines = _jsonl(out / f"{names[3]}.jsonl")
    assert len(lines) == live.frames == limit
    assert all(b["frame"] > a["frame"] for a, b in zip(lines, lines[1:], strict=False))
    assert _video_frames(out / f"{names[3]}.mp4") == live.frames
    # While the stream was down, the other sources kept going.
    during = [i for i, t in delivered if events["killed"] < t < events["back"]]
    assert {0, 1} <= set(during), "files stalled while the RTSP source was reconnecting"
    # Frames of different sources shared inference calls.
    assert stats.mean_batch > 1.5, stats.summary()

    # Each answer equals the detector's on that frame alone (batching changes nothing).
    frames = []
    cap = cv2.VideoCapture(str(bikes_video))
    for _ in range(5):
        frames.append(cap.read()[1])
    cap.release()
    with Detector(onnx, "cpu") as detector:
        alone = [detector.detect(f).to_dicts() for f in frames]
    batched = [r["detections"] for r in _jsonl(out / f"{names[0]}.jsonl")[:5]]
    for a, b in zip(alone, batched, strict=True):
        assert [d["label"] for d in a] == [d["label"] for d in b]
        for da, db in zip(a, b, strict=True):
            assert np.allclose(da["box"], db["box"], atol=1.0)
            assert abs(da["score"] - db["score"]) < 1e-3


def test_cli_sources_file_output_dir_and_grid(tmp_path, exported, bikes_video, photo_dir) -> None:
    onnx = exported(MODEL)
    listing = tmp_path / "cams.txt"
    listing.write_text(f"{photo_dir}\n{bikes_video}\n")
    out = tmp_path / "out"
    proc = run_cli(
        "detect",
        str(bikes_video),
        "--sources",
        str(listing),
        "--model",
        str(onnx),
        "--backend",
        "cpu",
        "--no-show",
        "--max-frames",
        "12",
        "--output-dir",
        str(out),
        "--json",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # The same video twice gets two names; every output is complete, no temp file is left.
    assert sorted(p.name for p in out.iterdir()) == [
        "bikes-2.jsonl",
        "bikes-2.mp4",
        "bikes.jsonl",
        "bikes.mp4",
        "images.jsonl",
        "images.mp4",
    ]
    assert len(_jsonl(out / "bikes-2.jsonl")) == 12 and len(_jsonl(out / "images.jsonl")) == 12

    # A file after --json with --output-dir is a mistake the user hears about in one line.
    bad = run_cli("detect", str(bikes_video), "--output-dir", str(out), "--json", "x.jsonl")
    assert bad.returncode == 2 and "--json takes no FILE" in error_line(bad)

    # --serve shows all streams as one grid: 2 sources -> 2x1 tiles of 480x270.
    seen: dict[str, tuple] = {}
    url = f"http://127.0.0.1:{_free_port()}/frame.jpg"

    def grab(index, result, annotated) -> None:
        if "shape" not in seen and result.frame.index == 8:
            with urllib.request.urlopen(url, timeout=5) as resp:
                image = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
            seen["shape"] = image.shape

    job = MultiJob(
        sources=(str(bikes_video), str(photo_dir)),
        output_dir=tmp_path / "grid",
        video=False,
        serve=("127.0.0.1", int(url.split(":")[2].split("/")[0])),
        max_frames=10,
    )
    run_multi(job, lambda: Detector(onnx, "cpu"), on_frame=grab)
    assert seen["shape"] == (270, 960, 3)


class _ArraySource(Source):
    """A file-like source of small frames whose first pixel encodes (source, frame index)."""

    live = False

    def __init__(self, source: int, count: int) -> None:
        super().__init__(f"array{source}")
        self.source, self.count, self.index = source, count, 0
        self.fps, self.frame_count = 30.0, count

    def read(self) -> Frame | None:
        if self.index >= self.count:
            return None
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0] = (self.source, self.index % 256, self.index // 256)
        self.index += 1
        return Frame(self.index - 1, self.index / 30.0, image)


class _QueuedDetector:
    """Stand-in for a detector that queues batches (like the GPU fast path): collect() waits
    for a simulated GPU time and answers each frame with its own identity as the score."""

    backend_name = "queued"
    supports_submit = True

    def __init__(self, gpu_s: float) -> None:
        self.gpu_s = gpu_s
        self.open = 0
        self.most_open = 0
        self.submits = 0

    def warm_up(self, max_batch: int) -> None:
        pass

    def submit(self, images: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        self.open += 1
        self.submits += 1
        self.most_open = max(self.most_open, self.open)
        return time.perf_counter(), list(images)

    def collect(self, pending: tuple[float, list[np.ndarray]]):
        started, images = pending
        time.sleep(max(0.0, started + self.gpu_s - time.perf_counter()))
        self.open -= 1
        dets = []
        for im in images:
            ident = float(im[0, 0, 0]) * 1e6 + float(im[0, 0, 1]) + 256.0 * float(im[0, 0, 2])
            dets.append(
                Detections(
                    np.zeros((1, 4), np.float32),
                    np.array([ident], np.float32),
                    np.ones(1, np.int32),
                    ["x"],
                )
            )
        return dets, {"total": 1.0}


class _Record(Output):
    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def write(self, result, annotated) -> None:
        self.rows.append((result.frame.index, float(result.detections.scores[0])))


@pytest.mark.fast
@pytest.mark.parametrize("overlap", [True, False])
def test_two_batches_in_flight_keep_each_source_in_order_and_complete(overlap: bool) -> None:
    n_sources, frames = 5, 60
    detector = _QueuedDetector(gpu_s=0.004)
    outs = [_Record() for _ in range(n_sources)]
    pipeline = MultiPipeline(
        detector,
        [_ArraySource(i, frames) for i in range(n_sources)],
        [[o] for o in outs],
        [f"s{i}" for i in range(n_sources)],
        max_batch=4,
        max_wait_ms=2,
        draw=False,
        overlap=overlap,
    )
    stats = pipeline.run()
    for i, out in enumerate(outs):
        # Every frame once, in order, with its own result (not a neighbour's).
        assert [f for f, _ in out.rows] == list(range(frames)), i
        assert [s for _, s in out.rows] == [i * 1e6 + f for f in range(frames)], i
        assert stats.sources[f"s{i}"].frames == frames
    assert stats.batched_frames == n_sources * frames == stats.frames
    assert stats.batches == detector.submits
    if overlap:
        # Full batches were ready while one ran: the next was submitted before collecting.
        assert detector.most_open == 2 and stats.overlapped_batches > 0
    else:
        assert detector.most_open == 1 and stats.overlapped_batches == 0


def test_detector_submit_collect_equals_detect(exported, bikes_video) -> None:
    cap = cv2.VideoCapture(str(bikes_video))
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    with Detector(exported(MODEL), "cpu") as detector:
        assert not detector.supports_submit  # CPU: submit runs the batch at once
        pending = detector.submit(frames)
        got, stages = detector.collect(pending)
        want = detector.detect(frames)
    assert "inference" in stages
    for a, b in zip(got, want, strict=True):
        assert a.to_dicts() == b.to_dicts()


@pytest.mark.fast
def test_decoder_threads_are_shared_out() -> None:
    assert decode_threads_for(1, cores=16) == 16
    assert decode_threads_for(4, cores=16) == 4
    assert decode_threads_for(32, cores=16) == 1


@pytest.mark.fast
def test_default_batch_is_larger_where_the_detector_queues_gpu_work() -> None:
    """32 frames per batch on the GPU fast path (it sustains 32 cameras that way), 8 elsewhere."""
    from ssd_trt.video.multi import DEFAULT_MAX_BATCH, GPU_MAX_BATCH

    def pipeline(detector: object) -> MultiPipeline:
        return MultiPipeline(detector, [_ArraySource(0, 1)], [[_Record()]], ["s0"], draw=False)  # type: ignore[arg-type]

    assert pipeline(_QueuedDetector(gpu_s=0.0)).max_batch == GPU_MAX_BATCH == 32
    cpu = _QueuedDetector(gpu_s=0.0)
    cpu.supports_submit = False
    assert pipeline(cpu).max_batch == DEFAULT_MAX_BATCH == 8
