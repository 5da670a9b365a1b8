"""NV12 (what hardware video decoders output) to BGR: the reference conversion, in numpy.

NV12 is a full-size luma plane followed by a half-size plane of interleaved U,V pairs, one pair
per 2x2 block of pixels. The YUV->RGB constants depend on the colour matrix the stream declares
(BT.601 for SD, BT.709 for HD) and its range (limited: Y in 16..235, chroma in 16..240; full:
0..255). ``YuvCoefficients`` holds them ONCE: this module's reference uses them, and the GPU
preprocess kernel (runtime/gpu/cuda/preprocess.cu) reads the same numbers from
``coefficient_table()``.

The arithmetic is float32 in a fixed order (no fused multiply-add), rounded half up and clipped,
so the kernel, which does the same operations, gives the same bytes.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Literal

import numpy as np

from .errors import SsdTrtError

Matrix = Literal["bt601", "bt709"]
MATRICES: tuple[Matrix, ...] = ("bt601", "bt709")  # index = the kernel header's matrix index

# (Kr, Kb) luma weights of each matrix (ITU-R BT.601 and BT.709).
_LUMA_WEIGHTS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


@dataclass(frozen=True)
class YuvCoefficients:
    """R = ys + rv*v; G = ys + gu*u + gv*v; B = ys + bu*u, where ys = y_scale*(Y - y_offset)
    and u, v = U - 128, V - 128."""

    y_offset: float
    y_scale: float
    rv: float
    gu: float
    gv: float
    bu: float

    @classmethod
    def of(cls, matrix: Matrix, full_range: bool) -> YuvCoefficients:
        if matrix not in _LUMA_WEIGHTS:
            raise SsdTrtError(f"unknown colour matrix {matrix!r}; use {' or '.join(MATRICES)}")
        kr, kb = _LUMA_WEIGHTS[matrix]
        kg = 1.0 - kr - kb
        # Limited range stretches 219 luma and 224 chroma steps to 255.
        y_scale, c_scale = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
        return cls(
            y_offset=0.0 if full_range else 16.0,
            y_scale=y_scale,
            rv=2.0 * (1.0 - kr) * c_scale,
            gu=-2.0 * (1.0 - kb) * kb / kg * c_scale,
            gv=-2.0 * (1.0 - kr) * kr / kg * c_scale,
            bu=2.0 * (1.0 - kb) * c_scale,
        )


def colour_index(matrix: Matrix, full_range: bool) -> int:
    """The row of ``coefficient_table()`` for a matrix and range: matrix index * 2 + full."""
    if matrix not in MATRICES:
        raise SsdTrtError(f"unknown colour matrix {matrix!r}; use {' or '.join(MATRICES)}")
    return MATRICES.index(matrix) * 2 + int(full_range)


COEFFICIENT_FIELDS = len(astuple(YuvCoefficients.of("bt601", False)))


def coefficient_table() -> np.ndarray:
    """float32 (4, 6): one row per ``colour_index`` in ``YuvCoefficients`` field order; the
    kernel takes this table as an argument."""
    rows = [astuple(YuvCoefficients.of(m, bool(f))) for m in MATRICES for f in (0, 1)]
    return np.asarray(rows, dtype=np.float32)


def yuv_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray, coef: YuvCoefficients) -> np.ndarray:
    """Per-pixel conversion of same-shaped uint8 planes -> (..., 3) uint8 BGR."""
    c = np.asarray(astuple(coef), dtype=np.float32)
    ys = c[1] * (y.astype(np.float32) - c[0])
    uc = u.astype(np.float32) - np.float32(128)
    vc = v.astype(np.float32) - np.float32(128)
    r = ys + c[2] * vc
    g = (ys + c[3] * uc) + c[4] * vc
    b = ys + c[5] * uc
    bgr = np.stack([b, g, r], axis=-1)
    return np.clip(np.floor(bgr + np.float32(0.5)), 0, 255).astype(np.uint8)


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
