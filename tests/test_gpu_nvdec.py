"""NVDEC on the GPU machine (issue 19), marked ``gpu``: frames that PyNvVideoCodec decodes into
GPU memory against the CPU decode of the same file.

* H.264 decoding is bit-exact by the standard: NVDEC's NV12 planes must equal FFmpeg's (PyAV).
* The only difference left is the YUV-to-BGR conversion: colour.nv12_to_bgr (the kernel's math)
  is swscale's fixed-point conversion, which OpenCV's decode uses, so the two give the same bytes
  (on the CPU machine: PyAV's NV12 through nv12_to_bgr equals OpenCV's frames of both files).
  On the H200 before that change (float math, rounded): max 3, mean ~1.1-1.2.
* Detections with score >= 0.3 from NVDEC frames (read in place by the fast path) against those
  from OpenCV's frames: issue 19 asks for the same labels, boxes within 2 px, scores within 0.02.
  With the float conversion the H200 missed that (worst 0.026 on these frames, 0.043 over the
  whole 720p file); with equal pixels only batching can move a score.

Test data as in test_gpu_fastpath.py ($SSD_TRT_GPU_DATA: coco_none.onnx, bikes.mp4, and
video_720p.mp4 where benchmarks/gpu_machine.sh links it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_nv12 import ffmpeg_nv12
from test_nvdec import _opencv_frames

from ssd_trt.precision.trt_compat import local_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(local_gpu() is None, reason="needs an NVIDIA GPU and cuda-python"),
]
FRAMES = 60


@pytest.fixture(scope="module", autouse=True)
def _nvdec_loads() -> None:
    pytest.importorskip("PyNvVideoCodec", reason="needs pip install 'ssd-trt[gpu]'")


@pytest.fixture(scope="module", params=["bikes.mp4", "video_720p.mp4"])
def video(request, gpu_data: Path) -> Path:
    import cv2

    path = gpu_data / request.param
    if not path.is_file():
        pytest.skip(f"no {request.param} in SSD_TRT_GPU_DATA")
    if request.param == "video_720p.mp4" and cv2.getVersionMajor() < 5:
        # The file declares BT.709; OpenCV 4 decodes every stream as BT.601 (opencv#20513).
        pytest.skip("OpenCV 4 reads this BT.709 file as BT.601: no like-for-like reference")
    return path


def _nvdec_frames(path: Path, count: int, own_stream: bool = True):
    """Each NVDEC frame in display order, while its surface is still locked (the caller uses it
    before asking for the next one: surfaces go back to the decoder). ``own_stream``: the
    decoder copies pictures out on a stream of its own, which each frame names (the default);
    else on the legacy default stream, synchronised per picture (what ran on the H200 first)."""
    from ssd_trt.video.nvdec import NvdecSource, nvdec_or_cpu

    source = NvdecSource(str(path), decoder=nvdec_or_cpu(own_stream=own_stream))
    try:
        assert source.decoder_name == "nvdec"
        for _ in range(count):
            frame = source.read()
            if frame is None:
                return
            assert frame.device is not None and frame.device.layout == "nv12"
            assert (frame.device.stream is not None) == own_stream
            yield frame
    finally:
        source.close()


@pytest.mark.parametrize("own_stream", [True, False], ids=["own-stream", "legacy-stream"])
def test_nvdec_planes_are_ffmpegs_and_convert_like_opencv(video: Path, own_stream: bool) -> None:
    from ssd_trt.colour import nv12_to_bgr
    from ssd_trt.runtime import cuda

    cpu_nv12 = ffmpeg_nv12(video, FRAMES)
    expected = _opencv_frames(video, FRAMES)
    worst, means = 0, []
    for i, frame in enumerate(_nvdec_frames(video, FRAMES, own_stream)):
        dev = frame.device
        h, w = dev.height, dev.width
        planes = cuda.download_rows(dev.planes, (h, h // 2), w, after=dev.stream)
        assert np.array_equal(planes, cpu_nv12[i]), f"frame {i}: NVDEC's planes are not FFmpeg's"
        assert dev.matrix is not None
        bgr = nv12_to_bgr(planes, dev.matrix, dev.full_range)
        diff = np.abs(bgr.astype(np.int16) - expected[i])
        worst, means = max(worst, int(diff.max())), [*means, float(diff.mean())]
        assert np.array_equal(frame.image, bgr)  # what drawing downloads
    assert len(means) == FRAMES
    print(f"{video.name}: NV12->BGR against OpenCV, max {worst}, mean {np.mean(means):.3f}")
    assert worst == 0


def _unmatched(a, b, box_px: float) -> tuple[list[float], list[float]]:
    """Scores of ``a``'s detections that ``b`` has (same label, box within ``box_px``): their
    score differences; and the scores of those it lacks."""
    diffs, missing = [], []
    for j in range(len(a)):
        same = [
            k
            for k in range(len(b))
            if b.labels[k] == a.labels[j] and np.abs(b.boxes[k] - a.boxes[j]).max() <= box_px
        ]
        if same:
            diffs.append(min(abs(float(b.scores[k] - a.scores[j])) for k in same))
        else:
            missing.append(float(a.scores[j]))
    return diffs, missing


def test_nvdec_frames_give_opencv_frames_detections(gpu_data: Path, video: Path) -> None:
    """Issue 19's bound: every detection with score >= 0.3 on either side found on the other
    (same label, box within 2 px) with its score within 0.02. Its twin may score just under
    the cut (0.3005 against 0.2995 from the batch-1 and batch-64 networks): the other side is
    searched down to 0.28, the cut less the tolerance."""
    from ssd_trt import Detector

    cut, tolerance = 0.3, 0.02
    expected = _opencv_frames(video, FRAMES)
    with Detector(gpu_data / "coco_none.onnx", "cuda", score_threshold=cut - tolerance) as gpu:
        want = gpu.detect(expected)
        got = [gpu.detect(frame.detector_input) for frame in _nvdec_frames(video, FRAMES)]
    assert len(got) == FRAMES and sum(len(w) for w in want) > 0
    diffs, lost = [], []
    for w, g in zip(want, got, strict=True):
        for a, b in ((w, g), (g, w)):
            d, missing = _unmatched(a[a.scores >= cut], b, 2.0)
            diffs, lost = diffs + d, lost + missing
    print(f"{video.name}: {len(diffs)} matched, worst score difference {max(diffs):.4f}; "
          f"without a twin: {lost}")  # fmt: skip
    assert max(diffs) <= tolerance and not lost


def test_decoders_of_one_factory_ask_the_capabilities_once(video: Path) -> None:
    """GetDecoderCaps makes and destroys a CUDA context per call: the second stream of a codec
    takes the first one's answer."""
    from ssd_trt.video.demux import Demuxer
    from ssd_trt.video.nvdec import NvdecDecoder, nvdec_or_cpu

    make = nvdec_or_cpu()
    demuxer = Demuxer(str(video))
    try:
        first, second = make(demuxer.info), make(demuxer.info)
        assert isinstance(first, NvdecDecoder) and isinstance(second, NvdecDecoder)
        assert second.caps is first.caps and first.caps["supported"]
        first.close()
        second.close()
    finally:
        demuxer.close()


