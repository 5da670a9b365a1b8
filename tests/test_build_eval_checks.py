"""Options checked before long work, and results that never pretend (issue 17): ``build`` of a
model name leaves the working directory alone and rejects bad options before any fetch or
export; ``eval`` without ground truth is an error and undefined metrics are n/a; ``--classes``
outside the model's labels and a backend that cannot run here fail in one line before any
export; calibration bars have totals; the calibration cache keeps a slot per image set; the Ray
Data job passes no deprecated Ray arguments."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import error_line
from conftest import run_cli as cli

from ssd_trt.errors import SsdTrtError
from ssd_trt.store import ArtifactStore, Calibration

COCO = "ssdlite_mobilenet_v2_coco"
ANNOTATIONS = "instances_train2017_small.json"


@pytest.fixture(scope="module")
def coco_onnx(model_cache) -> Path:
    """The default export, from the shared cache (exported once across sessions)."""
    return ArtifactStore(model_cache).onnx(COCO)


@pytest.fixture(scope="module")
def photos(coco_mini) -> list[Path]:
    return sorted((coco_mini / "images").glob("*.jpg"))


def cli_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``ssd-trt ARGS`` run from ``cwd``, as a user in their project folder."""
    return subprocess.run(
        [sys.executable, "-m", "ssd_trt.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=900,
    )


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------ build


def test_build_model_name_exports_into_the_cache_not_the_working_directory(model_cache, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    work = tmp_path / "project"
    work.mkdir()
    mine = work / f"{COCO}.onnx"  # the user's own file of that name
    mine.write_bytes(b"the user's own model")
    proc = cli_in(
        work,
        "build",
        COCO,
        "--trt",
        "tensorrt-rtx",
        "--compute-capability",
        "sm89",
        "--max-batch",
        "1",
        "--cache-dir",
        str(model_cache),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert mine.read_bytes() == b"the user's own model"
    assert files_in(work) == [f"{COCO}.engine", f"{COCO}.engine.json", f"{COCO}.onnx"]
    meta = json.loads((work / f"{COCO}.engine.json").read_text())
    built_from = Path(meta["onnx_path"])
    assert built_from.is_relative_to(model_cache) and built_from.is_file(), built_from
    assert meta["onnx_metadata"]["ssd_trt.nms"] == "none"  # what RTX can run


def test_build_tf_graph_exports_into_the_cache_once(registry_graphs, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    graph = tmp_path / "graphs" / "person.pb"  # a user's frozen graph, away from the cache
    graph.parent.mkdir()
    graph.write_bytes(registry_graphs["ssdlite_mobilenet_v2_person"].read_bytes())
    work, cache = tmp_path / "project", tmp_path / "cache"
    work.mkdir()
    args = ("build", str(graph), "--trt", "tensorrt-rtx", "--compute-capability", "sm86")
    first = cli_in(work, *args, "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr[-3000:]
    assert files_in(work) == ["person.engine", "person.engine.json"]
    assert files_in(graph.parent) == ["person.pb"]
    (export,) = (cache / "onnx" / "graphs").glob("person.*.onnx")
    assert "exporting" in first.stderr
    second = cli_in(work, *args, "--cache-dir", str(cache), "-o", "again.engine")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "exporting" not in second.stderr  # the same graph: the cached export
    assert json.loads((work / "again.engine.json").read_text())["onnx_path"] == str(export)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--compute-capability", "banana"), "bad compute capability 'banana'"),
        (("--compute-capability", "sm90"), "cannot build for sm90; it supports sm75"),
        (("--compute-capability", "sm89", "--nms", "onnx"), "has no NMS layer"),
        (("--int8", "--calib-images", "no-such-folder"), "calibration images: no-such-folder"),
        (("--min-batch", "4", "--max-batch", "2"), "1 <= min <= opt <= max"),
    ],
)
def test_build_rejects_bad_options_before_any_fetch_or_export(options, message, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra is in .[all]; CI installs it")
    work, cache = tmp_path / "project", tmp_path / "cache"
    work.mkdir()
    proc = cli_in(work, "build", COCO, "--trt", "tensorrt-rtx", "--cache-dir", str(cache), *options)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in error_line(proc)
    assert files_in(work) == []  # no ONNX, no engine
    assert not cache.exists() or files_in(cache) == []  # nothing fetched, nothing exported


# ------------------------------------------------------------------------------------- eval


def _eval(model: str, annotations: Path, images: Path, *more: str) -> subprocess.CompletedProcess:
    args = ("--coco-annotations", str(annotations), "--images", str(images), *more)
    return cli("eval", model, *args)


def test_eval_without_ground_truth_is_an_error_not_zero(coco_mini, tmp_path):
    data = json.loads((coco_mini / ANNOTATIONS).read_text())
    cache = tmp_path / "cache"
    for field, message in (("annotations", "has no annotations"), ("images", "lists no images")):
        path = tmp_path / f"no-{field}.json"
        path.write_text(json.dumps({**data, field: []}))
        proc = _eval(COCO, path, coco_mini / "images", "--cache-dir", str(cache))
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert message in error_line(proc) and "AP" not in proc.stdout
    assert not cache.exists()  # refused before any model work


def test_eval_with_no_box_on_its_images_is_an_error(coco_onnx, coco_mini, tmp_path):
    data = json.loads((coco_mini / ANNOTATIONS).read_text())
    others = [{**a, "image_id": -1} for a in data["annotations"]]  # boxes of no listed image
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({**data, "annotations": others}))
    proc = _eval(str(coco_onnx), path, coco_mini / "images")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "none of the annotated images has a ground-truth box" in error_line(proc)


def test_eval_metrics_without_objects_of_a_size_are_na(coco_onnx, coco_mini, tmp_path):
    data = json.loads((coco_mini / ANNOTATIONS).read_text())
    large = [a for a in data["annotations"] if a["area"] > 96**2]  # no small, no medium object
    assert large
    path = tmp_path / "large.json"
    path.write_text(json.dumps({**data, "annotations": large}))
    out = tmp_path / "eval.json"
    proc = _eval(str(coco_onnx), path, coco_mini / "images", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())["precisions"]["fp32"]["metrics"]
    assert metrics["APs"] is None and metrics["APm"] is None, metrics
    assert metrics["AP"] is not None and metrics["AP"] > 0 and metrics["APl"] is not None
    row = next(line for line in proc.stdout.splitlines() if line.startswith("fp32"))
    assert row.split()[4:6] == ["n/a", "n/a"], row  # APs, APm


def test_eval_int8_with_missing_calibration_images_fails_first(coco_onnx, coco_mini, tmp_path):
    proc = _eval(
        str(coco_onnx),
        coco_mini / ANNOTATIONS,
        coco_mini / "images",
        "--precision",
        "fp32,int8",
        "--calib-images",
        str(tmp_path / "frames"),
        "-v",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "calibration images:" in error_line(proc)
    assert "evaluating" not in proc.stderr  # the fp32 run never started


# ---------------------------------------------------------------------------------- classes


def test_unknown_class_is_one_line_naming_the_choices(coco_onnx, photos):
    from ssd_trt import Detector

    for bad in (["999"], [999], ["person", "unicorn"], [0]):
        with pytest.raises(SsdTrtError) as exc:
            Detector(coco_onnx, "cpu", classes=bad)
        text = str(exc.value)
        assert "\n" not in text and "ids 1-90" in text and "person, bicycle" in text, text
        assert "class_12" not in text  # the label map's unused ids are no choice to offer
    with Detector(coco_onnx, "cpu", classes=["person", "2"]) as det:
        assert det.class_ids == {1, 2}
    proc = cli("detect", str(photos[0]), "--model", str(coco_onnx), "--classes", "999")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unknown class '999'" in error_line(proc)


# ---------------------------------------------------------------------------------- backend


def test_backend_that_cannot_run_here_fails_before_any_export(photos, tmp_path):
    from ssd_trt.precision.trt_compat import local_gpu
    from ssd_trt.runtime.ort import available_providers

    providers = available_providers()
    cases = [
        (name, "pip install 'ssd-trt[gpu]'")
        for name, provider in (
            ("cuda", "CUDAExecutionProvider"),
            ("onnxruntime-cuda", "CUDAExecutionProvider"),
            ("onnxruntime-tensorrt", "TensorrtExecutionProvider"),
        )
        if provider not in providers
    ]
    if local_gpu() is None:
        cases.append(("tensorrt", ""))
    if not cases:
        pytest.skip("every backend can run here")
    cache = tmp_path / "cache"  # empty: an export would have to fetch the model first
    for backend, ending in cases:
        args = ("detect", str(photos[0]), "--model", COCO, "--cache-dir", str(cache))
        proc = cli(*args, "--backend", backend)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert error_line(proc).endswith(ending), proc.stderr
        assert not cache.exists() or files_in(cache) == [], backend


# ------------------------------------------------------------------------------ calibration


def test_calibration_bars_show_their_total(coco_onnx, photos, capsys):
    import cv2

    from ssd_trt.contract import ModelInfo
    from ssd_trt.precision.quantize import calibrate

    logger = logging.getLogger("ssd_trt")
    level = logger.level
    logger.setLevel(logging.INFO)  # bars show where progress is shown (the CLI's default)
    try:
        images = [cv2.imread(str(p)) for p in photos[:4]]
        info = ModelInfo.from_onnx(coco_onnx)
        calibrate(coco_onnx, images, info.preprocess, batch=2)
    finally:
        logger.setLevel(level)
    err = capsys.readouterr().err
    for name in ("calibration pass 1/2", "calibration pass 2/2"):
        assert name in err, err
    assert "100%" in err and "| 2/2 [" in err, err  # 2 batches of 2 images, known up front


def test_calibration_cache_keeps_a_slot_per_image_set(coco_onnx, photos, tmp_path, caplog):
    from ssd_trt.precision.quantize import CALIBRATION_SLOTS, CalibrationCache, load_slots

    sets = {}
    for name, chosen in (("frames", photos[:4]), ("photos", photos[4:8])):
        sets[name] = tmp_path / name
        sets[name].mkdir()
        for p in chosen:
            (sets[name] / p.name).write_bytes(p.read_bytes())
    store = ArtifactStore(tmp_path / "cache")
    out = tmp_path / "prepared"

    def prepared(images: str | None) -> bool:
        """Whether the INT8 conversion calibrated (False: a cached slot served)."""
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ssd_trt"):
            calibration = Calibration(images=images, count=4, batch=4)
            store.prepared(coco_onnx, "int8", calibration, out_dir=out)
        return any("calibrating on" in r.getMessage() for r in caplog.records)

    # compare on frames, eval on photos, and back: each set calibrates once.
    assert prepared(str(sets["frames"]))
    assert prepared(str(sets["photos"]))
    assert not prepared(str(sets["frames"]))
    assert not prepared(str(sets["photos"]))
    (cache,) = out.glob("*.calib.json")
    slots = load_slots(cache)
    assert len(slots) == 2 and slots[0].images == 4
    # No images: the model's most recently used slot (photos), as before slots.
    assert not prepared(None)
    assert CalibrationCache.load(cache).image_set == slots[0].image_set
    # A file from before slots (one cache object) is one slot.
    cache.write_text(json.dumps(slots[1].__dict__))
    assert not prepared(str(sets["frames"]))
    assert len(load_slots(cache)) == 1
    # At most CALIBRATION_SLOTS: the least recently used go.
    for i in range(CALIBRATION_SLOTS + 2):
        fake = CalibrationCache(f"other-model-{i}", "entropy", 1, {"x": 1.0}, f"set-{i}")
        fake.save(cache)
    kept = load_slots(cache)
    assert len(kept) == CALIBRATION_SLOTS and kept[0].key == f"other-model-{CALIBRATION_SLOTS + 1}"
    assert not any(s.key == slots[1].key for s in kept)


# -------------------------------------------------------------------------------------- Ray


def test_ray_batch_job_passes_no_deprecated_ray_arguments(coco_onnx, tmp_path):
    from ssd_trt.scale.cluster import LOOPBACK_ENV

    os.environ.update(LOOPBACK_ENV)
    ray = pytest.importorskip("ray", reason="Ray is in the [ray] extra")
    from ssd_trt.scale.batch import RayBatchJob, detection_rows
    from ssd_trt.scale.cluster import ModelFiles, connect

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    ray_log = logging.getLogger("ray.data")
    collect = Collect()
    ray_log.addHandler(collect)
    session = connect(num_cpus=1)
    try:
        job = RayBatchJob(sources=("x",), output_dir=tmp_path, model=str(coco_onnx))
        ds = ray.data.from_items([{"task": "{}"}])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Ray's deprecation warnings become failures
            detection_rows(ds, ModelFiles.resolve(coco_onnx), job, actors=1)
    finally:
        ray_log.removeHandler(collect)
        session.close()
    assert not [m for m in collect.messages if "deprecated" in m], collect.messages
