"""Frames that live in GPU memory: the data contract between whoever made them (NVDEC, CuPy,
torch, a user's own kernels) and the fast path that reads them in place.

A :class:`DeviceFrame` is pointers, pitches and sizes, never pixels, so building one costs
microseconds and nothing here touches the memory it describes (no CUDA library is imported).
:func:`as_device_frame` makes one from the two standard protocols:

* ``__cuda_array_interface__`` (versions 2 and 3): ``shape``, ``typestr`` ``"|u1"``,
  ``data=(ptr, readonly)``, ``strides`` (None: C-contiguous), ``stream`` (v3: the producer's
  stream; the reader must order its work after it);
* DLPack on a CUDA device (``__dlpack_device__()`` -> (2, id)): the ``DLManagedTensor`` in the
  capsule is read with ctypes. The capsule is left unconsumed and kept with the frame, so the
  producer's deleter runs when the frame is dropped.

Layouts (the picture is H x W):

* ``"bgr"`` / ``"rgb"``: one plane, H x W x 3 uint8, rows ``pitch`` >= 3*W bytes apart;
* ``"nv12"``: luma H x W, then interleaved chroma (U, V pairs) H/2 x W bytes; H and W even.
  Given as a (H*3/2, W) block, or as two planes (luma, chroma), or as a PyNvVideoCodec
  ``DecodedFrame`` (its ``.cuda()`` planes and its ``decoder_stream_event``).

Colour of NV12 frames: the stream's matrix and range where known; otherwise
``DEFAULT_MATRIX`` (BT.601) whatever the size, limited range (what H.264/HEVC cameras send
unless the stream says full).

Where the frame came from a ``DecodedFrame`` or a CUDA DLPack tensor this could only be tested
with stand-ins here (no GPU on the CPU machine): the protocol parsing is tested with objects
exposing ``__cuda_array_interface__`` dicts and with numpy's own DLPack capsules.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .colour import MATRICES, Matrix
from .errors import SsdTrtError

Layout = Literal["bgr", "rgb", "nv12"]
LAYOUTS: tuple[Layout, ...] = ("bgr", "rgb", "nv12")

# DLPack device types (dlpack.h DLDeviceType).
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13
DL_UINT = 1  # DLDataTypeCode kDLUInt
LEGACY_STREAM = 1  # CUDA's legacy default stream handle (CU_STREAM_LEGACY)
_DL_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA host", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 10: "ROCm"}
UINT8_TYPESTRS = ("|u1", "<u1", ">u1")  # one byte: the byte order sign says nothing
SHAPES_HELP = "HxWx3 uint8 (BGR or RGB) or NV12 ((H*3/2)xW uint8, or its luma and chroma planes)"


# The colour matrix of a stream or frame that declares none: BT.601 at any size, as FFmpeg's
# swscale (so OpenCV's decode) and cv2.cvtColor's NV12 assume; the GPU path must read such a
# stream as the CPU path does, or the two give different detections.
DEFAULT_MATRIX: Matrix = "bt601"


@dataclass(frozen=True)
class DeviceFrame:
    """One frame in GPU memory.

    ``planes``: (device pointer, pitch in bytes) per plane: one for bgr/rgb, two for nv12
    (luma, chroma). ``device_id``: the CUDA device, or None where the producer did not say
    (``__cuda_array_interface__`` carries none: the pointer's device is the driver's to tell).
    ``stream``: the CUDA stream handle the producer's work on this memory is ordered on (None:
    nothing pending, or the producer does not say); a reader makes its own stream wait on it.
    ``ready``: optionally an event (``int(ready)`` is its ``CUevent`` handle) to wait on before
    reading, e.g. a decoder's stream event. ``owner`` is kept referenced for as long as the
    frame is: the decoder surface, the tensor, the DLPack capsule; a reader keeps the frame
    until the GPU work that reads it has completed. ``matrix``/``full_range``: the YUV->RGB
    conversion of nv12 frames (colour.py names; None: ``DEFAULT_MATRIX``).
    """

    layout: Layout
    height: int
    width: int
    planes: tuple[tuple[int, int], ...]
    device_id: int | None = 0
    stream: int | None = None
    matrix: Matrix | None = None
    full_range: bool = False
    owner: Any = field(default=None, compare=False, repr=False)
    ready: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise SsdTrtError(f"unknown frame layout {self.layout!r}; use {', '.join(LAYOUTS)}")
        if self.height <= 0 or self.width <= 0:
            raise SsdTrtError(f"empty device frame ({self.height}x{self.width})")
        want = 2 if self.layout == "nv12" else 1
        if len(self.planes) != want:
            raise SsdTrtError(
                f"a {self.layout} device frame has {want} plane(s), got {len(self.planes)}"
            )
        row = 3 * self.width if want == 1 else self.width
        for ptr, pitch in self.planes:
            if not ptr:
                raise SsdTrtError("device frame plane has a null pointer")
            if pitch < row:
                raise SsdTrtError(
                    f"device frame pitch {pitch} is less than a row of {row} bytes "
                    f"({self.layout}, width {self.width})"
                )
        if self.layout == "nv12" and (self.height % 2 or self.width % 2):
            raise SsdTrtError(
                f"NV12 frame {self.height}x{self.width} has an odd side; NV12 needs even ones"
            )
        if self.matrix is None:
            object.__setattr__(self, "matrix", DEFAULT_MATRIX)
        elif self.matrix not in MATRICES:
            raise SsdTrtError(f"unknown colour matrix {self.matrix!r}; use {' or '.join(MATRICES)}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the picture."""
        return self.height, self.width

    def ready_handle(self) -> int | None:
        """The ``CUevent`` handle to wait on before reading, or None."""
        return None if self.ready is None else int(self.ready) or None


