"""NV12 (what hardware video decoders output) to BGR: the reference conversion, in numpy.

NV12 is a full-size luma plane followed by a half-size plane of interleaved U,V pairs, one pair
per 2x2 block of pixels. The YUV->RGB constants depend on the colour matrix the stream declares
(BT.601 or BT.709; BT.601 where it declares none) and its range (limited: Y in 16..235, chroma
in 16..240; full: 0..255).

The arithmetic is FFmpeg's swscale's, the fixed-point form its unscaled YUV->RGB converters use
(on x86): OpenCV's ``VideoCapture`` decodes through it, so the CPU decode path's frames and this
conversion of the same planes are equal byte for byte (measured with OpenCV 5.1 on BT.601 and
BT.709, limited and full range, widths 600 to 1920), and the detector sees the same pixels
whichever decoder ran. (OpenCV 4 reads every stream as BT.601: it never hands swscale the
declared matrix, so there BT.709 streams differ between the decoders.) Each term is a 16-bit
multiply keeping the high half (a floor), so the result sits about one level below exact
rounding; matching OpenCV matters more than that level.

``YuvCoefficients`` holds the integers ONCE: this module's reference uses them, and the GPU
preprocess kernel (runtime/gpu/cuda/preprocess.cu) reads the same numbers from
``coefficient_table()``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Literal

import numpy as np

from .errors import SsdTrtError

Matrix = Literal["bt601", "bt709"]
MATRICES: tuple[Matrix, ...] = ("bt601", "bt709")  # index = the kernel header's matrix index

# Limited-range (crv, cbu, cgu, cgv) of each matrix in 16.16 fixed point: 1.402, 1.772,
# 0.344136, 0.714136 (BT.601) and 1.5748, 1.8556, 0.187324, 0.468124 (BT.709), times 255/224.
# These are the values swscale's table holds (a few differ from rounding in the last bit).
_CHROMA_16_16 = {
    "bt601": (104597, 132201, 25675, 53279),
    "bt709": (117489, 138438, 13975, 34925),
}
CHROMA_OFFSET = 128 << 3  # U, V are centred after the 3-bit promotion


def _q13(value_16_16: int) -> int:
    """A 16.16 constant -> the signed 16-bit multiplier (13 fractional bits), rounded."""
    return (value_16_16 * 8192 + (1 << 15)) >> 16


@dataclass(frozen=True)
class YuvCoefficients:
    """Fixed-point YUV->RGB: with Y8 = 8*Y - y_offset and U8, V8 = 8*U - 1024, 8*V - 1024,
    ys = (Y8*y_mul) >> 16, then B = ys + (U8*bu) >> 16, G = ys + (U8*gu) >> 16 + (V8*gv) >> 16,
    R = ys + (V8*rv) >> 16, clipped to 0..255 (each ``>>`` a floor)."""

    y_offset: int
    y_mul: int
    rv: int
    gu: int
    gv: int
    bu: int

    @classmethod
    def of(cls, matrix: Matrix, full_range: bool) -> YuvCoefficients:
        if matrix not in _CHROMA_16_16:
            raise SsdTrtError(f"unknown colour matrix {matrix!r}; use {' or '.join(MATRICES)}")
        crv, cbu, cgu, cgv = _CHROMA_16_16[matrix]
        if full_range:  # chroma spans 255 steps, not 224; luma is taken as it is
            crv, cbu, cgu, cgv = (c * 224 // 255 for c in (crv, cbu, cgu, cgv))
            y_16_16, y_offset = 1 << 16, 0
        else:  # limited: 219 luma steps from 16 stretched to 255
            y_16_16, y_offset = (255 << 16) // 219, 16 << 3
        return cls(
            y_offset=y_offset,
            y_mul=_q13(y_16_16),
            rv=_q13(crv),
            gu=_q13(-cgu),
            gv=_q13(-cgv),
            bu=_q13(cbu),
        )


def colour_index(matrix: Matrix, full_range: bool) -> int:
    """The row of ``coefficient_table()`` for a matrix and range: matrix index * 2 + full."""
    if matrix not in MATRICES:
        raise SsdTrtError(f"unknown colour matrix {matrix!r}; use {' or '.join(MATRICES)}")
    return MATRICES.index(matrix) * 2 + int(full_range)


COEFFICIENT_FIELDS = len(astuple(YuvCoefficients.of("bt601", False)))


def coefficient_table() -> np.ndarray:
    """int32 (4, 6): one row per ``colour_index`` in ``YuvCoefficients`` field order; the
    kernel takes this table as an argument."""
    rows = [astuple(YuvCoefficients.of(m, bool(f))) for m in MATRICES for f in (0, 1)]
    return np.asarray(rows, dtype=np.int32)


def yuv_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray, coef: YuvCoefficients) -> np.ndarray:
    """Per-pixel conversion of same-shaped uint8 planes -> (..., 3) uint8 BGR."""
    ys = (((y.astype(np.int32) << 3) - coef.y_offset) * coef.y_mul) >> 16
    uc = (u.astype(np.int32) << 3) - CHROMA_OFFSET
    vc = (v.astype(np.int32) << 3) - CHROMA_OFFSET
    b = ys + ((uc * coef.bu) >> 16)
    g = ys + ((uc * coef.gu) >> 16) + ((vc * coef.gv) >> 16)
    r = ys + ((vc * coef.rv) >> 16)
    return np.clip(np.stack([b, g, r], axis=-1), 0, 255).astype(np.uint8)


def split_nv12(nv12: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H*3/2, W) uint8 NV12 -> luma (H, W) and U, V (H/2, W/2)."""
    if nv12.dtype != np.uint8 or nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise SsdTrtError(
            f"NV12 must be a (H*3/2, W) uint8 array with even H and W, got {nv12.dtype} "
            f"{nv12.shape}"
        )
    h = nv12.shape[0] * 2 // 3
    if h % 2:
        raise SsdTrtError(f"NV12 height {h} is odd; NV12 needs an even height")
    chroma = nv12[h:].reshape(h // 2, nv12.shape[1] // 2, 2)
    return nv12[:h], chroma[..., 0], chroma[..., 1]


def nv12_to_bgr(nv12: np.ndarray, matrix: Matrix = "bt601", full_range: bool = False) -> np.ndarray:
    """NV12 -> (H, W, 3) uint8 BGR; each 2x2 block shares its chroma pair (as OpenCV does)."""
    y, u, v = split_nv12(nv12)
    u_full = u.repeat(2, axis=0).repeat(2, axis=1)
    v_full = v.repeat(2, axis=0).repeat(2, axis=1)
    return yuv_to_bgr(y, u_full, v_full, YuvCoefficients.of(matrix, full_range))
