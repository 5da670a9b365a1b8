"""--decode auto|cpu|nvdec: the choice per source (video/decode.py) and its one-line refusals,
checked before any model work (the CLI tests pass a model path that does not exist)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from conftest import error_line, run_cli

from ssd_trt.errors import SsdTrtError
from ssd_trt.video.decode import (
    backend_on_gpu,
    choose_decode,
    choose_for_sources,
    nvdec_missing,
    shared_decoders,
    source_not_nvdec,
)

MISSING = nvdec_missing()  # None on a GPU machine with pip install 'ssd-trt[gpu]'
NO_MODEL = "/nonexistent/model.onnx"


def never() -> bool:
    raise AssertionError("the backend was resolved although an earlier check decided")


@pytest.mark.fast
def test_cpu_is_cpu() -> None:
    assert choose_decode("cpu", never, "clip.mp4").kind == "cpu"


@pytest.mark.fast
def test_camera_and_images_decode_on_the_cpu(coco_mini: Path) -> None:
    assert "camera 0" in choose_decode("auto", never, 0).reason
    assert "camera 2" in choose_decode("auto", never, "2").reason
    for images in (coco_mini / "images", coco_mini / "images" / "*.jpg", "x/photo.JPG"):
        choice = choose_decode("auto", never, str(images))
        assert choice.kind == "cpu" and "images" in choice.reason
    assert "http streams" in choose_decode("auto", never, "http://cam/video").reason
    for nvdec_source in ("rtsp://cam:554/stream", "clip.mp4", None):
        assert source_not_nvdec(nvdec_source) is None


@pytest.mark.fast
@pytest.mark.skipif(MISSING is None, reason="PyNvVideoCodec loads here")
def test_auto_without_pynvvideocodec_is_cpu_and_says_why(bikes_file: str) -> None:
    choice = choose_decode("auto", never, bikes_file)  # the package is checked first
    assert choice.kind == "cpu"
    assert "PyNvVideoCodec" in choice.reason and "ssd-trt[gpu]" in choice.reason


@pytest.mark.fast
@pytest.mark.skipif(MISSING is None, reason="PyNvVideoCodec loads here")
def test_nvdec_without_pynvvideocodec_is_refused() -> None:
    with pytest.raises(SsdTrtError, match=r"needs PyNvVideoCodec.*ssd-trt\[gpu\]"):
        choose_decode("nvdec", True, "rtsp://cam/stream")


@pytest.mark.fast
def test_nvdec_refuses_a_camera_or_images(coco_mini: Path) -> None:
    with pytest.raises(SsdTrtError, match="reads video files and RTSP streams: camera 0"):
        choose_decode("nvdec", True, 0)
    with pytest.raises(SsdTrtError, match="--decode cpu"):
        choose_decode("nvdec", True, str(coco_mini / "images"))


@pytest.mark.fast
def test_cpu_backend_is_not_on_the_gpu() -> None:
    assert backend_on_gpu("cpu") is False
    if MISSING is not None:
        assert choose_for_sources("auto", "cpu", ["a.mp4", 0, None])[0].kind == "cpu"


@pytest.mark.skipif(MISSING is not None, reason=f"needs PyNvVideoCodec loadable ({MISSING})")
def test_with_everything_nvdec_is_chosen() -> None:
    """GPU machine with the [gpu] extra: files and RTSP streams go to NVDEC."""
    choice = choose_decode("auto", True, "rtsp://cam/stream")
    assert choice == choose_decode("auto", True, "clip.mp4")
    assert choice.kind == choose_decode("nvdec", True, "a.mp4").kind == "nvdec"
    with pytest.raises(SsdTrtError, match=r"GPU fast path.*ssd-trt\[gpu\]"):
        choose_decode("nvdec", False, "clip.mp4")


@pytest.mark.fast
def test_sources_share_one_nvdec_factory_only_where_one_decodes_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Opening many NVDEC streams asks the decoder's capabilities once per codec: open_sources
    hands one factory to every NVDEC source; all-CPU runs make none. NvdecSource is replaced
    by a recorder (it would need PyNvVideoCodec); the sharing is what is tested."""
    from ssd_trt.video import app, nvdec

    assert shared_decoders(["cpu", "cpu"]) is None and shared_decoders([]) is None
    given: list = []

    class Recorder:
        def __init__(self, spec: str, *, reconnect, decoder) -> None:
            given.append(decoder)

    monkeypatch.setattr(nvdec, "NvdecSource", Recorder)
    specs = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    app.open_sources(specs, decode=["nvdec", "nvdec"])
    assert len(given) == 2 and callable(given[0]) and given[0] is given[1]
    monkeypatch.setenv("SSD_TRT_NVDEC_STREAM", "sideways")
    with pytest.raises(SsdTrtError, match="SSD_TRT_NVDEC_STREAM='sideways': use own"):
        shared_decoders(["nvdec"])


