"""Labels stay whole and visible, clear of the banner (issue 10, a new user's first hour)."""

from __future__ import annotations

import pytest
from conftest import optional, read_frames

from ssd_trt.detector import Detector
from ssd_trt.video.overlay import banner_rect, banner_text, draw_frame, place_label

cv2 = optional("cv2", "video")


@pytest.mark.fast
def test_place_label_stays_inside_and_clear_of_the_banner():
    image = (640, 272)
    banner = (0, 250, 300, 272)
    # A box at the top-left corner: no room above, so the label goes inside its top.
    assert place_label((0, 0, 200, 200), (80, 18), image, [banner]) == (0, 0, 80, 18)
    # A box starting left of the image and one running off the right edge: shifted in whole.
    assert place_label((-30, 50, 100, 200), (80, 18), image)[0] == 0
    assert place_label((600, 50, 660, 200), (80, 18), image)[2] == 640
    # A box filling the bottom-left: every spot but one near its top is under the banner.
    rect = place_label((10, 240, 200, 272), (80, 18), image, [banner])
    assert rect[3] <= banner[1] or rect[0] >= banner[2]


@pytest.mark.parametrize("index", [9, 39, 249])
def test_labels_of_bikes_frames_are_whole_and_visible(coco_onnx, bikes_video, index, tmp_path):
    """Frames where the top-left banner used to hide labels ("erson 0.52", or nothing)."""
    frame = read_frames(bikes_video)[index]
    with Detector(coco_onnx, "cpu", score_threshold=0.5) as det:
        detections = det.detect(frame)
    assert len(detections) > 0
    image = frame.copy()
    rects = draw_frame(image, detections, 24.3, 38.1, "cpu")
    cv2.imwrite(str(tmp_path / f"frame{index}.png"), image)
    height, width = frame.shape[:2]
    banner = banner_rect((width, height), banner_text(24.3, 38.1, "cpu"))
    for d, rect in zip(detections, rects, strict=True):
        x1, y1, x2, y2 = rect
        assert 0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height, (d.label, rect)
        assert not (x1 < banner[2] and banner[0] < x2 and y1 < banner[3] and banner[1] < y2)
        # Drawn last: the label's own colour fills its corner, not the banner's black.
        assert image[y1, x1].tolist() != [0, 0, 0], (d.label, rect)
    for a in range(len(rects)):
        for b in range(a + 1, len(rects)):
            ra, rb = rects[a], rects[b]
            overlap = ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]
            assert not overlap, (ra, rb)
