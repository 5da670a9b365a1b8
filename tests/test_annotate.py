"""Issue 17 (12, 13, 14): overlays that scale with the image, annotated images saved (one file,
a folder, --save-dir), photo folders letterboxed into one video, skipped files named, and
drawing from Python (ssd_trt.annotate, Detections.plot). Checked by measuring pixels."""

from __future__ import annotations

import logging
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, optional, run_cli

import ssd_trt
from ssd_trt import Detections, Detector, SsdTrtError
from ssd_trt.annotate import class_color
from ssd_trt.model.labels import COCO_LABELS
from ssd_trt.sources import Frame, open_source
from ssd_trt.video.outputs import FrameResult, ImageOutput, VideoOutput, letterbox
from ssd_trt.video.overlay import banner_rect, banner_text, draw_detections, draw_frame
from ssd_trt.video.pipeline import Pipeline

cv2 = optional("cv2", "video")

COCO = "ssdlite_mobilenet_v2_coco"
LANDSCAPE = "000000005802.jpg"  # 640x479
PORTRAIT = "000000574769.jpg"  # 480x640, bright
COWS = "000000184613.jpg"  # 500x336, an umbrella, people and cows


@pytest.fixture(scope="module")
def coco_onnx(exported) -> Path:
    return exported(COCO)


def image_of(coco_mini: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(coco_mini / "images" / name))
    assert image is not None
    return image


def one(label: str, box: tuple[float, float, float, float], class_id: int = 1) -> Detections:
    return Detections(
        np.array([box], np.float32), np.array([0.88], np.float32), np.array([class_id]), [label]
    )


