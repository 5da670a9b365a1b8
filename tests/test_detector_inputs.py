"""What people pass to a Detector: images in many forms, NMS settings at detect time, a closed
detector. Real models (the registry's COCO SSD, exported into the test cache), real COCO photos,
ONNX Runtime on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO, error_line, optional
from conftest import run_cli as cli

from ssd_trt import Detector
from ssd_trt.contract import ModelInfo
from ssd_trt.detections import Detections
from ssd_trt.errors import SsdTrtError
from ssd_trt.nms import NmsChange, NmsSettings, batched_nms
from ssd_trt.postprocess import to_detections

cv2 = optional("cv2", "video")


@pytest.fixture(scope="module")
def det(graph_onnx):
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.3) as d:
        yield d


@pytest.fixture(scope="module")
def photo_paths(coco_mini) -> list[Path]:
    return sorted((coco_mini / "images").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def photos(photo_paths) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in photo_paths]


def assert_same(got: Detections, want: Detections, px: float = 1e-3, score: float = 1e-6) -> None:
    assert isinstance(got, Detections)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=score)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=px)


# ------------------------------------------------------------------------------------ images


def test_a_2d_grey_array_is_one_grey_image(det, photos):
    """It used to be iterated as a list of rows, and the error named a row's shape."""
    grey = cv2.cvtColor(photos[0], cv2.COLOR_BGR2GRAY)
    want = det.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert len(want) > 0
    assert_same(det.detect(grey), want)
    assert_same(det.detect(grey[:, :, None]), want)  # HxWx1
    both = det.detect([grey, photos[0]])
    assert len(both) == 2
    assert_same(both[0], want)
    assert_same(both[1], det.detect(photos[0]))


def test_a_bgra_array_drops_its_alpha(det, photos):
    bgra = cv2.cvtColor(photos[1], cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = np.arange(bgra.shape[1], dtype=np.uint8)[None, :]  # alpha is ignored
    want = det.detect(photos[1])
    assert len(want) > 0
    assert_same(det.detect(bgra), want)


def test_pil_images_are_rgb_and_converted(det, graph_onnx, photos):
    Image = pytest.importorskip("PIL.Image", reason="PIL is optional; the venv has it")
    bgr = photos[2]
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    want = det.detect(bgr)
    assert len(want) > 0
    pil = Image.fromarray(rgb)
    assert_same(det.detect(pil), want)
    assert_same(det(pil.convert("RGBA")), want)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    # PIL's and OpenCV's RGB -> L differ in rounding: compare with PIL's own grey image.
    pil_grey = pil.convert("L")
    assert_same(det.detect(pil_grey), det.detect(np.asarray(pil_grey)))
    assert np.abs(np.asarray(pil_grey).astype(int) - grey).max() <= 1
    # A detector that takes RGB arrays gets PIL images right too.
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.3, rgb=True) as d_rgb:
        assert_same(d_rgb.detect(rgb), want)
        assert_same(d_rgb.detect(pil), want)
    batch = det.detect([pil, bgr])
    assert_same(batch[0], want)
    assert_same(batch[1], want)


def test_image_files_by_str_and_path(det, graph_onnx, photo_paths, photos):
    want = det.detect(photos[0])
    assert len(want) > 0
    assert_same(det.detect(str(photo_paths[0])), want)
    assert_same(det(photo_paths[0]), want)
    batch = det.detect([str(photo_paths[0]), photo_paths[1], photos[2]])
    assert [len(b) for b in batch] == [len(det.detect(p)) for p in photos[:3]]
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.3, rgb=True) as d_rgb:
        assert_same(d_rgb.detect(photo_paths[0]), want)  # files are read in its order


def test_the_detector_is_callable(det, photos):
    assert_same(det(photos[3]), det.detect(photos[3]))
    batch = det(photos[:2])
    assert isinstance(batch, list) and len(batch) == 2
    assert det([]) == []


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 0), np.uint8), r"image 0 is empty \(shape \(0, 0\)\)"),
        (np.zeros((0, 0, 3), np.uint8), r"image 0 is empty \(shape \(0, 0, 3\)\)"),
        (np.zeros((12, 0, 3), np.uint8), "image 0 is empty"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 0), np.uint8)], "image 1 is empty"),
        (np.zeros((20, 20, 2), np.uint8), r"shape \(20, 20, 2\); expected HxWx3 uint8"),
        (np.zeros((3, 20, 20), np.uint8), "a CxHxW tensor: transpose it"),
        (np.zeros((20, 20, 3), np.float32), "dtype float32; expected HxWx3 uint8"),
        ("no/such/photo.jpg", "no/such/photo.jpg does not exist"),
        ([[1, 2], [3, 4]], "image 0 is list, not an image; pass a numpy array"),
        (42, "got int; pass a numpy array"),
    ],
)
def test_bad_images_are_one_clear_error(det, image, match):
    with pytest.raises(SsdTrtError, match=match) as exc:
        det.detect(image)
    assert "\n" not in str(exc.value)


