"""The Detector library and the video app on real models and real media."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, iou, optional
from conftest import run_cli as cli

from ssd_trt import Detections, Detector, SsdTrtError
from ssd_trt.precision.trt_compat import local_gpu
from ssd_trt.runtime.ort import available_providers
from ssd_trt.runtime.select import BACKENDS
from ssd_trt.video.overlay import class_color

cv2 = optional("cv2", "video")

COCO = "ssdlite_mobilenet_v2_coco"


@pytest.fixture(scope="module")
def coco_onnx(exported) -> Path:
    return exported(COCO)


@pytest.fixture(scope="module")
def detector(coco_onnx):
    with Detector(coco_onnx, "cpu", score_threshold=0.3) as d:
        yield d


def count_frames(video: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(video))
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, frame.shape[1::-1]
    cap.release()
    return n, size


# ------------------------------------------------------------------------------- the library


def test_detector_single_and_batch(detector, coco_mini):
    images = [cv2.imread(str(p)) for p in sorted((coco_mini / "images").glob("*.jpg"))[:4]]
    single = detector.detect(images[0])
    assert isinstance(single, Detections)
    batch = detector.detect(images)
    assert isinstance(batch, list) and len(batch) == 4
    np.testing.assert_allclose(batch[0].boxes, single.boxes, atol=1e-3)
    for image, dets in zip(images, batch, strict=True):
        h, w = image.shape[:2]
        assert dets.boxes.dtype == np.float32 and dets.boxes.shape == (len(dets), 4)
        assert (dets.boxes[:, [0, 2]] <= w + 1e-3).all() and (dets.boxes[:, [1, 3]] <= h).all()
        assert (dets.boxes[:, 2] >= dets.boxes[:, 0]).all()
        assert (dets.scores >= 0.3).all() and (np.diff(dets.scores) <= 0).all()
        assert all(isinstance(d.label, str) for d in dets)
    assert sum(len(d) for d in batch) > 0


def test_detections_match_coco_ground_truth(detector, coco_mini):
    """Pixel boxes land on the annotated objects: most confident detections hit a GT box."""
    ann = json.loads((coco_mini / "instances_train2017_small.json").read_text())
    gts: dict[int, list] = {}
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        gts.setdefault(a["image_id"], []).append((a["category_id"], [x, y, x + w, y + h]))
    hits = total = 0
    for img in ann["images"]:
        dets = detector.detect(cv2.imread(str(coco_mini / "images" / img["file_name"])))
        for d in dets.filter(min_score=0.6):
            total += 1
            hits += any(c == d.class_id and iou(b, d.box) >= 0.5 for c, b in gts[img["id"]])
    assert total >= 15 and hits / total >= 0.8, (hits, total)


def test_rgb_option_and_filters(coco_onnx, coco_mini):
    image = cv2.imread(str(sorted((coco_mini / "images").glob("*.jpg"))[0]))
    with Detector(coco_onnx, "cpu", score_threshold=0.3) as bgr:
        want = bgr.detect(image)
    with Detector(coco_onnx, "cpu", score_threshold=0.3, rgb=True, classes=["person"]) as rgb:
        got = rgb.detect(image[:, :, ::-1].copy())
    assert len(got) > 0 and set(got.labels) == {"person"}
    people = want.filter(classes=["person"])
    np.testing.assert_allclose(got.boxes, people.boxes, atol=1e-3)
    confident = want.filter(min_score=0.9)
    assert 0 < len(confident) < len(want) and (confident.scores >= 0.9).all()
    assert len(want.filter(classes=[1])) == len(people)


def test_unknown_class_name_is_a_clear_error(coco_onnx):
    with pytest.raises(SsdTrtError, match="unknown class 'unicorn'"):
        Detector(coco_onnx, "cpu", classes=["unicorn"])


def test_coco_records_and_supervision(detector, coco_mini):
    sv = pytest.importorskip("supervision", reason="supervision is in the [all] extra")
    image = cv2.imread(str(sorted((coco_mini / "images").glob("*.jpg"))[0]))
    dets = detector.detect(image)
    records = dets.to_coco(image_id=42)
    assert len(records) == len(dets) > 0
    x1, y1, x2, y2 = dets.boxes[0]
    assert records[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
    assert records[0]["category_id"] == dets.class_ids[0] and records[0]["image_id"] == 42
    converted = dets.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == len(dets)
    np.testing.assert_allclose(converted.xyxy, dets.boxes)
    assert list(converted.data["class_name"]) == dets.labels


def test_detector_backend_auto_names_its_choice(coco_onnx, caplog):
    caplog.set_level(logging.DEBUG, logger="ssd_trt")
    with Detector(coco_onnx, "auto") as d:
        assert d.backend_name in BACKENDS
        assert f"backend auto -> {d.backend_name}" in caplog.text
        if local_gpu() is None:  # CPU machines (CI): auto says why it did not pick tensorrt
            assert d.backend_name == "cpu"
            assert "auto: not tensorrt" in caplog.text
    if "CUDAExecutionProvider" not in available_providers():
        for name in ("cuda", "onnxruntime-cuda"):  # one line naming the extra to install
            with pytest.raises(SsdTrtError, match=r"pip install 'ssd-trt\[gpu\]'"):
                Detector(coco_onnx, name)


def test_backend_names_old_and_new(coco_onnx):
    for old, new in (("onnxruntime-cpu", "cpu"), ("cpu", "cpu")):
        with Detector(coco_onnx, old) as d:
            assert d.backend_name == new
    with pytest.raises(SsdTrtError, match="unknown backend 'gpu'; use one of auto, cpu"):
        Detector(coco_onnx, "gpu")


@pytest.mark.skipif(local_gpu() is not None, reason="checks the fallback where no GPU is")
def test_explicit_tensorrt_without_gpu_is_one_clear_error(coco_onnx):
    with pytest.raises(SsdTrtError) as exc:
        Detector(coco_onnx, "tensorrt")
    assert "\n" not in str(exc.value)
    assert "needs a CUDA GPU" in str(exc.value) or "not installed" in str(exc.value)


def test_detect_none_and_bad_images_are_clear_errors(coco_onnx):
    with Detector(coco_onnx, "cpu") as d:
        with pytest.raises(SsdTrtError, match="cv2.imread returns None"):
            d.detect(None)
        with pytest.raises(SsdTrtError, match="image 1 is NoneType"):
            d.detect([np.zeros((10, 10, 3), np.uint8), None])
        with pytest.raises(SsdTrtError, match="expected HxWx3 uint8"):
            d.detect(np.zeros((10, 10), np.float32)[None])


def test_onnx_without_metadata_is_rejected(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g", [x], [y])
    path = tmp_path / "plain.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    with pytest.raises(SsdTrtError, match="export it with 'ssd-trt export'"):
        Detector(path, "cpu")


# ------------------------------------------------------------------------------------ the app


def test_detect_video_writes_every_frame_and_finds_the_cyclist(coco_onnx, bikes_video, tmp_path):
    out, jsonl = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    proc = cli(
        "detect",
        str(bikes_video),
        "--model",
        str(coco_onnx),
        "--output",
        str(out),
        "--json",
        str(jsonl),
        "--score-threshold",
        "0.3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "250 frames" in proc.stderr
    assert count_frames(out) == (250, (640, 272))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(250))
    assert all(b["timestamp"] > a["timestamp"] for a, b in zip(records, records[1:], strict=False))
    # The cyclist stands with his bicycle in frames 110-136.
    cyclist = 0
    for r in records[110:137]:
        people = [d for d in r["detections"] if d["label"] == "person" and d["score"] >= 0.5]
        bikes = [d for d in r["detections"] if d["label"] == "bicycle"]
        cyclist += any(iou(p["box"], b["box"]) > 0 for p in people for b in bikes)
    assert cyclist >= 24, cyclist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.mp4"]


def test_detect_pedestrians_in_vtest(exported, vtest_video, tmp_path):
    """Debian opencv-doc's vtest.avi (a street with pedestrians) with the person model."""
    jsonl = tmp_path / "vtest.jsonl"
    person = exported("ssdlite_mobilenet_v2_person")
    proc = cli(
        "detect",
        str(vtest_video),
        "--model",
        str(person),
        "--json",
        str(jsonl),
        "--max-frames",
        "150",
        "--score-threshold",
        "0.4",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(150))
    counts = [len(r["detections"]) for r in records]
    assert sum(c >= 1 for c in counts) >= 140, counts  # people are in every frame
    assert max(counts) >= 3, counts  # and several at once
    assert {d["label"] for r in records for d in r["detections"]} == {"person"}
    for r in records:
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576