# ---------------------------------------------------------------------------- recognising


def _dlpack_device(obj: Any) -> tuple[int, int] | None:
    probe = getattr(obj, "__dlpack_device__", None)
    if probe is None or not hasattr(obj, "__dlpack__"):
        return None
    kind, index = probe()
    return int(kind), int(index)


def _is_decoded_frame(obj: Any) -> bool:
    """A PyNvVideoCodec ``DecodedFrame``: planes from ``.cuda()``, plus its stream event."""
    return callable(getattr(obj, "cuda", None)) and hasattr(obj, "decoder_stream_event")


def is_device_array(obj: Any) -> bool:
    """Whether ``obj`` is (or holds) a frame in GPU memory; cheap, nothing is parsed. numpy
    arrays and host DLPack tensors are not; a pair of device planes (NV12) is."""
    if isinstance(obj, DeviceFrame):
        return True
    if isinstance(obj, np.ndarray):
        return False
    if hasattr(obj, "__cuda_array_interface__") or _is_decoded_frame(obj):
        return True
    if isinstance(obj, (tuple, list)):
        return len(obj) == 2 and all(is_device_array(p) for p in obj)
    try:
        device = _dlpack_device(obj)
    except Exception:
        return False
    return device is not None and device[0] in (DL_CUDA, DL_CUDA_MANAGED)


# ---------------------------------------------------------------------------- array views


