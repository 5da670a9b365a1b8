"""Many sources over several processes (video/shards.py, ``detect --processes N``): real
videos and images through ONNX Runtime on the CPU, in spawned processes, compared with the
same run in one process; bad input, a failing process and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, optional, run_cli

from ssd_trt.video.app import MultiJob
from ssd_trt.video.shards import split
from ssd_trt.video.stats import RunStats, SourceStats, combined

cv2 = optional("cv2", "video")

MODEL = "ssdlite_mobilenet_v2_coco"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.fast
def test_split_deals_sources_out_keeping_names_and_decoders() -> None:
    job = MultiJob(
        sources=("a/cam.mp4", "b/cam.mp4", "rtsp://h/x", "c.mp4", "a/cam.mp4"),
        output_dir=Path("out"),
        decode=("nvdec", "cpu", "nvdec", "cpu", "nvdec"),
    )
    first, second = split(job, 2)
    # Names are the whole job's: the same file in two processes still gets two outputs.
    assert first.sources == ("a/cam.mp4", "rtsp://h/x", "a/cam.mp4")
    assert first.names == ("cam", "h_x", "cam-3")
    assert first.decode == ("nvdec", "nvdec", "nvdec")
    assert second.names == ("cam-2", "c") and second.decode == ("cpu", "cpu")
    # FFmpeg's threads are shared out over all five sources, not each process's share.
    assert first.decode_threads == second.decode_threads
    assert len(split(job, 8)) == 5  # never more processes than sources


@pytest.mark.fast
def test_combined_stats_add_up() -> None:
    a, b = RunStats(seconds=2.0, batches=3, batched_frames=6), RunStats(seconds=3.0, batches=1)
    a.sources["x"] = SourceStats("x", "x.mp4", frames=6)
    b.sources["y"] = SourceStats("y", "y.mp4", frames=2, dropped=1)
    a.add("decode", 6.0, 6)
    b.add("decode", 4.0, 2)
    b.stopped_by = "SIGTERM"
    both = combined([a, b])
    assert (both.frames, both.dropped, both.batches, both.seconds) == (8, 1, 4, 3.0)
    assert both.mean_ms("decode") == pytest.approx(10.0 / 8)
    assert both.stopped_by == "SIGTERM" and both.mean_batch == 6 / 4
    # What stopped a run is the first reason other than an end, in either order.
    assert combined([b, a]).stopped_by == "SIGTERM" == combined([a, b]).stopped_by


def test_cli_processes_gives_what_one_process_gives(
    tmp_path, exported, bikes_video, coco_mini
) -> None:
    onnx = exported(MODEL)
    photo_dir = coco_mini / "images"
    common = ("--model", str(onnx), "--backend", "cpu", "--max-frames", "10", "--json")
    sources = (str(bikes_video), str(photo_dir), str(bikes_video))
    one = run_cli("detect", *sources, "--output-dir", str(tmp_path / "one"), *common)
    assert one.returncode == 0, one.stderr
    two = run_cli(
        "detect", *sources, "--output-dir", str(tmp_path / "two"), *common, "--processes", "2"
    )
    assert two.returncode == 0, two.stderr
    assert "3 sources over 2 processes" in two.stderr
    # The summary counts every process's sources.
    assert re.search(r"^3 sources, 30 frames in ", two.stderr, re.M), two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(
        f"{n}.{e}" for n in ("bikes", "bikes-2", "images") for e in ("jsonl", "mp4")
    )
    for name in ("bikes", "bikes-2", "images"):
        a, b = (
            _jsonl(tmp_path / "one" / f"{name}.jsonl"),
            _jsonl(tmp_path / "two" / f"{name}.jsonl"),
        )
        assert [r["frame"] for r in a] == [r["frame"] for r in b] == list(range(10))
        for ra, rb in zip(a, b, strict=True):  # other batches, same detections
            da, db = ra["detections"], rb["detections"]
            assert [d["label"] for d in da] == [d["label"] for d in db]
            for x, y in zip(da, db, strict=True):
                assert np.allclose(x["box"], y["box"], atol=1.0)
                assert abs(x["score"] - y["score"]) < 1e-3


@pytest.mark.fast
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--processes", "2"], "--processes spreads several sources"),
        (["--processes", "2", "--output-dir", "OUT", "--ray"], "--processes and --ray"),
        (
            ["--processes", "2", "--output-dir", "OUT", "--serve", "127.0.0.1:18080"],
            "--serve shows",
        ),
        (["--processes", "0"], "--processes"),
    ],
)
def test_processes_bad_input_is_one_line(tmp_path, extra, message) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")  # never opened: the options are checked first
    args = [a.replace("OUT", str(tmp_path / "out")) for a in extra]
    sources = [str(video)] if "--output-dir" not in args else [str(video), str(video)]
    proc = run_cli("detect", *sources, "--model", "x.onnx", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.splitlines()[-1], proc.stderr


@pytest.mark.parametrize("broken", ["source", "model"])
def test_a_failing_process_ends_the_run_in_one_line(
    tmp_path, exported, bikes_video, broken
) -> None:
    """A source that cannot open (the second process: the first is running by then, and is
    stopped with its outputs whole) or a model that cannot load (the first process, alone:
    the others never start) ends the run in one line, exit 2."""
    model = str(exported(MODEL)) if broken == "source" else str(tmp_path / "nope.onnx")
    second = str(tmp_path / "missing.mp4") if broken == "source" else str(bikes_video)
    out = tmp_path / "out"
    proc = run_cli(
        "detect", str(bikes_video), second, "--output-dir", str(out),
        "--model", model, "--backend", "cpu", "--json", "--processes", "2",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert ("missing.mp4" if broken == "source" else "nope.onnx") in error_line(proc)
    assert "Traceback" not in proc.stderr  # the stopped process exits quietly
    # Nothing is left half-written.
    leftovers = [p.name for p in out.rglob("*") if ".partial" in p.name] if out.exists() else []
    assert not leftovers


def _shard_pids(parent: int) -> list[int]:
    """The spawned processes of ``parent`` (from /proc: their parent and command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # not a process, or it ended
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("target", ["parent", "one process"])
def test_sigterm_stops_every_process_and_outputs_are_whole(
    tmp_path, exported, bikes_video, target
) -> None:
    """SIGTERM to the parent is relayed to each process; SIGTERM to one of them stops the
    whole run, as it would stop one process. Either way: exit 130, every output whole."""
    onnx = exported(MODEL)
    out = tmp_path / "out"
    app = subprocess.Popen(
        [sys.executable, "-m", "ssd_trt.cli", "detect", str(bikes_video), str(bikes_video),
         "--output-dir", str(out), "--model", str(onnx), "--backend", "cpu", "--json",
         "--realtime", "--processes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # both processes writing
            partial = [p for p in out.glob(".*partial*.jsonl")] if out.exists() else []
            if len(partial) == 2 and all(p.stat().st_size for p in partial):
                break
            time.sleep(0.2)
        time.sleep(1.0)
        shards = _shard_pids(app.pid)
        assert len(shards) == 2, shards
    finally:
        if target == "parent":
            app.send_signal(signal.SIGTERM)
        else:
            os.kill(shards[0], signal.SIGTERM)
        _, err = app.communicate(timeout=120)
    assert app.returncode == 130, err[-3000:]
    assert err.rstrip("\n").splitlines()[-1] == "ssd-trt: stopped by SIGTERM"
    assert sorted(p.name for p in out.iterdir()) == [
        "bikes-2.jsonl", "bikes-2.mp4", "bikes.jsonl", "bikes.mp4",
    ]  # fmt: skip
    for name in ("bikes", "bikes-2"):
        rows = _jsonl(out / f"{name}.jsonl")
        frames = [r["frame"] for r in rows]  # --realtime: late frames are dropped, as live
        assert 0 < len(rows) < 250 and frames == sorted(set(frames))
        cap = cv2.VideoCapture(str(out / f"{name}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(rows)
        cap.release()
