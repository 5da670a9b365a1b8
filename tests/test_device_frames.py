"""The device-frame contract (device_frames.py): what it accepts and every one-line refusal.

No GPU here, and none is needed: ``__cuda_array_interface__`` and DLPack are documented
protocols, so the arrays below are real producers of them (pointers are never dereferenced).
The DLPack capsule reader runs on numpy's own capsules; the CUDA DLPack branch is fed by a
small producer that builds a DLManagedTensor the way dlpack.h lays it out.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

from ssd_trt.device_frames import (
    DeviceFrame,
    _DLManagedTensor,
    as_device_frame,
    is_device_array,
    read_dlpack_capsule,
)
from ssd_trt.errors import SsdTrtError

pytestmark = pytest.mark.fast

PTR = 0x7F00_0000_0000  # a device address: never read


class CudaArray:
    """A producer of ``__cuda_array_interface__`` (as CuPy or Numba expose it)."""

    def __init__(self, shape, ptr=PTR, strides=None, typestr="|u1", version=3, stream=None, **x):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "version": version,
            **({"stream": stream} if version >= 3 else {}),
            **x,
        }


class DecodedFrame:
    """The parts of PyNvVideoCodec's DecodedFrame the contract reads: ``cuda()`` planes (as its
    CAIMemoryView reports them for a 720p frame) and ``decoder_stream_event``."""

    def __init__(self, h=720, w=1280, event=0xE0E0):
        self.decoder_stream_event = event
        luma = CudaArray((h, w, 1), PTR, (w, 1, 1), stream=2)
        chroma = CudaArray((h // 2, w // 2, 2), PTR + h * w, (w, 2, 1), stream=2)
        self._planes = [luma, chroma]

    def cuda(self):
        return self._planes


class CudaDLPack:
    """A DLPack producer on a CUDA device: a DLManagedTensor laid out as dlpack.h says, in a
    ``"dltensor"`` capsule. ``streams`` records the consumer streams it was asked for."""

    def __init__(self, shape, ptr=PTR, strides=None, dtype=(1, 8, 1), device=(2, 0)):
        self.shape, self.ptr, self.strides, self.dtype, self.device = (
            shape,
            ptr,
            strides,
            dtype,
            device,
        )
        self.streams: list[int | None] = []

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        n = len(self.shape)
        self._shape = (ctypes.c_int64 * n)(*self.shape)
        self._strides = None if self.strides is None else (ctypes.c_int64 * n)(*self.strides)
        m = self._managed = _DLManagedTensor()
        t = m.dl_tensor
        t.data, t.ndim = self.ptr, n
        t.device.device_type, t.device.device_id = self.device
        t.dtype.code, t.dtype.bits, t.dtype.lanes = self.dtype
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        if self._strides is not None:
            t.strides = ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64))
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(m), b"dltensor", None)


def refusal(obj, layout=None, **kw) -> str:
    with pytest.raises(SsdTrtError) as info:
        as_device_frame(obj, layout, **kw)
    text = str(info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------ accepted inputs


def test_bgr_from_cuda_array_interface_v3_with_pitch_and_stream():
    frame = as_device_frame(CudaArray((720, 1280, 3), strides=(4096, 3, 1), stream=0x55))
    assert (frame.layout, frame.size, frame.planes) == ("bgr", (720, 1280), ((PTR, 4096),))
    assert frame.stream == 0x55 and frame.ready_handle() is None


def test_rgb_when_asked_and_c_contiguous_when_strides_are_none():
    frame = as_device_frame(CudaArray((480, 640, 3), version=2), "rgb")
    assert (frame.layout, frame.planes, frame.stream) == ("rgb", ((PTR, 1920),), None)


def test_nv12_block_2d_and_with_trailing_one():
    for shape in ((1080, 1280), (1080, 1280, 1)):
        frame = as_device_frame(CudaArray(shape))
        assert frame.layout == "nv12" and frame.size == (720, 1280)
        assert frame.planes == ((PTR, 1280), (PTR + 720 * 1280, 1280))


def test_nv12_two_planes_of_any_chroma_shape():
    luma = CudaArray((480, 640), PTR, (1024, 1))
    for chroma in (
        CudaArray((240, 640), PTR + (1 << 20), (1024, 1)),
        CudaArray((240, 320, 2), PTR + (1 << 20), (1024, 2, 1)),
    ):
        frame = as_device_frame([luma, chroma])
        assert frame.planes == ((PTR, 1024), (PTR + (1 << 20), 1024))
        assert (frame.layout, frame.size) == ("nv12", (480, 640))


def test_pynvvideocodec_frame_planes_event_and_owner():
    decoded = DecodedFrame()
    frame = as_device_frame(decoded)
    assert (frame.layout, frame.size, frame.stream) == ("nv12", (720, 1280), 2)
    assert frame.planes == ((PTR, 1280), (PTR + 720 * 1280, 1280))
    assert frame.ready_handle() == 0xE0E0 and frame.owner is decoded


def test_colour_defaults_and_explicit_colour():
    # Undeclared: BT.601 at any size, as OpenCV's decode and cvtColor read such frames.
    assert as_device_frame(CudaArray((720, 640))).matrix == "bt601"  # 480x640 NV12
    assert as_device_frame(CudaArray((1620, 1920))).matrix == "bt601"  # 1080p NV12
    frame = as_device_frame(CudaArray((1620, 1920)), matrix="bt601", full_range=True)
    assert (frame.matrix, frame.full_range) == ("bt601", True)


def test_device_frame_passes_through():
    frame = as_device_frame(CudaArray((4, 6, 3)))
    assert as_device_frame(frame) is frame
    assert "is bgr, not nv12" in refusal(frame, "nv12")


def test_cuda_dlpack_tensor_read_from_its_capsule_with_the_consumer_stream():
    tensor = CudaDLPack((360, 640, 3), strides=(2048, 3, 1), device=(2, 1))
    frame = as_device_frame(tensor, stream=0x77)
    assert (frame.layout, frame.size, frame.planes) == ("bgr", (360, 640), ((PTR, 2048),))
    assert (frame.device_id, frame.stream, tensor.streams) == (1, 0x77, [0x77])
    nv12 = as_device_frame(CudaDLPack((1080, 1920)))  # no strides: C-contiguous
    assert nv12.planes == ((PTR, 1920), (PTR + 720 * 1920, 1920))
    # No consumer stream: the producer ordered its work on the legacy default stream, which
    # the fast path's (non-blocking) stream must then wait on.
    assert nv12.stream == 1


def test_numpy_capsule_is_read_exactly():
    """The capsule reader on numpy's real capsules: pointer, shape, strides, dtype."""
    base = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    view = base[:, ::2]
    info = read_dlpack_capsule(view.__dlpack__())
    assert info.ptr == view.ctypes.data and (info.device_type, info.device_id) == (1, 0)
    assert info.shape == (2, 3, 4)
    assert info.strides == tuple(s // 4 for s in view.strides)
    assert info.dtype == (2, 32, 1)  # kDLFloat, 32 bits
    image = np.zeros((5, 7, 3), np.uint8)
    info = read_dlpack_capsule(image.__dlpack__())
    assert (info.shape, info.dtype, info.ptr) == ((5, 7, 3), (1, 8, 1), image.ctypes.data)
    assert info.strides in (None, (21, 3, 1))


def test_is_device_array():
    assert is_device_array(CudaArray((4, 6, 3)))
    assert is_device_array(DecodedFrame()) and is_device_array(CudaDLPack((6, 4)))
    assert is_device_array([CudaArray((4, 4)), CudaArray((2, 4))])
    assert is_device_array(as_device_frame(CudaArray((4, 6, 3))))
    image = np.zeros((4, 6, 3), np.uint8)
    assert not is_device_array(image)
    assert not is_device_array(CudaDLPack((4, 6, 3), device=(1, 0)))
    assert not is_device_array([image, image]) and not is_device_array("frame.jpg")


# ------------------------------------------------------------------------ every refusal


@pytest.mark.parametrize(
    ("obj", "layout", "kw", "expected"),
    [
        (CudaArray((4, 6, 3), typestr="<f4"), None, {}, "dtype '<f4'; frames must be uint8"),
        (CudaArray((4, 6, 3), version=1), None, {}, "version 1 is not supported"),
        (CudaArray((4, 6, 3), mask=1), None, {}, "masked device arrays"),
        (CudaArray((4, 6, 3), stream=0), None, {}, "stream 0 is not allowed"),
        (CudaArray((4, 6, 3), strides=(18, 1, 6)), None, {}, "must be contiguous"),
        (CudaArray((4, 6), strides=(6, 2)), None, {}, "must be contiguous"),
        (CudaArray((4, 6, 3), strides=(12, 3, 1)), None, {}, "rows overlap"),
        (CudaArray((0, 6, 3)), None, {}, "is empty"),
        (CudaArray((4, 6, 3), ptr=0), None, {}, "is empty"),
        (CudaArray((7, 6)), None, {}, "has 7 rows; an NV12 block has H*3/2 rows"),
        (CudaArray((3, 5)), None, {}, "odd side"),
        (CudaArray((4, 6, 4)), None, {}, "has shape (4, 6, 4); expected HxWx3"),
        (CudaArray((4, 6, 2, 1)), None, {}, "expected HxWx3"),
        (CudaArray((4, 6, 3)), "nv12", {}, "is not a nv12 frame"),
        (CudaArray((6, 4)), "bgr", {}, "is not a bgr frame"),
        (CudaArray((6, 4)), "yuv", {}, "unknown frame layout 'yuv'"),
        (np.zeros((4, 6, 3), np.uint8), None, {}, "numpy array is host memory"),
        ("frame.jpg", None, {}, "str is not a device array"),
        (CudaDLPack((4, 6, 3), device=(1, 0)), None, {}, "host memory (CPU); pass a numpy"),
        (CudaDLPack((4, 6, 3), device=(3, 0)), None, {}, "host memory (CUDA host)"),
        (CudaDLPack((4, 6, 3), device=(10, 0)), None, {}, "ROCm is not a CUDA device"),
        (CudaDLPack((4, 6, 3), dtype=(2, 32, 1)), None, {}, "dtype code 2, 32 bits"),
        ([CudaArray((4, 4))], None, {}, "has 2 (NV12 luma, chroma), got 1"),
        ([CudaArray((4, 4)), CudaArray((2, 4))], "rgb", {}, "two planes are an NV12 frame"),
        ([CudaArray((5, 4)), CudaArray((2, 4))], None, {}, "luma height 5 is odd"),
        ([CudaArray((4, 4)), CudaArray((2, 2))], None, {}, "must be 2x4 (interleaved U,V)"),
        (
            [CudaArray((4, 4), stream=5), CudaArray((2, 4), stream=6)],
            None,
            {},
            "different CUDA streams",
        ),
        (CudaArray((6, 4)), None, {"matrix": "bt2020"}, "unknown colour matrix 'bt2020'"),
    ],
)
def test_refusals_are_one_line(obj, layout, kw, expected):
    assert re.search(re.escape(expected), refusal(obj, layout, **kw))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"layout": "yuv"}, "unknown frame layout 'yuv'"),
        ({"height": 0}, "empty device frame (0x6)"),
        ({"planes": ((PTR, 18), (PTR, 6))}, "a bgr device frame has 1 plane(s), got 2"),
        ({"planes": ((0, 18),)}, "null pointer"),
        ({"planes": ((PTR, 17),)}, "pitch 17 is less than a row of 18 bytes (bgr, width 6)"),
        ({"matrix": "bt2020"}, "unknown colour matrix 'bt2020'"),
        (
            {"layout": "nv12", "height": 3, "planes": ((PTR, 6), (PTR, 6))},
            "NV12 frame 3x6 has an odd side",
        ),
    ],
)
def test_device_frame_checks_itself(kw, expected):
    fields = {"layout": "bgr", "height": 4, "width": 6, "planes": ((PTR, 18),), **kw}
    with pytest.raises(SsdTrtError) as info:
        DeviceFrame(**fields)
    assert expected in str(info.value)


def test_device_frame_fields():
    frame = DeviceFrame("nv12", 4, 6, ((PTR, 8), (PTR + 32, 8)), device_id=1, stream=9)
    assert (frame.size, frame.matrix, frame.full_range) == ((4, 6), "bt601", False)
    assert (frame.device_id, frame.stream, frame.ready_handle()) == (1, 9, None)