def test_concurrent_decoders_on_their_own_streams_give_ffmpegs_planes(video: Path) -> None:
    """Eight decoders in eight threads, copies on their own streams and never waited for while
    decoding. Each thread downloads every picture at once (the copy may still be in flight: the
    download must order itself after the decoder's stream) and keeps it locked; after all are
    done every kept picture is downloaded again. Both must equal FFmpeg's planes."""
    import threading

    from ssd_trt.runtime import cuda

    expected = ffmpeg_nv12(video, FRAMES)
    kept: list[list] = [[] for _ in range(8)]
    wrong: list[str] = []
    errors: list[BaseException] = []

    def planes(frame) -> np.ndarray:
        dev = frame.device
        return cuda.download_rows(dev.planes, (dev.height, dev.height // 2), dev.width,
                                  after=dev.stream)  # fmt: skip

    def decode(i: int) -> None:
        try:
            for k, frame in enumerate(_nvdec_frames(video, FRAMES)):
                if not np.array_equal(planes(frame), expected[k]):
                    wrong.append(f"thread {i} frame {k}, read at once")
                kept[i].append(frame)
        except BaseException as exc:  # reported on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for i, frames in enumerate(kept):
        assert len(frames) == FRAMES
        wrong += [f"thread {i} frame {k}, kept" for k, f in enumerate(frames)
                  if not np.array_equal(planes(f), expected[k])]  # fmt: skip
    assert wrong == []


def test_rtsp_h264_decoded_by_nvdec_gives_the_files_pictures(
    tmp_path: Path, gpu_data: Path
) -> None:
    """A camera's stream on NVDEC: bikes.mp4's H.264 (High, B-frames) served over RTSP by the
    tests' Python server (the GPU machine has no GStreamer; the CPU tests check that server
    against FFmpeg), read by NvdecSource with the NVDEC decoder, no CPU fallback: every picture
    equals OpenCV's decode of the file (same bytes: the conversion is OpenCV's)."""
    from test_nvdec import h264_camera, rtsp_h264_pictures

    from ssd_trt.video.nvdec import NvdecDecoder

    video = gpu_data / "bikes.mp4"
    with h264_camera(tmp_path, video, "python") as url:
        got = rtsp_h264_pictures(url, NvdecDecoder, FRAMES)
    want = _opencv_frames(video, FRAMES)
    assert [i for i in range(FRAMES) if not np.array_equal(got[i], want[i])] == []


def test_rtsp_h264_on_nvdec_reconnects_and_starts_over_cleanly(gpu_data: Path) -> None:
    """Issue 19's live behaviour on the GPU: the camera dies and comes back; the NVDEC source
    reconnects, and the new session's pictures are the file's from its first (a fresh decoder,
    no stale surface)."""
    from test_nvdec import rtsp_h264_across_a_restart

    from ssd_trt.video.nvdec import NvdecDecoder

    rtsp_h264_across_a_restart(gpu_data / "bikes.mp4", NvdecDecoder)


def test_a_slow_output_drops_only_its_own_nvdec_cameras_stale_frames(gpu_data: Path) -> None:
    """Stale frames dropped per stream on NVDEC: the dropped frames' surfaces go back to their
    decoder (on its decoding thread) while the fast path reads the kept ones in place."""
    from test_nvdec import two_cameras_one_slow_output

    from ssd_trt import Detector
    from ssd_trt.video.nvdec import NvdecDecoder

    with Detector(gpu_data / "coco_none.onnx", "cuda", score_threshold=0.3) as gpu:
        two_cameras_one_slow_output(gpu_data / "bikes.mp4", NvdecDecoder, gpu)