def test_unreadable_files_are_one_clear_error(det, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a JPEG")
    with pytest.raises(SsdTrtError, match="OpenCV cannot read .*notes.jpg as an image"):
        det.detect(text)
    with pytest.raises(SsdTrtError, match="is a folder; pass an image file"):
        det.detect(str(tmp_path))


def test_detect_after_close_is_one_clear_error(graph_onnx, photos):
    d = Detector(graph_onnx, "cpu", threads=1)
    assert not d.closed
    d.close()
    assert d.closed
    for call in (d.detect, d, d.detect_timed, d.submit):
        with pytest.raises(SsdTrtError, match="this Detector is closed"):
            call([photos[0]])
    d.close()  # twice is harmless
    with Detector(graph_onnx, "cpu", threads=1) as d:
        pass
    with pytest.raises(SsdTrtError, match="closed .*create a new one"):
        d.detect(photos[0])


# ---------------------------------------------------------------------- NMS at detect time


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iou": 1.5}, "iou 1.5 must be a number between 0 and 1"),
        ({"iou": "0.3"}, "iou 0.3 must be a number"),
        ({"max_det": 0}, "max_det 0 must be a whole number >= 1"),
        ({"max_per_class": 2.5}, "max_per_class 2.5 must be a whole number"),
    ],
)
def test_nms_arguments_are_checked_before_any_model_is_loaded(tmp_path, kwargs, match):
    with pytest.raises(SsdTrtError, match=match):
        Detector(tmp_path / "missing.onnx", "cpu", **kwargs)


def overlapping_pairs(d: Detections, iou_above: float) -> int:
    """Same-class pairs of boxes overlapping by more than ``iou_above``."""
    from conftest import iou

    n = 0
    for i in range(len(d)):
        for j in range(i + 1, len(d)):
            if d.class_ids[i] == d.class_ids[j] and iou(d.boxes[i], d.boxes[j]) > iou_above:
                n += 1
    return n


def project_nms(d: Detector, images: list[np.ndarray], s: NmsSettings, min_score: float):
    """What the project's batched_nms keeps on the --nms none export's raw outputs."""
    raw = d.infer(d.preprocess(images))
    out = batched_nms(raw["boxes"], raw["scores"], s)
    sizes = [im.shape[:2] for im in images]
    return to_detections(out, sizes, d.info.labels, min_score=min_score)


def test_iou_on_a_raw_export_is_the_project_nms_with_that_iou(raw_onnx, photos):
    with (
        Detector(raw_onnx, "cpu", threads=1, score_threshold=0.05, iou=0.3) as d3,
        Detector(raw_onnx, "cpu", threads=1, score_threshold=0.05) as d6,
    ):
        assert d3.nms_settings.iou_threshold == 0.3 and d6.nms_settings.iou_threshold == 0.6
        strict, loose = d3.detect(photos), d6.detect(photos)
        want = project_nms(d6, photos, replace(d6.info.nms_settings, iou_threshold=0.3), 0.05)
    for got, ref in zip(strict, want, strict=True):
        assert_same(got, ref)
    assert all(overlapping_pairs(s, 0.3) == 0 for s in strict)
    assert sum(overlapping_pairs(x, 0.3) for x in loose) > 0  # the photos do have overlaps
    assert sum(map(len, strict)) < sum(map(len, loose))