def ink_rows(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """Rows of ``rect`` holding dark (text) pixels: label text is black on the class colour."""
    x1, y1, x2, y2 = rect
    dark = image[y1:y2, x1:x2].max(axis=2) < 60
    return np.flatnonzero(dark.any(axis=1))


def black_run(row: np.ndarray) -> int:
    """How many pixels from the left of ``row`` are pure black (the banner's background)."""
    black = row.max(axis=1) == 0
    return int(np.argmin(black)) if not black.all() else len(row)


# ------------------------------------------------------------------- 12. overlays that scale


@pytest.mark.fast
@pytest.mark.needs("cv2", "video")
def test_label_text_and_lines_scale_with_the_image():
    """A label was 14 px of text on any image: about 1% of a 2560x1440 photo's height."""
    heights, lines = {}, {}
    for width, height in ((640, 360), (2560, 1440)):
        image = np.full((height, width, 3), 128, np.uint8)
        f = width / 640
        box = (100 * f, 120 * f, 300 * f, 300 * f)
        (rect,) = draw_frame(image, one("person", box), 24.3, 38.1, "cpu")
        rows = ink_rows(image, rect)
        heights[width] = rows[-1] - rows[0] + 1
        # The box's left edge, across at mid-height: pixels in the class colour.
        y = int(250 * f)
        colour = np.array(class_color(1))
        lines[width] = int((np.abs(image[y].astype(int) - colour).max(axis=1) < 40).sum())
    assert heights[2560] >= 0.02 * 1440, heights  # about 3% of the shorter side, as at 360
    assert 3 <= heights[2560] / heights[640] <= 5, heights
    assert lines[2560] >= 3 * lines[640], lines


@pytest.mark.fast
@pytest.mark.needs("cv2", "video")
@pytest.mark.parametrize("width, height", [(160, 120), (120, 160)])
def test_labels_at_the_right_edge_of_small_frames_are_whole(width, height):
    """Every COCO label, and a long custom one (export --labels), for a box at the right edge:
    its background and all its text lie inside the frame. At the old fixed size "baseball glove
    0.88" was 137 px wide, and the label ran off a 120 px frame."""
    labels = {**COCO_LABELS, 91: "fire extinguisher cabinet"}
    for class_id, label in labels.items():
        image = np.full((height, width, 3), 128, np.uint8)
        box = (width - 30, 50, width, 110)
        (rect,) = draw_frame(image, one(label, box, class_id), 24.3, 38.1, "cpu")
        x1, y1, x2, y2 = rect
        assert 0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height, (label, rect)
        # The text stays inside its background: no dark pixel in the background's last column.
        assert ink_rows(image, rect).size > 0, label
        assert image[y1:y2, x2 - 1].max(axis=1).min() >= 60, (label, rect)


@pytest.mark.fast
@pytest.mark.needs("cv2", "video")
def test_banner_on_160x120_is_small_and_whole():
    """The banner covered a fifth of a 160x120 frame (a third with the backend) and its text
    ran off the right edge."""
    width, height = 160, 120
    image = np.full((height, width, 3), 128, np.uint8)
    draw_frame(image, Detections(), 24.3, 38.1, "cpu")
    black = image.max(axis=2) == 0
    assert black.sum() / black.size <= 0.12, black.sum() / black.size
    cols = np.flatnonzero(black.any(axis=0))
    assert cols[-1] < width - 1  # ends before the right edge: nothing cut off
    assert black[height - 1, 0]  # in the bottom-left corner
    # White text inside, clear of the banner's right end.
    text = image.min(axis=2) > 200
    assert text.any() and np.flatnonzero(text.any(axis=0))[-1] < cols[-1]


@pytest.mark.fast
@pytest.mark.needs("cv2", "video")
def test_banner_scales_on_a_large_frame():
    small = np.full((360, 640, 3), 128, np.uint8)
    large = np.full((1440, 2560, 3), 128, np.uint8)
    for image in (small, large):
        draw_frame(image, Detections(), 24.3, 38.1, "cpu")
    assert 3 <= black_run(large[-1]) / black_run(small[-1]) <= 5


def test_still_images_get_no_fps(coco_onnx, coco_mini, tmp_path):
    """A single image showed "FPS 0.0"; the pipeline draws a still image without the FPS."""
    photo = coco_mini / "images" / COWS
    with Detector(coco_onnx, "cpu", score_threshold=0.5) as det:
        backend = det.backend_name
        for sync in (True, False):
            out = tmp_path / f"out{sync}.png"
            source = open_source(str(photo))
            Pipeline(det, source, [ImageOutput(out, [photo], folder=False)], sync=sync).run()
            source.close()
            drawn = cv2.imread(str(out))
            size = (drawn.shape[1], drawn.shape[0])
            without = banner_rect(size, banner_text(None, 12.3, backend))[2]
            with_fps = banner_rect(size, banner_text(0.0, 12.3, backend))[2]
            assert without < with_fps
            assert black_run(drawn[-1]) == without, (black_run(drawn[-1]), without, with_fps)


# ------------------------------------------------------- 13. annotated images, letterboxing


def test_detect_photo_output_image(coco_onnx, coco_mini, tmp_path):
    photo = coco_mini / "images" / COWS
    out = tmp_path / "out.jpg"
    proc = run_cli("detect", str(photo), "--model", str(coco_onnx), "--no-show", "--output",
                   str(out), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "cow" in proc.stdout
    drawn, original = cv2.imread(str(out)), cv2.imread(str(photo))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original).max() > 100  # boxes and labels drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]  # no temp file left


def test_detect_photo_output_through_a_link_writes_its_target(coco_onnx, coco_mini, tmp_path):
    """Outputs follow links (fsutil's rule for every output): the target gets the image, the
    link stays a link."""
    photo = coco_mini / "images" / COWS
    (tmp_path / "link.jpg").symlink_to(tmp_path / "target.jpg")
    proc = run_cli("detect", str(photo), "--model", str(coco_onnx), "--no-show", "--output",
                   str(tmp_path / "link.jpg"), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link.jpg").is_symlink()
    assert cv2.imread(str(tmp_path / "target.jpg")).shape == cv2.imread(str(photo)).shape


def test_detect_folder_save_dir_and_output_dir(coco_onnx, coco_mini, tmp_path):
    """Each image annotated at its own size, named like its input, in --save-dir and in
    --output DIR/ alike; an unreadable file is skipped and named in the summary."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [LANDSCAPE, PORTRAIT, COWS]
    for name in names:
        shutil.copy(coco_mini / "images" / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    saved, out = tmp_path / "saved", tmp_path / "out"
    proc = run_cli("-v", "detect", str(photos), "--model", str(coco_onnx), "--no-show",
                   "--save-dir", str(saved), "--output", f"{out}/", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"1 unreadable skipped ({photos / 'broken.jpg'})" in proc.stderr, proc.stderr
    for folder in (saved, out):
        assert sorted(p.name for p in folder.iterdir()) == sorted(names)
        for name in names:
            original = cv2.imread(str(photos / name))
            drawn = cv2.imread(str(folder / name))
            assert drawn.shape == original.shape, name
            assert np.abs(drawn.astype(int) - original).max() > 100, name


@pytest.mark.parametrize(
    "source, flags, message",
    [
        ("video", ["--output", "{tmp}/x.jpg"], "is an image name"),
        ("video", ["--output", "{tmp}/dir/"], "writes annotated images"),
        ("video", ["--save-dir", "{tmp}/dir"], "writes annotated images"),
        ("folder", ["--output", "{tmp}/x.jpg"], "names one image"),
        ("folder", ["--save-dir", "{folder}"], "would write over the input image"),
        ("photo", ["--output", "{photo}"], "would write over the input image"),
        ("photo", ["--output", "{tmp}/x.gif"], "use a .mp4"),
        ("photo", ["--output", "{tmp}/no/x.jpg"], "does not exist"),
        ("folder", ["--save-dir", "{tmp}/d", "--output-dir", "{tmp}/o"], "--save-dir is for one"),
        ("folder", ["--save-dir", "{tmp}/out"], "is a directory"),
    ],
)
def test_bad_image_outputs_are_one_line_and_exit_2(
    source, flags, message, bikes_video, coco_mini, tmp_path
):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (LANDSCAPE, PORTRAIT):
        shutil.copy(coco_mini / "images" / name, folder / name)
    photo = folder / LANDSCAPE
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / PORTRAIT).mkdir()  # where an annotated image would go
    spec = {"video": bikes_video, "folder": folder, "photo": photo}[source]
    flags = [f.format(tmp=tmp_path, folder=folder, photo=photo) for f in flags]
    before = sorted(tmp_path.rglob("*"))
    start = time.monotonic()
    proc = run_cli("detect", str(spec), *flags, "--no-show", "--cache-dir",
                   str(tmp_path / "cache"), timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert message in line, line
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no model fetched


def test_photo_folder_video_is_letterboxed_not_stretched(coco_mini, tmp_path, caplog):
    """A portrait photo after a landscape one was stretched to 640x480 without a word."""
    first, second = image_of(coco_mini, LANDSCAPE), image_of(coco_mini, PORTRAIT)
    path = tmp_path / "photos.avi"  # MJPG: close to the pixels
    out = VideoOutput(path, 1.0)
    with caplog.at_level(logging.WARNING, logger="ssd_trt.video.outputs"):
        for i, image in enumerate((first, second, second)):
            frame = Frame(i, float(i), image, name=f"{i}.jpg")
            out.write(FrameResult(frame, Detections(), 1.0, 1.0, 0.0), image)
        out.close()
    warnings = [r for r in caplog.records if "padded with black bars" in r.getMessage()]
    assert len(warnings) == 1  # said, once
    cap = cv2.VideoCapture(str(path))
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    decoded = frames[1]
    h, w = decoded.shape[:2]
    assert (w, h) == (640, 480)
    # The portrait keeps its shape: 360 px wide in the middle, black bars on both sides.
    assert decoded[:, :130].mean() < 8 and decoded[:, -130:].mean() < 8
    assert decoded[:, 150:490].mean() > 40
    fitted = letterbox(cv2, second, (640, 480))
    stretched = cv2.resize(second, (640, 480))
    err_fit = np.abs(decoded.astype(int) - fitted).mean()
    err_stretch = np.abs(decoded.astype(int) - stretched).mean()
    assert err_fit < 8 and err_stretch > 3 * err_fit, (err_fit, err_stretch)


@pytest.mark.fast
def test_letterbox_keeps_the_aspect_ratio():
    tall = np.full((300, 100, 3), 255, np.uint8)
    boxed = letterbox(cv2, tall, (640, 480))
    cols = np.flatnonzero(boxed.max(axis=(0, 2)) > 0)
    assert boxed.shape == (480, 640, 3)
    assert cols.size == 160 and abs(cols[0] - (640 - cols[-1] - 1)) <= 1  # 100/300*480, centred
    assert Fraction(cols.size, 480) == Fraction(100, 300)


# --------------------------------------------------------------- drawing from Python


def test_plot_and_annotate_return_an_annotated_copy(coco_onnx, coco_mini):
    image = image_of(coco_mini, COWS)
    before = image.copy()
    with Detector(coco_onnx, "cpu", score_threshold=0.5) as det:
        dets = det.detect(image)
    assert {"cow", "person", "umbrella"} <= set(dets.labels)
    drawn = dets.plot(image)
    assert drawn is not image and drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.array_equal(image, before)  # the input is left as it is
    assert np.array_equal(ssd_trt.annotate(image, dets), drawn)
    # The same drawing the video overlay does (without its banner).
    overlay = image.copy()
    draw_detections(overlay, dets)
    assert np.array_equal(overlay, drawn)
    # Each box's bottom-right corner is in its class colour (unless another box's label or
    # line lies over it).
    height, width = image.shape[:2]
    hits = inside = 0
    for d in dets:
        x2, y2 = (int(round(float(v))) for v in d.box[2:])
        if x2 < width and y2 < height:
            inside += 1
            hits += np.abs(drawn[y2, x2].astype(int) - class_color(d.class_id)).max() <= 2
    assert inside >= 5 and hits >= 0.8 * inside, (hits, inside)
    assert np.abs(drawn.astype(int) - image).max() > 100
    # Nothing found: an unchanged copy.
    assert np.array_equal(Detections().plot(image), image)


def test_annotate_takes_grayscale_and_refuses_other_arrays(coco_mini):
    gray = cv2.cvtColor(image_of(coco_mini, COWS), cv2.COLOR_BGR2GRAY)
    drawn = ssd_trt.annotate(gray, one("cow", (10, 10, 200, 200), 21))
    assert drawn.shape == (*gray.shape, 3)
    assert np.abs(drawn[10, 10].astype(int) - class_color(21)).max() <= 2
    with pytest.raises(SsdTrtError, match="uint8 BGR image"):
        ssd_trt.annotate(gray.astype(np.float32), Detections())
    with pytest.raises(SsdTrtError, match="uint8 BGR image"):
        ssd_trt.annotate(np.zeros((4, 4, 4), np.uint8), Detections())
