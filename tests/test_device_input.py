"""Frames in GPU memory on their way into the fast path, as far as a CPU can check them: the
batch kinds and their one-line refusals, the NV12 kernel header, the packed layout that keeps
device frames out of the upload, the Detector's routing of device arrays, and the rejoining of
a batch split by kind. The GPU side (copies, producer waits, the NV12 kernel run) needs the GPU
machine (tests/test_gpu_fastpath.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ssd_trt.colour import MATRICES
from ssd_trt.detection_batch import DetectionBatch
from ssd_trt.device_frames import DeviceFrame
from ssd_trt.errors import SsdTrtError
from ssd_trt.runtime.gpu import kernels
from ssd_trt.runtime.gpu.device_input import batch_kind, nv12_header, shapes_of
from ssd_trt.runtime.gpu.staging import ALIGN, Layout

pytestmark = pytest.mark.fast

PTR = 0x7F00_0000_0000  # device addresses: never read here


def nv12(h=720, w=1280, ptr=PTR, pitch=None, chroma_pitch=None, **kw) -> DeviceFrame:
    pitch = pitch or w
    return DeviceFrame("nv12", h, w, ((ptr, pitch), (ptr + h * pitch, chroma_pitch or pitch)),
                       **kw)  # fmt: skip


def bgr(h=480, w=640, ptr=PTR, layout="bgr", **kw) -> DeviceFrame:
    return DeviceFrame(layout, h, w, ((ptr, 3 * w),), **kw)


def test_batch_kinds() -> None:
    host = np.zeros((10, 10, 3), np.uint8)
    assert batch_kind([host, host], True, 0) == "host"
    assert batch_kind([nv12(), nv12()], True, 0) == "nv12"
    assert batch_kind([bgr(), host], True, 0) == "packed"
    assert batch_kind([bgr(layout="rgb")], False, 0) == "packed"
    assert batch_kind([bgr(device_id=None)], True, 0) == "packed"  # CAI names no device


@pytest.mark.parametrize(
    ("frames", "bgr_order", "match"),
    [
        ([nv12(), bgr()], True, "mixes NV12 frames with others"),
        ([nv12(chroma_pitch=1536, pitch=1280)], True, "pitches differ"),
        ([bgr(device_id=1)], True, "GPU 1; this detector runs on GPU 0"),
        ([bgr(layout="rgb")], True, "reads BGR frames and a device frame is RGB"),
        ([bgr()], False, "reads RGB frames and a device frame is BGR"),
    ],
)
def test_batches_that_cannot_run_are_one_line_errors(frames, bgr_order, match) -> None:
    with pytest.raises(SsdTrtError, match=match) as info:
        batch_kind(frames, bgr_order, 0)
    assert "\n" not in str(info.value)


def test_nv12_header_names_each_surface_and_its_colour() -> None:
    frames = [
        nv12(720, 1280, PTR, pitch=1536, matrix="bt709"),
        nv12(480, 640, PTR + (1 << 24), matrix="bt601", full_range=True),
    ]
    meta = nv12_header(frames, 4).view(np.int64).reshape(4, kernels.NV12_META)
    assert meta[0, :7].tolist() == [PTR, PTR + 720 * 1536, 1536, 720, 1280,
                                    MATRICES.index("bt709"), 0]  # fmt: skip
    assert meta[1, :7].tolist() == [PTR + (1 << 24), PTR + (1 << 24) + 480 * 640, 640, 480, 640,
                                    MATRICES.index("bt601"), 1]  # fmt: skip
    assert (meta[2:] == meta[1]).all()  # padding rows repeat the last frame


def test_layout_uploads_header_and_host_frames_only() -> None:
    host_a, host_b = np.ones((10, 10, 3), np.uint8), np.full((5, 5, 3), 2, np.uint8)
    frames = [bgr(20, 20), host_a, host_b]
    shapes = shapes_of(frames)
    assert shapes == ((20, 20, 3), (10, 10, 3), (5, 5, 3))
    layout = Layout.of(shapes, 4, (True, False, False))
    (d_lo, d_hi), (a_lo, a_hi), (b_lo, b_hi) = layout.spans
    assert layout.start == ALIGN and a_lo == ALIGN  # host frames first, right after the header
    assert layout.upload == b_hi < d_lo and d_hi - d_lo == 20 * 20 * 3
    assert layout.total >= d_hi
    buf = np.zeros(layout.upload, np.uint8)
    layout.pack(buf, [None, host_a, host_b])
    assert (buf[a_lo:a_hi] == 1).all() and (buf[b_lo:b_hi] == 2).all()
    meta = buf[: layout.meta.nbytes].view(np.int64).reshape(4, 4)
    assert meta[0].tolist() == [d_lo - ALIGN, 20, 20, 0]  # offsets from the first frame byte
    # All host: the layout the fast path always used (frames in order, everything uploaded).
    plain = Layout.of(shapes, 4)
    assert plain.upload == plain.total and [s[0] for s in plain.spans] == sorted(
        s[0] for s in plain.spans
    )


def test_detection_batch_take_reorders_images() -> None:
    batch = DetectionBatch.empty(3, 2)
    batch.num_detections[:, 0] = [10, 11, 12]
    batch.detection_scores[:, 0] = [0.1, 0.2, 0.3]
    again = batch.take([2, 0, 1])
    assert again.num_detections[:, 0].tolist() == [12, 10, 11]
    assert again.detection_scores[:, 0].tolist() == pytest.approx([0.3, 0.1, 0.2])


class CudaArray:
    """A producer of ``__cuda_array_interface__`` (as CuPy exposes it); never dereferenced."""

    def __init__(self, shape) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "|u1",
                                         "data": (PTR, False), "strides": None, "version": 3,
                                         "stream": None}  # fmt: skip


def test_detector_routes_device_arrays_and_host_backends_refuse_them_in_one_line() -> None:
    from ssd_trt.detector import as_inputs

    frames, single = as_inputs(CudaArray((480, 640, 3)))
    assert single and isinstance(frames[0], DeviceFrame) and frames[0].layout == "bgr"
    frames, single = as_inputs(CudaArray((480, 640, 3)), rgb=True)
    assert frames[0].layout == "rgb"
    host = np.zeros((8, 8, 3), np.uint8)
    frames, single = as_inputs([CudaArray((1080, 1280)), host])
    assert not single and frames[0].layout == "nv12" and frames[0].size == (720, 1280)
    assert frames[1] is host


def test_host_stage_backend_refuses_device_frames(coco_onnx) -> None:
    from ssd_trt.detector import Detector

    with Detector(coco_onnx, backend="cpu") as det:
        with pytest.raises(SsdTrtError, match="GPU fast path .* pass numpy arrays") as info:
            det.detect(CudaArray((480, 640, 3)))
    assert "\n" not in str(info.value)
