"""NV12 -> BGR: the numpy reference (ssd_trt/colour.py) against OpenCV and the textbook formulas,
and a numpy model of the GPU kernel's per-pixel math (runtime/gpu/cuda/preprocess.cu,
``preprocess_nv12_*``) against the reference followed by cv2.resize.

The NV12 frames are made from real pictures (COCO photos shipped in tests/data, frames of
bikes.mp4) with OpenCV's BGR->I420, the U and V planes interleaved into NV12.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from conftest import optional, read_frames

from ssd_trt.colour import (
    MATRICES,
    YuvCoefficients,
    coefficient_table,
    colour_index,
    nv12_to_bgr,
    split_nv12,
    yuv_to_bgr,
)
from ssd_trt.errors import SsdTrtError

cv2 = optional("cv2", "video")


def to_nv12(bgr: np.ndarray) -> np.ndarray:
    """BGR -> NV12 with OpenCV (BT.601, limited range), cropped to even sizes."""
    h, w = (bgr.shape[0] // 2) * 2, (bgr.shape[1] // 2) * 2
    i420 = cv2.cvtColor(np.ascontiguousarray(bgr[:h, :w]), cv2.COLOR_BGR2YUV_I420)
    chroma, quarter = i420[h:].ravel(), h * w // 4
    u = chroma[:quarter].reshape(h // 2, w // 2)
    v = chroma[quarter:].reshape(h // 2, w // 2)
    return np.vstack([i420[:h], np.stack([u, v], axis=-1).reshape(h // 2, w)])


def photos(coco_mini: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((coco_mini / "images").glob("*.jpg"))]


def cvtcolor_gap(frames: list[np.ndarray]) -> np.ndarray:
    """reference - cv2.cvtColor(COLOR_YUV2BGR_NV12) over the frames' BT.601 NV12: the count of
    each difference -4..3 (-4 counts all below)."""
    counts = np.zeros(8, dtype=np.int64)
    for frame in frames:
        nv12 = to_nv12(frame)
        ours = nv12_to_bgr(nv12, "bt601", full_range=False).astype(np.int16)
        theirs = cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12).astype(np.int16)
        counts += np.bincount(np.clip(ours - theirs, -4, 3).ravel() + 4, minlength=8)
    return counts


def camera_file(frames: list[np.ndarray], dest: Path, colorspace: int, full: bool) -> Path:
    """Real frames as H.264 High profile declaring a colour matrix (FFmpeg's enum: 1 BT.709,
    6 SMPTE 170M = BT.601, 2 none) and range."""
    av = optional("av", "video")
    with av.open(str(dest), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if full else "yuv420p"
        stream.options = {"profile": "high", "bf": "2"}
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = 2 if full else 1
        for image in frames:
            picture = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(picture.reformat(format=stream.pix_fmt)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return dest


def ffmpeg_nv12(path: Path, count: int | None = None) -> list[np.ndarray]:
    """FFmpeg's decoded planes (the first ``count`` pictures, or all), interleaved into NV12
    (what NVDEC gives: the same bytes)."""
    av = optional("av", "video")
    blocks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if len(blocks) == count:
                break
            i420 = frame.to_ndarray()  # yuv420p / yuvj420p as they are: Y, then U, then V
            h, w = frame.height, frame.width
            u = i420[h : h + h // 4].reshape(h // 2, w // 2)
            v = i420[h + h // 4 :].reshape(h // 2, w // 2)
            blocks.append(np.vstack([i420[:h], np.stack([u, v], axis=-1).reshape(h // 2, w)]))
    return blocks


# ------------------------------------------------------- reference vs OpenCV's decode and cvtColor


@pytest.mark.parametrize(
    "colorspace,full,size",
    [(2, False, None), (1, False, None), (6, True, None), (1, True, None), (2, False, (1280, 720))],
    ids=["undeclared", "bt709", "bt601-full", "bt709-full", "undeclared-hd"],
)
def test_reference_is_opencvs_decode_byte_for_byte(
    bikes_video: Path, tmp_path: Path, colorspace: int, full: bool, size: tuple | None
) -> None:
    """What the CPU decode path feeds the detector is OpenCV's decode, which converts through
    swscale with the matrix and range the stream declares (BT.601 where it declares none, at any
    size). The reference, given FFmpeg's planes of the same frames and the colour our demuxer
    reads from the stream, gives exactly those bytes (also measured: the 720p BT.709 file,
    width 600)."""
    from test_nvdec import _opencv_frames

    from ssd_trt.video.demux import Demuxer

    if colorspace == 1 and cv2.getVersionMajor() < 5:
        pytest.skip("OpenCV 4 decodes every stream as BT.601 (opencv#20513): no BT.709 to match")
    frames = [cv2.resize(f, size) if size else f for f in read_frames(bikes_video, limit=10)]
    path = camera_file(frames, tmp_path / "camera.mp4", colorspace, full)
    demuxer = Demuxer(str(path))
    demuxer.read()
    info = demuxer.info
    demuxer.close()
    assert info.full_range == full and info.matrix == ("bt709" if colorspace == 1 else "bt601")
    decoded = _opencv_frames(path)
    blocks = ffmpeg_nv12(path)
    assert len(blocks) == len(decoded) == 10
    for nv12, image in zip(blocks, decoded, strict=True):
        ours = nv12_to_bgr(nv12, info.matrix, info.full_range)
        assert np.array_equal(ours, image), int(np.abs(ours.astype(int) - image).max())


@pytest.mark.fast
def test_reference_against_cvtcolor_nv12_on_photos(coco_mini: Path) -> None:
    """cv2.cvtColor's NV12 (BT.601 limited) rounds where swscale's fixed point truncates, so on
    the 16 COCO photos the reference is never brighter and at most 3 levels darker: measured
    shares of -3..0 were 0.4%, 23.0%, 64.7%, 11.8% (mean -1.12). OpenCV's decode and its
    cvtColor of the same planes disagree the same way: the reference sides with the decode."""
    counts = cvtcolor_gap(photos(coco_mini))
    assert counts[0] == 0 and counts[5:].sum() == 0, counts  # -3..0 only
    share = counts[1:5] / counts.sum()
    assert share[0] < 0.02 and 0.5 < share[2] < 0.8, share  # mostly one level


# ------------------------------------------------------------------------- textbook formulas


def encode(rgb: tuple[float, float, float], matrix: str, full_range: bool) -> tuple[int, ...]:
    """Textbook R'G'B' -> Y'CbCr (ITU-R BT.601 / BT.709), rounded to 8 bits."""
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}[matrix]
    r, g, b = (c / 255.0 for c in rgb)
    y = kr * r + (1 - kr - kb) * g + kb * b
    pb, pr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    if full_range:
        values = (255 * y, 128 + 255 * pb, 128 + 255 * pr)
    else:
        values = (16 + 219 * y, 128 + 224 * pb, 128 + 224 * pr)
    return tuple(int(np.clip(np.floor(v + 0.5), 0, 255)) for v in values)


def convert(yuv: tuple[int, ...], matrix: str, full_range: bool) -> np.ndarray:
    y, u, v = (np.array([c], dtype=np.uint8) for c in yuv)
    return yuv_to_bgr(y, u, v, YuvCoefficients.of(matrix, full_range))[0]  # type: ignore[arg-type]


@pytest.mark.fast
@pytest.mark.parametrize("matrix", MATRICES)
def test_grey_stays_grey(matrix: str) -> None:
    levels = np.arange(256, dtype=np.uint8)
    mid = np.full(256, 128, dtype=np.uint8)
    full = yuv_to_bgr(levels, mid, mid, YuvCoefficients.of(matrix, True))  # type: ignore[arg-type]
    assert (full == levels[:, None]).all()  # full range: Y is the grey level itself
    limited = yuv_to_bgr(levels, mid, mid, YuvCoefficients.of(matrix, False))  # type: ignore[arg-type]
    assert (limited[:, 0] == limited[:, 1]).all() and (limited[:, 1] == limited[:, 2]).all()
    assert limited[16, 0] == 0 and limited[235, 0] == 255  # video black and white
    assert (limited[:17] == 0).all() and (limited[235:] == 255).all()  # clipped outside
    assert limited[126, 0] == 128  # (126 - 16) * 255 / 219 = 128.08


@pytest.mark.fast
@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("full_range", [False, True])
def test_pure_colours_map_back(matrix: str, full_range: bool) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    colours += [(255, 0, 255), (255, 255, 255), (0, 0, 0), (200, 120, 40), (17, 99, 230)]
    for rgb in colours:
        bgr = convert(encode(rgb, matrix, full_range), matrix, full_range)
        # 8-bit rounding of Y, Cb, Cr moves a channel by about 1.5 steps at most, swscale's
        # truncation by up to 1.5 more, downwards (measured worst: 3).
        assert np.abs(bgr[::-1].astype(int) - rgb).max() <= 3, (rgb, bgr)


@pytest.mark.fast
def test_the_matrix_matters() -> None:
    """BT.709 red and green read with BT.601 are visibly wrong (red measured (233, 0, 2), green
    (20, 255, 9)): the kernel must use the matrix the stream declares."""
    for rgb in ((255, 0, 0), (0, 255, 0)):
        yuv = encode(rgb, "bt709", False)
        assert np.abs(convert(yuv, "bt709", False)[::-1].astype(int) - rgb).max() <= 2
        assert np.abs(convert(yuv, "bt601", False)[::-1].astype(int) - rgb).max() >= 15


@pytest.mark.fast
def test_coefficients_are_swscales() -> None:
    """The 16-bit multipliers swscale derives for BT.601 limited range (1.1644, 1.5960, -0.3917,
    -0.8130, 2.0172 in 13 fractional bits) and luma offset 16 in 3 fractional bits."""
    c = YuvCoefficients.of("bt601", False)
    assert (c.y_offset, c.y_mul, c.rv, c.gu, c.gv, c.bu) == (128, 9539, 13075, -3209, -6660, 16525)
    full = YuvCoefficients.of("bt709", True)
    assert (full.y_offset, full.y_mul) == (0, 8192)  # full-range luma is taken as it is


@pytest.mark.fast
def test_coefficient_table_is_the_dataclass() -> None:
    """The kernel's table: row matrix*2 + full range, YuvCoefficients' fields in order."""
    table = coefficient_table()
    assert table.dtype == np.int32 and table.shape == (4, 6)
    for matrix in MATRICES:
        for full in (False, True):
            row = table[colour_index(matrix, full)]  # type: ignore[arg-type]
            want = np.int32(astuple(YuvCoefficients.of(matrix, full)))  # type: ignore[arg-type]
            assert (row == want).all()


@pytest.mark.fast
def test_bad_input_is_one_line_error() -> None:
    with pytest.raises(SsdTrtError, match="NV12 must be"):
        split_nv12(np.zeros((10, 8), dtype=np.uint8))  # 10 rows is not H*3/2
    with pytest.raises(SsdTrtError, match="NV12 must be"):
        split_nv12(np.zeros((12, 8), dtype=np.float32))
    with pytest.raises(SsdTrtError, match="colour matrix"):
        YuvCoefficients.of("bt2020", False)  # type: ignore[arg-type]


# --------------------------------------------------------------- the kernel's math, in numpy


def linear_taps(dst: int, src: int) -> tuple[np.ndarray, ...]:
    """preprocess.cu ``linear_tap`` for every output index: s0, s1, w0, w1 (11-bit weights)."""
    inv = dst / src
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * (1.0 / inv) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    low, high = s < 0, s >= src - 1
    f[low | high] = 0
    s = np.where(low, 0, np.where(high, src - 1, s))
    s1 = np.minimum(s + 1, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    return s, s1, w0, w1


def kernel_model(nv12: np.ndarray, out_h: int, out_w: int, matrix: str, full: bool) -> np.ndarray:
    """``preprocess_nv12``'s per-pixel steps: convert each of the four bilinear taps (its luma,
    its 2x2 block's chroma pair) with the coefficients, blend with the integer weights ->
    (out_h, out_w, 3) uint8 BGR (before scale/offset and the channel swap)."""
    y, u, v = split_nv12(nv12)
    h, w = y.shape
    y0, y1, b0, b1 = linear_taps(out_h, h)
    x0, x1, a0, a1 = linear_taps(out_w, w)
    coef = YuvCoefficients.of(matrix, full)  # type: ignore[arg-type]

    def tap(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r, c = rows[:, None], cols[None, :]
        return yuv_to_bgr(y[r, c], u[r >> 1, c >> 1], v[r >> 1, c >> 1], coef).astype(np.int64)

    p00, p01, p10, p11 = tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1)
    a0, a1, b0, b1 = a0[None, :, None], a1[None, :, None], b0[:, None, None], b1[:, None, None]
    s0 = p00 * a0 + p01 * a1
    s1 = p10 * a0 + p11 * a1
    value = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2
    return np.minimum(value, 255).astype(np.uint8)


@pytest.mark.fast
@pytest.mark.parametrize("matrix,full", [("bt601", False), ("bt709", False), ("bt709", True)])
def test_kernel_math_equals_reference_then_cv2_resize(
    coco_mini: Path, matrix: str, full: bool
) -> None:
    """The math ``preprocess_nv12_*`` implements (a numpy model of it; the kernel itself runs
    only on the GPU machine) gives the bytes of the reference conversion followed by cv2.resize
    INTER_LINEAR, down to 300x300 (the SSD input) and up to 1.5x, on real photos.

    Measured: 300x300 equal byte for byte; at 1.5x up, max 1 on under 0.1% of the values. That
    1 is the packed kernel's sampling (``linear_tap``, shared) against cv2's upscaling: the same
    taps blended over the converted BGR frame differ from cv2.resize at the same places."""
    worst = 0
    for photo in photos(coco_mini)[:4]:
        nv12 = to_nv12(photo)
        h, w = nv12.shape[0] * 2 // 3, nv12.shape[1]
        full_bgr = nv12_to_bgr(nv12, matrix, full)  # type: ignore[arg-type]
        for out_h, out_w in ((300, 300), (h * 3 // 2, w * 3 // 2)):
            want = cv2.resize(full_bgr, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            got = kernel_model(nv12, out_h, out_w, matrix, full)
            worst = max(worst, int(np.abs(got.astype(int) - want).max()))
    assert worst <= 1, worst  # measured: 1
