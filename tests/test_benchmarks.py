"""Every benchmark script runs: at least ``--help``, and the host benchmark's bookkeeping part
(which crashed when the pipeline began to call ``warm_up``) on a few frames. The stream
benchmarks' ``--compare-track`` runs for real on vtest.avi (a few seconds a stream count): each
count without and with ByteTrack in one JSON, the track stage's time on the tracked side only."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

# Every script reads video through OpenCV. The --help and bookkeeping tests are the fast tier;
# the real --compare-track runs need the COCO model.
pytestmark = [pytest.mark.needs("cv2", "video")]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


@pytest.mark.fast
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_answers_help(script):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.fast
@pytest.mark.parametrize("queued", [False, True])
def test_host_benchmark_bookkeeping_runs(queued):
    host = _load("multi_stream_host")
    row = host.bookkeeping(host._NullDetector(queued), 3, 20, np.zeros((8, 8, 3), np.uint8))
    assert row["streams"] == 3 and row["frames"] == 60


def _bench(script: str, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"SSD_TRT_CACHE": str(cache)} if cache else {})}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _check_compare(result: dict, counts: list[int]) -> None:
    """Both runs of every count, side by side; the track stage only where a tracker ran."""
    assert result["compare_track"] is True and result["machine"]
    pairs = result["side_by_side"]
    assert [p["streams"] for p in pairs] == counts
    for pair in pairs:
        plain, tracked = pair["detect"], pair["track"]
        assert plain["track_ms_per_frame"] is None and plain["tracks"] is None
        assert tracked["track_ms_per_frame"] > 0 and tracked["tracks"] > 0
        for side in (plain, tracked):
            assert 0 < side["delivered_min"] <= 1 and side["latency_ms_p99"] > 0
            assert side["cores_busy"] > 0
    runs = result["runs"]
    assert [(r["streams"], r["track"]) for r in runs] == [
        (n, kind) for n in counts for kind in (None, "bytetrack")
    ]
    for r in runs:
        stages = r["stage_ms_per_frame"]
        assert ("track" in stages) == (r["track"] is not None)
        if r["track"]:
            assert stages["track"] == r["track_ms_per_frame"]
            assert isinstance(r["tracks"], int) and r["tracks"] > 0


@pytest.mark.needs("trackers", "track")
def test_host_capacity_compare_track_runs(vtest_video, model_cache, tmp_path):
    out = tmp_path / "host.json"
    proc = _bench(
        "multi_stream_host.py",
        *("--video", str(vtest_video), "--streams", "1,2", "--fps", "10", "--seconds", "1.5"),
        *("--compare-track", "--keep-going", "--out", str(out)),
        cache=model_cache,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    _check_compare(result, [1, 2])
    # The tracker saw the model's real boxes: every frame's detections were found.
    assert result["recorded"]["detections_per_frame_mean"] > 1
    assert all(r["replay_misses"] == 0 for r in result["runs"])
    assert "+track: ok" in proc.stdout and "with bytetrack:" in proc.stdout


@pytest.mark.needs("trackers", "track")
@pytest.mark.needs("onnxruntime", "ort")
def test_multi_stream_compare_track_runs_on_cpu(vtest_video, model_cache, tmp_path):
    out = tmp_path / "ms.json"
    proc = _bench(
        "multi_stream.py",
        *("--backend", "cpu", "--video", str(vtest_video), "--streams", "1", "--fps", "5"),
        *("--seconds", "1.5", "--max-batch", "2", "--compare-track", "--keep-going"),
        *("--out", str(out)),
        cache=model_cache,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    _check_compare(result, [1])
    assert result["options"]["track"] == "bytetrack"
    assert {"max_sustained_streams", "max_sustained_streams_track"} <= set(result)
    assert all(row["limited_by"] for row in result["runs"])  # the benchmark says what held it
    assert "streams: limited by " in proc.stdout


@pytest.mark.needs("onnxruntime", "ort")
def test_multi_stream_splits_a_count_over_processes(vtest_video, model_cache, tmp_path):
    """--processes 2: each count in two processes started together, one combined row that
    keeps each process's own; the count is sustained only where both processes sustained."""
    out = tmp_path / "ms.json"
    proc = _bench(
        "multi_stream.py",
        *("--backend", "cpu", "--video", str(vtest_video), "--streams", "2", "--fps", "5"),
        *("--seconds", "1.5", "--max-batch", "2", "--processes", "2", "--out", str(out)),
        cache=model_cache,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["runs"]
    assert row["processes"] == 2 and [p["streams"] for p in row["per_process"]] == [1, 1]
    assert row["fps_total"] == pytest.approx(sum(p["fps_total"] for p in row["per_process"]))
    assert row["sustained"] == all(p["sustained"] for p in row["per_process"])
    assert row["limited_by"] and "in 2 processes" in proc.stdout
    bad = _bench("multi_stream.py", "--streams", "3", "--processes", "2", "--video", str(out))
    assert bad.returncode != 0 and "multiple of --processes 2" in bad.stderr


@pytest.mark.fast
@pytest.mark.needs("trackers", "track")
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("multi_stream.py", ["--track", "nope"], "--track 'nope': unknown tracker; choose one of"),
        ("multi_stream_host.py", ["--track", "sort", "--track-option", "x"], "KEY=VALUE"),
        ("multi_stream_host.py", ["--track-option", "lost_track_buffer=5"], "needs --track"),
        ("multi_stream_host.py", ["--compare-track"], "add --streams"),
    ],
)
def test_stream_benchmarks_refuse_bad_tracking_in_one_line(script, args, message, tmp_path):
    """Checked with the CLI's own parsing before any video or model work (a missing video
    would be the next error)."""
    proc = _bench(script, *args, "--video", str(tmp_path / "missing.mp4"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.splitlines()[-1], proc.stderr


@pytest.mark.fast
def test_stream_sweep_refuses_nvdec_without_pynvvideocodec_in_one_line(tmp_path):
    pytest.importorskip("cv2", reason="the benchmark needs the [video] extra (CI has it)")
    from ssd_trt.video.decode import nvdec_missing

    if nvdec_missing() is None:
        pytest.skip("PyNvVideoCodec loads here")
    proc = _bench("multi_stream.py", "--decode", "nvdec", "--video", str(tmp_path / "x.mp4"))
    assert proc.returncode == 2, proc.stderr
    assert "--decode nvdec: PyNvVideoCodec" in proc.stderr.splitlines()[-1]
    assert "ssd-trt[gpu]" in proc.stderr.splitlines()[-1]


@pytest.mark.fast
def test_compare_detections_on_the_committed_h200_runs():
    """The 720p file's detections from NVDEC frames against CPU-decoded ones (H200, Dec 5), and
    a file against itself."""
    compare = _load("compare_detections")
    results = BENCHMARKS / "results" / "h200-20261205"
    cpu = compare.load(results / "detect-720p-cpu-decode.jsonl.gz")
    nvdec = compare.load(results / "detect-720p-nvdec.jsonl.gz")
    same = compare.compare(cpu, cpu, 2.0)
    assert same["matched"] == same["detections"][0] == 3678 and same["score_diff_max"] == 0
    report = compare.compare(cpu, nvdec, 2.0)
    assert report == json.loads((results / "detect-720p-nvdec-vs-cpu.json").read_text())
    assert report["matched"] == 3637 and report["unmatched_first"] == 41


@pytest.mark.fast
def test_committed_h100_runs_in_processes_give_their_verdicts():
    """The H100 runs of Dec 5 (session 12, same call): 129 streams in 3 processes sustained and
    held by the network, judged by the whole GPU's busy share (each process's own compute spans
    add up past 100% as their contexts take turns), while each process alone waited on its
    host threads; NVDEC frames gave the CPU-decoded file's detections."""
    ms, compare = _load("multi_stream"), _load("compare_detections")
    results = BENCHMARKS / "results" / "h100-20261205-s12"
    run = json.loads((results / "B-nvdec-3proc-129-144.json").read_text())["runs"][0]
    row = ms.combine(run["per_process"])
    assert (row["streams"], row["processes"], row["sustained"]) == (129, 3, True)
    assert row["gpu_busy"] > 1 and row["host"]["cores_busy"] <= 4
    assert row["limited_by"] == "network: the GPU was busy 88% of the time"
    assert all(ms.limiter(p).startswith("host threads") for p in run["per_process"])
    cpu = compare.load(results / "B-detect-720p-cpu-decode.jsonl.gz")
    nvdec = compare.load(results / "B-detect-720p-nvdec.jsonl.gz")
    report = compare.compare(cpu, nvdec, 2.0)
    assert report == json.loads((results / "B-detect-720p-nvdec-vs-cpu.json").read_text())
    assert report["matched"] == 3689 and report["unmatched_first"] == 0


def test_stream_test_video_is_encoded_as_cameras_send(vtest_video, tmp_path):
    """The sweep's video (issue 19: "High profile with B-frames, made from a real video"):
    vtest.avi's frames at 1280x720 as H.264 High with B-frames, a keyframe every 60 frames,
    BT.709 declared; decoding gives back the pictures within the codec's loss."""
    import av

    ms = _load("multi_stream")
    frames = list(ms.vtest_720p(70))
    path = tmp_path / "camera.mp4"
    ms.encode_camera_like(frames, path)
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.profile, ctx.width, ctx.height) == ("h264", "High", 1280, 720)
        packets = [p for p in box.demux(stream) if p.size]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)  # as the pipeline reads it
    decoded = [image for ok, image in iter(cap.read, (False, None)) if ok]
    cap.release()
    keys = [i for i, p in enumerate(sorted(packets, key=lambda p: p.dts)) if p.is_keyframe]
    assert keys == [0, 60]
    assert any(p.pts != p.dts for p in packets)  # B-frames: shown in another order than sent
    from ssd_trt.video.demux import Demuxer

    demuxer = Demuxer(str(path))
    assert demuxer.info.has_b_frames and demuxer.info.matrix == "bt709"
    demuxer.close()
    assert len(decoded) == 70
    error = np.mean(
        [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, decoded, strict=True)]
    )
    assert error < 6, error  # 4 Mbit/s of a CCTV view: a few levels of mean error