@pytest.fixture
def bikes_file(tmp_path: Path) -> str:
    """A path that names a video file (the choice needs no frames of it)."""
    return str(tmp_path / "bikes.mp4")


# ------------------------------------------------------------------------------------- CLI


@pytest.mark.fast
@pytest.mark.parametrize("backend", ["cpu", "cuda", "auto"])
def test_cli_nvdec_fails_first_naming_the_gpu_extra(backend: str) -> None:
    proc = run_cli("detect", "clip.mp4", "--model", NO_MODEL, "--backend", backend,
                   "--decode", "nvdec", "--no-show")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    if MISSING is None:  # a GPU machine: the GPU backends reach "not available"
        assert "nvdec" in line
    else:
        assert "--decode nvdec needs" in line and "pip install 'ssd-trt[gpu]'" in line
    assert "model" not in line  # the decode check comes before the model


@pytest.mark.fast
def test_cli_webcam_and_images_refuse_nvdec(coco_mini: Path) -> None:
    proc = run_cli("webcam", "0", "--model", NO_MODEL, "--decode", "nvdec", "--no-show")
    assert proc.returncode == 2 and "camera 0" in error_line(proc)
    proc = run_cli("detect", str(coco_mini / "images"), "--model", NO_MODEL, "--decode",
                   "nvdec", "--no-show")  # fmt: skip
    assert proc.returncode == 2 and "holds images" in error_line(proc)
    proc = run_cli("detect", "a.mp4", "b.mp4", "--output-dir", "out", "--model", NO_MODEL,
                   "--decode", "nvdec")  # fmt: skip
    assert proc.returncode == 2 and "--decode nvdec" in error_line(proc)
    proc = run_cli("detect", "a.mp4", "--decode", "gpu")
    assert proc.returncode == 2 and "invalid choice: 'gpu'" in proc.stderr


@pytest.fixture(scope="session")
def real_pynvvideocodec(model_cache: Path) -> Path:
    """NVIDIA's PyNvVideoCodec 2.2.4 wheel from PyPI, unpacked (as pip would install it)."""
    from ssd_trt.model.fetch import pip_download

    target = model_cache / "pynvvideocodec-2.2.4"
    if not (target / "PyNvVideoCodec").is_dir():
        wheel = pip_download("pynvvideocodec==2.2.4", model_cache / "wheels-pynvvideocodec")
        tmp = target.with_name(target.name + ".tmp")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        tmp.replace(target)
    return target


@pytest.mark.skipif(MISSING is None, reason="PyNvVideoCodec loads here")
def test_cli_with_pynvvideocodec_installed_but_no_nvidia_driver(
    real_pynvvideocodec: Path, bikes_video: Path
) -> None:
    """The real wheel raises on import where NVIDIA's libraries are missing: --decode nvdec is
    one line that says so, and auto falls back to the CPU and logs why."""
    env = {"PYTHONPATH": f"{real_pynvvideocodec}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli("detect", str(bikes_video), "--model", NO_MODEL, "--backend", "cpu",
                   "--decode", "nvdec", "--no-show", env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert "PyNvVideoCodec does not load" in line and "ssd-trt[gpu]" in line
    proc = run_cli("detect", str(bikes_video), "--model", NO_MODEL, "--no-show", env=env)
    assert proc.returncode == 2  # now the missing model, after the decode choice was logged
    assert "decode" in proc.stderr and "cpu (PyNvVideoCodec does not load" in proc.stderr
    assert "nonexistent" in error_line(proc)
