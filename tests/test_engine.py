"""Engine builds with TensorRT-RTX, ahead of time on this CPU-only machine.

No machine here can execute a TensorRT engine (no GPU here; TensorRT-RTX does not support the
Hopper GPUs of the device machine), so these tests check parse, build, the files written and the
checks made when loading them, not inference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssd_trt.errors import MissingExtraError, SsdTrtError
from ssd_trt.precision.engine import (
    BuildOptions,
    EngineMetadata,
    build_engine,
    cached_engine_path,
    engine_cache_key,
    read_engine_bytes,
    sidecar_path,
)
from ssd_trt.precision.trt_compat import load_trt, normalize_cc

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is in the [rtx] extra")

MODELS = ("ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person")
TARGETS = ("sm86", "sm89")
NMS_ERROR = "has no NMS layer but"


@pytest.fixture(scope="module")
def rtx():
    return load_trt("rtx")


@pytest.fixture(scope="module")
def engines(exported, rtx, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """FP32 engines of both registry models for two GPU architectures, built once."""
    out = tmp_path_factory.mktemp("engines")
    built = {}
    for name in MODELS:
        onnx_path = exported(name, "none")
        for cc in TARGETS:
            engine = out / f"{name}_{cc}.engine"
            options = BuildOptions(max_batch=4, compute_capability=cc)
            build_engine(onnx_path, engine, options, trt_api=rtx)
            built[name, cc] = engine
    return built


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------ builds


@pytest.mark.parametrize("cc", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_aot_build_writes_engine_and_sidecar(engines, exported, rtx, name, cc):
    engine = engines[name, cc]
    data = engine.read_bytes()
    assert len(data) > 1_000_000  # weights are inside: the models are 13 and 18 MB of fp32

    side = json.loads(sidecar_path(engine).read_text())
    onnx_path = exported(name, "none")
    assert side["engine_bytes"] == len(data)
    assert side["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert side["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert side["precision"] == "fp32"
    assert side["input_name"] == "images"
    assert side["input_profile"] == {
        "min": [1, 3, 300, 300],
        "opt": [1, 3, 300, 300],
        "max": [4, 3, 300, 300],
    }
    assert side["outputs"] == ["boxes", "scores"]
    assert (side["trt_flavour"], side["trt_version"]) == ("tensorrt-rtx", trt.__version__)
    assert side["compute_capability"] == cc and side["aot"] is True
    assert side["gpu_name"] is None  # this machine has no GPU
    assert side["build_options"]["compute_capability"] == cc
    assert side["build_options"]["max_batch"] == 4
    assert side["build_seconds"] > 0 and side["created"].endswith("+00:00")
    meta = side["onnx_metadata"]
    assert meta["ssd_trt.nms"] == "none" and meta["ssd_trt.precision"] == "fp32"
    labels = json.loads(meta["ssd_trt.labels"])
    assert labels["1"] == "person" and (len(labels) == 1) == name.endswith("person")

    loaded = EngineMetadata.load(engine)
    assert loaded.to_json() == side and loaded.path == engine
    assert read_engine_bytes(engine) == data
    loaded.check_compatible(rtx, cc)
    loaded.check_compatible(rtx, None)  # GPU unknown: TensorRT itself decides at load time


def test_engines_differ_per_target(engines):
    for name in MODELS:
        a, b = (EngineMetadata.load(engines[name, cc]) for cc in TARGETS)
        assert a.onnx_sha256 == b.onnx_sha256
        assert a.engine_sha256 != b.engine_sha256


def test_deserialize_here_works_or_fails_with_tensorrts_error(engines, rtx):
    """This machine has no GPU: TensorRT-RTX must say so itself, not crash or misread the file."""
    engine = engines["ssdlite_mobilenet_v2_coco", "sm89"]
    log = rtx.logger()
    runtime = trt.Runtime(log)
    loaded = runtime.deserialize_cuda_engine(read_engine_bytes(engine))
    if loaded is not None:
        names = {loaded.get_tensor_name(i) for i in range(loaded.num_io_tensors)}
        assert names == {"images", "boxes", "scores"}
        config = rtx.runtime_config(loaded)  # RTX captures CUDA graphs itself
        assert config.cuda_graph_strategy == trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    else:
        assert log.errors, "deserialization failed without a TensorRT error"
        assert any("CUDA" in e or "compute capability" in e for e in log.errors), log.errors


def test_portable_build_without_target(exported, rtx, tmp_path):
    """With no target, TensorRT-RTX builds one engine for every GPU it supports."""
    engine = tmp_path / "portable.engine"
    meta = build_engine(exported(MODELS[1], "none"), engine, trt_api=rtx)
    assert meta.compute_capability == "portable" and engine.stat().st_size == meta.engine_bytes
    meta.check_compatible(rtx, "sm86")  # the cc check is left to TensorRT-RTX


# ------------------------------------------------------------------------------- bad inputs


def test_nms_graph_is_refused_on_rtx(exported, rtx, tmp_path):
    with pytest.raises(SsdTrtError) as err:
        build_engine(exported(MODELS[0], "onnx"), tmp_path / "x.engine", trt_api=rtx)
    assert NMS_ERROR in str(err.value) and "--nms none" in str(err.value)
    assert only_files(tmp_path) == []


def test_efficient_nms_is_refused_on_rtx_before_parsing(exported, rtx, tmp_path):
    # RTX's plugin registry has no EfficientNMS_TRT creator: the build says so in one line.
    creators = {c.name for c in trt.get_plugin_registry().all_creators}
    assert "EfficientNMS_TRT" not in creators
    with pytest.raises(SsdTrtError) as err:
        build_engine(exported(MODELS[1], "efficient"), tmp_path / "x.engine", trt_api=rtx)
    assert NMS_ERROR in str(err.value) and "\n" not in str(err.value)
    assert only_files(tmp_path) == []


def test_builder_failure_is_one_line(rtx):
    # trt.Builder raises a raw TypeError where it cannot start (full TensorRT without a GPU);
    # RTX raises the same for a logger it cannot take.
    with pytest.raises(SsdTrtError) as err:
        rtx.builder(None)
    assert "cannot create a builder" in str(err.value) and "\n" not in str(err.value)


def test_rtx_graph_strategy_is_the_runtimes(rtx):
    # TensorRT-RTX engines get RTX's own whole-graph capture, not user stream capture.
    assert (
        rtx.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        in rtx.trt.CudaGraphStrategy.__members__.values()
    )
    assert rtx.can_target_compute_capability and not rtx.has_nms_layer


def test_corrupt_onnx(rtx, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf" * 50)
    with pytest.raises(SsdTrtError, match=r"bad\.onnx is not a valid ONNX file"):
        build_engine(bad, tmp_path / "x.engine", BuildOptions(compute_capability="sm89"))
    assert only_files(tmp_path) == ["bad.onnx"]


def test_parser_error_is_one_line(rtx, tmp_path):
    """A well-formed ONNX that TensorRT cannot parse: its first parser error, on one line."""
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    node = helper.make_node("NoSuchOp", ["images"], ["out"], name="mystery")
    graph = helper.make_graph([node], "g", [images], [out])
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(SsdTrtError) as err:
        build_engine(path, tmp_path / "x.engine", BuildOptions(compute_capability="sm89"))
    message = str(err.value)
    assert message.startswith(f"TensorRT could not parse {path}: NoSuchOp mystery")
    assert "\n" not in message
    assert only_files(tmp_path) == ["unsupported.onnx"]


def test_precision_must_match_the_onnx(exported, rtx, tmp_path):
    with pytest.raises(SsdTrtError, match="is typed fp32 but precision fp16 was asked for"):
        build_engine(exported(MODELS[1], "none"), tmp_path / "x.engine", BuildOptions("fp16"))
    assert only_files(tmp_path) == []


@pytest.mark.parametrize(
    "options, message",
    [
        (BuildOptions(min_batch=2, opt_batch=1, max_batch=4), "1 <= min <= opt <= max"),
        (BuildOptions(precision="int4"), "unknown precision"),
        (BuildOptions(compute_capability="ampere"), "bad compute capability"),
        (BuildOptions(compute_capability="sm90"), "cannot build for sm90; it supports sm75"),
    ],
)
def test_bad_options(exported, rtx, tmp_path, options, message):
    with pytest.raises(SsdTrtError, match=message):
        build_engine(exported(MODELS[1], "none"), tmp_path / "x.engine", options)
    assert only_files(tmp_path) == []


# -------------------------------------------------------------------- loading what was built


@pytest.fixture
def engine_copy(engines, tmp_path) -> Path:
    src = engines["ssdlite_mobilenet_v2_person", "sm89"]
    dest = tmp_path / "model.engine"
    shutil.copyfile(src, dest)
    shutil.copyfile(sidecar_path(src), sidecar_path(dest))
    return dest


def test_truncated_engine(engine_copy):
    data = engine_copy.read_bytes()
    engine_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(SsdTrtError, match=r"model\.engine is truncated or corrupt \(\d+ bytes"):
        read_engine_bytes(engine_copy)
    engine_copy.write_bytes(b"")
    with pytest.raises(SsdTrtError, match="is empty"):
        read_engine_bytes(engine_copy)


def test_flipped_byte(engine_copy):
    data = bytearray(engine_copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine_copy.write_bytes(bytes(data))
    with pytest.raises(SsdTrtError) as err:
        read_engine_bytes(engine_copy)
    assert str(err.value) == (
        f"engine {engine_copy} is truncated or corrupt (sha256 mismatch); "
        "rebuild it with ssd-trt build"
    )


def test_missing_or_corrupt_sidecar(engine_copy, tmp_path):
    with pytest.raises(SsdTrtError, match="does not exist"):
        read_engine_bytes(tmp_path / "nothing.engine")
    side = sidecar_path(engine_copy)
    side.write_text('{"engine_bytes": 12')
    with pytest.raises(SsdTrtError, match=r"model\.engine\.json is missing or corrupt"):
        read_engine_bytes(engine_copy)
    side.write_text('{"engine_bytes": 12}')
    with pytest.raises(SsdTrtError, match="is missing or corrupt"):
        EngineMetadata.load(engine_copy)
    side.unlink()
    with pytest.raises(SsdTrtError, match="is missing or corrupt"):
        read_engine_bytes(engine_copy)


def edit_sidecar(engine: Path, **changes) -> EngineMetadata:
    side = sidecar_path(engine)
    data = json.loads(side.read_text())
    data.update(changes)
    side.write_text(json.dumps(data))
    return EngineMetadata.load(engine)


def test_version_mismatch(engine_copy, rtx):
    meta = edit_sidecar(engine_copy, trt_version="1.0.0.0")
    with pytest.raises(SsdTrtError) as err:
        meta.check_compatible(rtx, "sm89")
    assert str(err.value) == (
        f"engine {engine_copy} was built with TensorRT-RTX 1.0.0.0 but {rtx.name} is installed; "
        "rebuild it with ssd-trt build"
    )
    meta = edit_sidecar(engine_copy, trt_version=rtx.version, trt_flavour="tensorrt")
    with pytest.raises(SsdTrtError, match=f"built with TensorRT {rtx.version} but TensorRT-RTX"):
        meta.check_compatible(rtx, None)


def test_compute_capability_mismatch(engine_copy, rtx):
    meta = EngineMetadata.load(engine_copy)
    with pytest.raises(SsdTrtError, match="was built for sm89 but this GPU is sm90; rebuild"):
        meta.check_compatible(rtx, "9.0")
    meta = edit_sidecar(engine_copy, compute_capability="sm86")
    with pytest.raises(SsdTrtError, match="was built for sm86 but this GPU is sm89"):
        meta.check_compatible(rtx, "sm89")


# --------------------------------------------------------------------- caches and Ctrl-C


def test_timing_cache_is_not_used_by_rtx(exported, rtx, tmp_path, caplog):
    """TensorRT-RTX made timing caches no-ops (1.2); the build says so and writes none.

    Full TensorRT loads the file if present and saves it (atomically) after each build.
    """
    cache = tmp_path / "timing.cache"
    options = BuildOptions(compute_capability="sm89", timing_cache=cache)
    caplog.set_level(logging.INFO, logger="ssd_trt")
    build_engine(exported(MODELS[1], "none"), tmp_path / "a.engine", options, trt_api=rtx)
    assert "timing cache: not used (TensorRT-RTX" in caplog.text
    assert not cache.exists()


def test_cache_key(rtx):
    opts = BuildOptions(compute_capability="sm89")
    key = engine_cache_key("ab" * 32, opts, rtx.flavour, rtx.version, "sm89")
    assert len(key) == 64 and int(key, 16) >= 0
    same = [
        engine_cache_key("ab" * 32, opts, rtx.flavour, rtx.version, "8.9"),
        engine_cache_key(
            "ab" * 32,
            BuildOptions(compute_capability="sm89", verbose=True, timing_cache=Path("t")),
            rtx.flavour,
            rtx.version,
            "sm89",
        ),
    ]
    assert same == [key, key]
    different = {
        engine_cache_key("cd" * 32, opts, rtx.flavour, rtx.version, "sm89"),
        engine_cache_key("ab" * 32, BuildOptions(max_batch=2), rtx.flavour, rtx.version, "sm89"),
        engine_cache_key("ab" * 32, opts, "tensorrt", rtx.version, "sm89"),
        engine_cache_key("ab" * 32, opts, rtx.flavour, "1.0", "sm89"),
        engine_cache_key("ab" * 32, opts, rtx.flavour, rtx.version, "sm86"),
        engine_cache_key("ab" * 32, opts, rtx.flavour, rtx.version, None),
    }
    assert key not in different and len(different) == 6
    assert cached_engine_path(Path("/c"), key) == Path("/c") / f"{key}.engine"


CTRL_C_CHILD = """
import signal, sys, time
from pathlib import Path
from ssd_trt.precision.engine import BuildOptions, build_engine