def test_iou_for_a_registry_name_is_exported_once_through_the_cache(
    model_cache, raw_onnx, photos, caplog
):
    """The graph's own NMS, exported again with IoU 0.3, keeps what the project's NMS keeps
    with IoU 0.3 on the network's raw outputs; a second Detector reuses that export."""
    with Detector(COCO, "cpu", cache_dir=model_cache, threads=1, score_threshold=0.3, iou=0.3) as d:
        path = d.model_path
        got = d.detect(photos)
    assert path.name == f"{COCO}.iou-0.3.per-class-100.max-det-100.onnx"
    info = ModelInfo.from_onnx(path)
    assert not info.raw_outputs and info.nms_settings.iou_threshold == 0.3
    with Detector(raw_onnx, "cpu", threads=1) as raw:
        want = project_nms(raw, photos, replace(raw.info.nms_settings, iou_threshold=0.3), 0.3)
    assert sum(map(len, want)) > 0
    for g, w in zip(got, want, strict=True):
        assert_same(g, w, px=0.01, score=1e-5)
    made = path.stat().st_mtime_ns
    caplog.set_level("INFO", logger="ssd_trt")
    with Detector(COCO, "cpu", cache_dir=model_cache, threads=1, iou=0.3) as again:
        assert again.model_path == path
    assert path.stat().st_mtime_ns == made
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]


def test_a_smaller_max_det_is_cut_from_in_graph_nms_exactly(det, graph_onnx, raw_onnx, photos):
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.01) as full:
        everything = full.detect(photos)
    with Detector(graph_onnx, "cpu", threads=1, score_threshold=0.01, max_det=5) as d5:
        assert d5.model_path == graph_onnx  # no re-export
        assert d5.nms_settings.max_total == 5
        five = d5.detect(photos)
    assert all(len(e) > 5 for e in everything)
    for got, ref in zip(five, everything, strict=True):
        assert_same(got, ref[:5])
    # On the raw export the project's NMS stops at 5 itself: the same five.
    with Detector(raw_onnx, "cpu", threads=1, score_threshold=0.01, max_det=5) as r5:
        for got, ref in zip(r5.detect(photos), five, strict=True):
            assert_same(got, ref, px=0.01, score=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (
            {"iou": 0.3},
            "(iou 0.6); iou=0.3 needs a re-export: 'ssd-trt export MODEL --iou-threshold 0.3'",
        ),
        ({"max_per_class": 10}, "--max-per-class 10"),
        ({"max_det": 500}, "(max_det 100); max_det=500 needs a re-export"),
    ],
)
def test_a_given_onnx_with_nms_inside_refuses_what_it_cannot_apply(graph_onnx, kwargs, says):
    with pytest.raises(SsdTrtError) as exc:
        Detector(graph_onnx, "cpu", threads=1, **kwargs)
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert "'--nms none'" in str(exc.value)


def test_settings_equal_to_the_graphs_are_accepted(graph_onnx):
    with Detector(graph_onnx, "cpu", threads=1, iou=0.6, max_per_class=100, max_det=100) as d:
        assert d.nms_settings == d.info.nms_settings


@pytest.mark.fast
def test_which_changes_need_nms_again():
    s = NmsSettings(iou_threshold=0.6, max_per_class=100, max_total=100)
    assert NmsChange(max_total=5).not_exact_after(s) == []
    assert NmsChange(iou_threshold=0.6, max_per_class=100).not_exact_after(s) == []
    assert NmsChange(iou_threshold=0.5).not_exact_after(s) == ["iou_threshold"]
    assert NmsChange(max_per_class=5, max_total=101).not_exact_after(s) == [
        "max_per_class",
        "max_total",
    ]


# ------------------------------------------------------------------------------------- CLI


def test_detect_takes_nms_flags(model_cache, graph_onnx, photo_paths, tmp_path):
    image = str(photo_paths[0])
    common = ["--cache-dir", str(model_cache), "--no-show", "--score-threshold", "0.01"]
    out = tmp_path / "d.jsonl"
    proc = cli("detect", image, "--model", COCO, *common, "--max-det", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(record["detections"]) == 2

    proc = cli("detect", image, "--model", str(graph_onnx), *common, "--iou", "0.3")
    assert proc.returncode == 2
    assert "--iou-threshold 0.3" in error_line(proc)

    proc = cli("detect", image, "--model", COCO, *common, "--iou", "1.5")
    assert proc.returncode == 2 and "must be between 0 and 1" in proc.stderr

    proc = cli("detect", image, "--ray", "--output-dir", str(tmp_path), *common, "--iou", "0.3")
    assert proc.returncode == 2
    assert "do not reach Ray workers" in error_line(proc)