def test_sync_and_async_give_the_same_frames(coco_onnx, bikes_video, tmp_path):
    runs = {}
    for mode in ("--sync", None):
        jsonl = tmp_path / f"{mode or 'async'}.jsonl"
        args = ["detect", str(bikes_video), "--model", str(coco_onnx), "--json", str(jsonl), "-q"]
        proc = cli(*args, *([mode] if mode else []), "--max-frames", "60")
        assert proc.returncode == 0, proc.stderr
        runs[mode] = [json.loads(line) for line in jsonl.read_text().splitlines()]
    sync, async_ = runs["--sync"], runs[None]
    assert [r["frame"] for r in async_] == list(range(60))
    for a, b in zip(sync, async_, strict=True):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]


def test_detect_directory_of_images(coco_onnx, coco_mini, tmp_path):
    jsonl = tmp_path / "images.jsonl"
    proc = cli(
        "detect", str(coco_mini / "images"), "--model", str(coco_onnx), "--json", str(jsonl), "-q"
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 16 and records[0]["name"].endswith(".jpg")


def test_ctrl_c_finalizes_outputs_and_exits_130(coco_onnx, bikes_video, tmp_path):
    out, jsonl = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssd_trt.cli",
            "detect",
            str(bikes_video),
            "--model",
            str(coco_onnx),
            "--output",
            str(out),
            "--json",
            str(jsonl),
            "--sync",
            "--no-show",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    partial = tmp_path / f".o.{proc.pid}.partial.jsonl"
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    frames, size = count_frames(out)
    lines = jsonl.read_text().splitlines()
    assert 0 < frames < 250 and size == (640, 272)
    assert len(lines) == frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.mp4"]


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.mp4", "does not exist"),
        ("not_video.mp4", "cannot decode"),
    ],
)
def test_bad_sources_are_clear_errors(coco_onnx, tmp_path, source, message):
    (tmp_path / "not_video.mp4").write_text("this is not a video\n" * 100)
    out = tmp_path / "out.mp4"
    proc = cli("detect", str(tmp_path / source), "--model", str(coco_onnx), "--output", str(out))
    assert proc.returncode == 2
    assert message in error_line(proc)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_missing_camera_is_a_clear_error(coco_onnx):
    proc = cli("webcam", "7", "--model", str(coco_onnx), "--no-show")
    assert proc.returncode == 2
    assert "camera" in error_line(proc)


