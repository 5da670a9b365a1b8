"""Frames decoded on the GPU (sources.Frame with ``device=``) go through the video engine
without reaching the host unless an output needs pixels.

The sources here hand out real ``DeviceFrame`` s (device_frames.py) over a
``__cuda_array_interface__`` producer; their ``download`` counts its calls and returns a host
image. The detector is a stand-in for the GPU fast path (not part of these tests): it takes the
device frames the engine submits and answers each with its frame number.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_device_frames import CudaArray

from ssd_trt.detections import Detections
from ssd_trt.device_frames import DeviceFrame, as_device_frame
from ssd_trt.errors import SsdTrtError
from ssd_trt.sources import Frame, Source
from ssd_trt.video.engine import Engine
from ssd_trt.video.outputs import JsonLinesOutput, Output

pytestmark = pytest.mark.fast


class _DeviceSource(Source):
    """NV12 frames in (pretend) GPU memory, 480x640; ``downloads`` counts host copies."""

    def __init__(self, count: int) -> None:
        super().__init__("gpu video")
        self.count, self.index, self.downloads = count, 0, 0
        self.fps, self.frame_count = 30.0, count

    def read(self) -> Frame | None:
        if self.index >= self.count:
            return None
        device = as_device_frame(CudaArray((720, 640), ptr=0x1000_0000 + self.index * 4096))
        self.index += 1
        return Frame(self.index - 1, self.index / 30.0, device=device, download=self._download)

    def _download(self) -> np.ndarray:
        self.downloads += 1
        return np.zeros((480, 640, 3), np.uint8)


class _DeviceDetector:
    """Stand-in for the fast path taking DeviceFrames: one detection per frame whose score is
    the frame's luma pointer, so each result can be matched to the frame it came from."""

    backend_name = "device"
    supports_submit = True

    def __init__(self) -> None:
        self.seen: list[object] = []

    def warm_up(self, max_batch: int) -> None:
        pass

    def submit(self, images: list[object]) -> list[object]:
        self.seen.extend(images)
        return list(images)

    def collect(self, pending: list[DeviceFrame]):
        dets = [
            Detections(
                np.zeros((1, 4), np.float32),
                np.array([(f.planes[0][0] - 0x1000_0000) / 4096], np.float32),
                np.ones(1, np.int32),
                ["x"],
            )
            for f in pending
        ]
        return dets, {"total": 1.0}


class _Shown(Output):
    """An output that shows pictures (a video file, the window, the live page do)."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, ...]] = []

    def write(self, result, annotated) -> None:
        self.sizes.append(annotated.shape)


def test_frame_keeps_its_positional_form_and_gains_size_and_device() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    frame = Frame(3, 0.5, image, "a.jpg")
    assert (frame.index, frame.timestamp, frame.name, frame.device) == (3, 0.5, "a.jpg", None)
    assert frame.image is image and frame.size == (4, 6) and frame.on_host
    assert frame.detector_input is image
    with pytest.raises(SsdTrtError, match="needs an image or a device frame"):
        Frame(0, 0.0)


def test_a_device_frame_downloads_once_and_only_when_asked() -> None:
    source = _DeviceSource(1)
    frame = source.read()
    assert frame is not None and frame.size == (480, 640) and not frame.on_host
    assert isinstance(frame.detector_input, DeviceFrame) and source.downloads == 0
    assert frame.image.shape == (480, 640, 3) and frame.image.shape == (480, 640, 3)
    assert source.downloads == 1 and frame.on_host
    bare = Frame(0, 0.0, device=frame.device)
    with pytest.raises(SsdTrtError, match="no way to download it"):
        bare.image  # noqa: B018


def test_json_only_run_never_downloads(tmp_path: Path) -> None:
    source, detector = _DeviceSource(12), _DeviceDetector()
    path = tmp_path / "out.jsonl"
    seen: list[int] = []
    stats = Engine(
        detector,  # type: ignore[arg-type]
        [source],
        [[JsonLinesOutput(path)]],
        draw=False,
        on_frame=lambda i, result, image: seen.append(result.frame.index),
        on_frame_image=False,
    ).run()
    assert stats.frames == 12 and source.downloads == 0
    assert all(isinstance(f, DeviceFrame) for f in detector.seen) and len(detector.seen) == 12
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # Each frame's result is its own: the score is the frame number from its pointer.
    assert [r["frame"] for r in lines] == list(range(12)) == seen
    assert [r["detections"][0]["score"] for r in lines] == [float(i) for i in range(12)]


def test_outputs_that_show_pictures_download_each_frame_once() -> None:
    source, shown = _DeviceSource(5), _Shown()
    Engine(_DeviceDetector(), [source], [[shown]]).run()  # type: ignore[arg-type]
    assert source.downloads == 5 and shown.sizes == [(480, 640, 3)] * 5


def test_on_frame_that_wants_the_picture_gets_it() -> None:
    source, got = _DeviceSource(3), []
    Engine(
        _DeviceDetector(),  # type: ignore[arg-type]
        [source],
        [[]],
        on_frame=lambda i, result, image: got.append(image.shape),
    ).run()
    assert source.downloads == 3 and got == [(480, 640, 3)] * 3


def test_the_plain_loop_submits_device_frames_too() -> None:
    source, detector = _DeviceSource(4), _DeviceDetector()
    t0 = time.perf_counter()
    Engine(detector, [source], [[]], sync=True, draw=False).run()  # type: ignore[arg-type]
    assert time.perf_counter() - t0 < 10
    assert len(detector.seen) == 4 and source.downloads == 0