# Python leaves SIGINT ignored when it starts as a background job (as under CI); a terminal's
# Ctrl-C raises KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)

def on_phase(name):
    print("building:", name, flush=True)
    # Ctrl-C arrives here, inside build_serialized_network. Short sleeps: TensorRT's worker
    # threads may take the signal, and Python only notices it between bytecodes.
    for _ in range(1200):
        time.sleep(0.05)

options = BuildOptions(compute_capability="sm89")
build_engine(Path(sys.argv[1]), Path(sys.argv[2]), options, on_phase=on_phase)
print("finished", flush=True)
"""


def test_ctrl_c_during_build_leaves_nothing(exported, tmp_path):
    """A real SIGINT while TensorRT is optimizing: the build stops, no file is left behind.

    The child waits inside TensorRT's first progress callback, so the signal always lands during
    build_serialized_network (builds take ~1 s here: a timer would be racy).
    """
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, str(exported(MODELS[0], "none")), out / "m.engine"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("building:"), line + child.stderr.read()
        start = time.monotonic()
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert time.monotonic() - start < 30  # cancelled, not waited out
    assert child.returncode != 0 and "finished" not in stdout
    assert "KeyboardInterrupt" in stderr
    assert only_files(out) == []


# ------------------------------------------------------------------------------ the seam


def test_load_trt(rtx):
    assert (rtx.flavour, rtx.version, rtx.extra) == ("tensorrt-rtx", trt.__version__, "rtx")
    assert rtx.trt is trt and not rtx.has_nms_layer and not rtx.has_timing_cache
    assert rtx.name == f"TensorRT-RTX {trt.__version__}"
    assert {"sm75", "sm86", "sm89", "sm120"} <= set(rtx.compute_capabilities())
    assert load_trt("tensorrt-rtx").flavour == "tensorrt-rtx"
    auto = load_trt()
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        assert auto.flavour == "tensorrt-rtx"
        with pytest.raises(MissingExtraError, match=r"pip install 'ssd-trt\[tensorrt\]'"):
            load_trt("tensorrt")
    else:
        assert auto.flavour == "tensorrt" and auto.has_nms_layer
    with pytest.raises(SsdTrtError, match="unknown TensorRT flavour"):
        load_trt("onnxruntime")


def test_network_is_strongly_typed(rtx):
    builder = trt.Builder(rtx.logger())
    network = rtx.create_network(builder)
    assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    config = builder.create_builder_config()
    rtx.set_workspace(config, 1 << 28)
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 1 << 28
    rtx.set_compute_capability(config, "8.6")
    assert config.num_compute_capabilities == 1
    assert config.get_compute_capability(0) == trt.ComputeCapability.SM86


@pytest.mark.parametrize(
    "text, cc", [("sm89", "sm89"), ("SM_86", "sm86"), ("8.9", "sm89"), ("12.0", "sm120")]
)
def test_normalize_cc(text, cc):
    assert normalize_cc(text) == cc