@dataclass(frozen=True)
class _View:
    """One uint8 device array: pointer, shape, byte strides, the stream it is ordered on."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    device_id: int | None
    stream: int | None
    keep: Any  # what keeps the memory alive


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _cai_view(obj: Any) -> _View:
    cai = obj.__cuda_array_interface__
    if not isinstance(cai, dict):
        raise SsdTrtError("__cuda_array_interface__ is not a dict; the device array is broken")
    version = cai.get("version")
    if version not in (2, 3):
        raise SsdTrtError(
            f"__cuda_array_interface__ version {version!r} is not supported; "
            "versions 2 and 3 are (update the library that made the array)"
        )
    typestr = cai.get("typestr")
    if typestr not in UINT8_TYPESTRS:
        raise SsdTrtError(
            f"device array has dtype {typestr!r}; frames must be uint8 ('|u1'): {SHAPES_HELP}"
        )
    if cai.get("mask") is not None:
        raise SsdTrtError("masked device arrays are not supported; pass a plain uint8 array")
    shape = tuple(int(n) for n in cai["shape"])
    ptr, _readonly = cai["data"]
    strides = cai.get("strides")
    strides = _c_strides(shape) if strides is None else tuple(int(s) for s in strides)
    stream = cai.get("stream") if version >= 3 else None
    if stream == 0:
        raise SsdTrtError(
            "__cuda_array_interface__ stream 0 is not allowed by the protocol "
            "(1: legacy default stream, 2: per-thread default stream, else a stream handle)"
        )
    device = cai.get("gpuIdx")  # PyNvVideoCodec's addition; the protocol has none
    return _View(
        int(ptr or 0), shape, strides, None if device is None else int(device), stream, obj
    )


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [
        ("dl_tensor", _DLTensor),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class DLPackInfo:
    """What a ``"dltensor"`` capsule describes (strides in elements, as DLPack gives them)."""

    ptr: int  # data + byte_offset
    device_type: int
    device_id: int
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None
    dtype: tuple[int, int, int]  # (code, bits, lanes)


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype = ctypes.c_int
_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]


def read_dlpack_capsule(capsule: Any) -> DLPackInfo:
    """Read an unconsumed ``"dltensor"`` capsule without consuming it (its owner's deleter runs
    when the capsule is collected)."""
    if not _is_valid(capsule, b"dltensor"):
        raise SsdTrtError(
            "__dlpack__() did not return an unconsumed 'dltensor' capsule; pass the array itself"
        )
    managed = _DLManagedTensor.from_address(_get_pointer(capsule, b"dltensor"))
    t = managed.dl_tensor
    shape = tuple(t.shape[i] for i in range(t.ndim))
    strides = None if not t.strides else tuple(t.strides[i] for i in range(t.ndim))
    return DLPackInfo(
        ptr=(t.data or 0) + t.byte_offset,
        device_type=t.device.device_type,
        device_id=t.device.device_id,
        shape=shape,
        strides=strides,
        dtype=(t.dtype.code, t.dtype.bits, t.dtype.lanes),
    )


def _dlpack_view(obj: Any, device: tuple[int, int], stream: int | None) -> _View:
    kind, index = device
    if kind in (DL_CPU, DL_CUDA_HOST):
        raise SsdTrtError(
            f"{type(obj).__name__} is in host memory ({_DL_NAMES[kind]}); pass a numpy array "
            "(e.g. np.asarray(x) or x.numpy()) for host frames"
        )
    if kind not in (DL_CUDA, DL_CUDA_MANAGED):
        name = _DL_NAMES.get(kind, f"type {kind}")
        raise SsdTrtError(f"DLPack device {name} is not a CUDA device; frames must be on CUDA")
    # ``stream``: the consumer's stream; the producer orders its pending work before it (None:
    # the legacy default stream, as the DLPack protocol says).
    capsule = obj.__dlpack__(stream=stream)
    info = read_dlpack_capsule(capsule)
    if info.dtype != (DL_UINT, 8, 1):
        code, bits, lanes = info.dtype
        raise SsdTrtError(
            f"DLPack tensor has dtype code {code}, {bits} bits x{lanes}; frames must be uint8: "
            f"{SHAPES_HELP}"
        )
    strides = _c_strides(info.shape) if info.strides is None else info.strides
    # The producer ordered its work before ``stream``; None meant the legacy default stream
    # (handle 1), which a non-blocking reader stream must still wait on.
    on = LEGACY_STREAM if stream is None else stream
    return _View(info.ptr, info.shape, strides, index, on, (obj, capsule))


def _view(obj: Any, stream: int | None) -> _View:
    if isinstance(obj, np.ndarray):
        raise SsdTrtError(
            "a numpy array is host memory, not a device frame; pass it to detect/submit as it is"
        )
    if hasattr(obj, "__cuda_array_interface__"):
        return _cai_view(obj)
    device = _dlpack_device(obj)
    if device is not None:
        return _dlpack_view(obj, device, stream)
    raise SsdTrtError(
        f"{type(obj).__name__} is not a device array: pass an object with "
        "__cuda_array_interface__ or DLPack (CuPy, torch CUDA tensors, PyNvVideoCodec frames), "
        "or a numpy array"
    )


# ---------------------------------------------------------------------------- planes


def _rows(view: _View, channels: int, what: str) -> tuple[int, int, int]:
    """(rows, row bytes, pitch) of a view holding rows of ``channels``-byte pixels, with
    unit inner strides; ``channels`` 1 also takes (rows, cols, 1)."""
    shape, strides = view.shape, view.strides
    if channels == 1 and len(shape) == 3 and shape[2] == 1:
        shape, strides = shape[:2], strides[:2]
    if channels == 1 and len(shape) == 2:
        inner_ok = strides[1] == 1
        cols = shape[1]
    elif len(shape) == 3 and shape[2] == channels:
        inner_ok = strides[2] == 1 and strides[1] == channels
        cols = shape[1] * channels
    else:
        raise SsdTrtError(f"{what} has shape {view.shape}; expected {SHAPES_HELP}")
    if not inner_ok:
        raise SsdTrtError(
            f"{what} has strides {view.strides}: pixels within a row must be contiguous "
            "(only the row pitch may differ); pass a contiguous copy"
        )
    if shape[0] <= 0 or cols <= 0 or not view.ptr:
        raise SsdTrtError(f"{what} is empty (shape {view.shape})")
    if strides[0] < cols:
        raise SsdTrtError(f"{what} rows overlap (pitch {strides[0]} < {cols} bytes)")
    return shape[0], cols, strides[0]


def _same_stream(a: int | None, b: int | None) -> int | None:
    if a is not None and b is not None and a != b:
        raise SsdTrtError(
            "the NV12 luma and chroma planes are on different CUDA streams; "
            "produce both on one stream"
        )
    return a if a is not None else b


def _nv12_planes(luma: _View, chroma: _View) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    height, width, pitch = _rows(luma, 1, "NV12 luma plane")
    if chroma.shape[-1:] == (2,) and len(chroma.shape) == 3:  # (H/2, W/2, 2): U,V pairs
        rows, cols, cpitch = _rows(chroma, 2, "NV12 chroma plane")
    else:
        rows, cols, cpitch = _rows(chroma, 1, "NV12 chroma plane")
    if height % 2:
        raise SsdTrtError(f"NV12 luma height {height} is odd; NV12 needs an even height")
    if (rows, cols) != (height // 2, width):
        raise SsdTrtError(
            f"NV12 chroma plane is {rows}x{cols} bytes; for a {height}x{width} luma plane it "
            f"must be {height // 2}x{width} (interleaved U,V)"
        )
    return height, width, ((luma.ptr, pitch), (chroma.ptr, cpitch))


def _nv12_block(view: _View) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    rows, width, pitch = _rows(view, 1, "NV12 frame")
    if rows % 3:
        raise SsdTrtError(
            f"NV12 frame has {rows} rows; an NV12 block has H*3/2 rows (luma H, chroma H/2)"
        )
    height = rows * 2 // 3  # even: rows is a multiple of 3
    return height, width, ((view.ptr, pitch), (view.ptr + height * pitch, pitch))


def as_device_frame(
    obj: Any,
    layout: Layout | None = None,
    *,
    stream: int | None = None,
    matrix: Matrix | None = None,
    full_range: bool = False,
) -> DeviceFrame:
    """A :class:`DeviceFrame` for a device array, a pair of NV12 planes (luma, chroma), a
    PyNvVideoCodec ``DecodedFrame``, or a DeviceFrame (returned as it is).

    ``layout``: None infers it: (H, W, 3) is ``"bgr"`` (the library's colour order; say
    ``"rgb"`` for RGB arrays), (H*3/2, W) or (H*3/2, W, 1) and plane pairs are ``"nv12"``.
    ``stream``: the consumer's stream, handed to ``__dlpack__`` so the producer orders its
    pending work before it. ``matrix``/``full_range``: the NV12 colour (None: DEFAULT_MATRIX).
    Every rejection is one SsdTrtError line.
    """
    if layout is not None and layout not in LAYOUTS:
        raise SsdTrtError(f"unknown frame layout {layout!r}; use {', '.join(LAYOUTS)}")
    if isinstance(obj, DeviceFrame):
        if layout is not None and layout != obj.layout:
            raise SsdTrtError(f"device frame is {obj.layout}, not {layout}")
        return obj
    ready = owner = None
    if not hasattr(obj, "__cuda_array_interface__") and _is_decoded_frame(obj):
        ready, owner = obj.decoder_stream_event, obj
        obj = list(obj.cuda())
        if len(obj) == 1:
            obj = obj[0]
    if isinstance(obj, (tuple, list)):
        if len(obj) != 2:
            raise SsdTrtError(
                f"a device frame given as planes has 2 (NV12 luma, chroma), got {len(obj)}"
            )
        if layout not in (None, "nv12"):
            raise SsdTrtError(f"two planes are an NV12 frame, not {layout}")
        luma, chroma = _view(obj[0], stream), _view(obj[1], stream)
        height, width, planes = _nv12_planes(luma, chroma)
        kind: Layout = "nv12"
        device, on = luma.device_id, _same_stream(luma.stream, chroma.stream)
        keep: Any = (luma.keep, chroma.keep)
    else:
        view = _view(obj, stream)
        is_rgb = len(view.shape) == 3 and view.shape[2] == 3
        if is_rgb and layout != "nv12":
            kind = layout or "bgr"
            height, width, pitch = _rows(view, 3, "device frame")
            width //= 3
            planes = ((view.ptr, pitch),)
        elif not is_rgb and layout in (None, "nv12"):
            kind = "nv12"
            height, width, planes = _nv12_block(view)
        else:
            raise SsdTrtError(
                f"device array of shape {view.shape} is not a {layout} frame; expected "
                f"{SHAPES_HELP}"
            )
        device, on, keep = view.device_id, view.stream, view.keep
    return DeviceFrame(
        layout=kind,
        height=height,
        width=width,
        planes=planes,
        device_id=device,
        stream=on,
        matrix=matrix,
        full_range=full_range,
        owner=owner if owner is not None else keep,
        ready=ready,
    )