@pytest.mark.fast
def test_help_on_every_verb():
    verbs = ("models", "fetch", "export", "detect", "webcam", "build", "compare", "eval", "bench")
    verbs += ("serve", "triton-repo")
    listed = cli("--help")
    assert listed.returncode == 0
    for verb in verbs:
        assert verb in listed.stdout
        proc = cli(verb, "--help")
        assert proc.returncode == 0 and "--quiet" in proc.stdout and "--verbose" in proc.stdout, (
            verb
        )


@pytest.mark.fast
def test_global_options_before_and_after_the_verb(tmp_path):
    for args in (("-q", "models"), ("models", "-q"), ("--cache-dir", str(tmp_path), "models")):
        proc = cli(*args)
        assert proc.returncode == 0 and "ssdlite_mobilenet_v2_coco" in proc.stdout, args
    header = cli("models").stdout.splitlines()[0].split()
    assert header == ["name", "from", "cache", "description"]


# -------------------------------------------------------------------------- window under Xvfb


@pytest.fixture
def xvfb():
    if not shutil.which("Xvfb"):
        pytest.fail("Xvfb is missing: apt-get install xvfb xdotool (.ci/run does)")
    display = f":{90 + os.getpid() % 100}"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    yield display
    server.terminate()
    server.wait(timeout=10)


def test_window_shows_boxes_and_q_quits(coco_onnx, coco_mini, xvfb, tmp_path):
    """A real OpenCV window on a virtual X display: screenshot it, check boxes, press q."""
    import mss

    image = cv2.imread(str(coco_mini / "images" / "000000005802.jpg"))  # two cooks
    still = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(still), cv2.VideoWriter_fourcc(*"MJPG"), 25, image.shape[1::-1])
    for _ in range(2000):
        writer.write(image)
    writer.release()
    jsonl = tmp_path / "w.jsonl"
    env = {**os.environ, "DISPLAY": xvfb}
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssd_trt.cli",
            "detect",
            str(still),
            "--model",
            str(coco_onnx),
            "--show",
            "--json",
            str(jsonl),
            "-q",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        window = ""
        deadline = time.monotonic() + 60
        while not window and time.monotonic() < deadline:
            time.sleep(0.5)
            found = subprocess.run(
                ["xdotool", "search", "--name", "ssd-trt"], env=env, capture_output=True, text=True
            )
            window = found.stdout.split()[0] if found.stdout.split() else ""
        assert window, "no ssd-trt window appeared"
        # The first frames take a while (model load, a loaded CI machine): poll the screen.
        person = np.array(class_color(1), np.int16)
        found_box = False
        with mss.MSS(display=xvfb) as screen:
            while not found_box and time.monotonic() < deadline + 60:
                time.sleep(1.0)
                shot = np.array(screen.grab(screen.monitors[1]))[:, :, :3]  # BGRA -> BGR
                near = np.abs(shot.astype(np.int16) - person).max(axis=2) <= 12
                found_box = near.sum() > 500
        cv2.imwrite(str(tmp_path / "window.png"), shot)
        assert found_box, "no person-coloured box outline on screen"
        banner = shot[:40, :300]
        assert (banner.max(axis=2) > 200).sum() > 50, "no FPS banner text"
        subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, timeout=10)
        subprocess.run(["xdotool", "key", "q"], env=env, timeout=10)
        _, err = app.communicate(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, err
    lines = jsonl.read_text().splitlines()
    assert 0 < len(lines) < 2000  # stopped by q, outputs finalized