def test_nvdec_rate_measures_a_whole_file_and_refuses_bad_input(bikes_video, tmp_path):
    """The single-stream rate benchmark (the denominator of issue 19's single-file target), on
    the CPU decoder here: every frame counted, the JSON written whole; bad input is one line."""
    out = tmp_path / "rate.json"
    done = _bench("nvdec_rate.py", str(bikes_video), "--paths", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["path"] == "cpu" and run["frames"] == 250 and run["fps"] > 0
    assert result["machine"]["cores"] >= 1
    bad = _bench("nvdec_rate.py", str(bikes_video), "--paths", "gpu")
    assert bad.returncode == 2 and "unknown path 'gpu'" in bad.stderr.strip().splitlines()[-1]


def test_engine_only_host_cost_runs_and_writes_machine_details(tmp_path):
    """--engine-streams: the engine's own cost per frame at camera counts (no decode, no
    model), every stream's frames delivered, the JSON written with the machine."""
    out = tmp_path / "engine.json"
    done = _bench("multi_stream_host.py", "--engine-streams", "2,4", "--fps", "10",
                  "--seconds", "1", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [r["streams"] for r in result["runs"]] == [2, 4] and result["machine"]["cores"] >= 1
    for run in result["runs"]:
        assert run["frames"] == run["streams"] * 10 and run["sustained"]
        assert {"batcher", "capture", "emit"} <= set(run["cpu_us_per_frame_by_role"])
