"""``ssd-trt triton-repo``: each config.pbtxt parses with the model_config protobuf tritonclient
ships, and its names, types and dims match the ONNX. No Triton server that loads ONNX Runtime or
TensorRT models can run here, so the server side is not exercised."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import error_line, optional, run_cli
from google.protobuf import text_format

from ssd_trt.contract import read_onnx_metadata

onnx = optional("onnx", "export")

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient is in the [triton] extra"
)

COCO, PERSON = "ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person"
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
}


def parse(folder: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def check_against_onnx(config, graph_path: Path) -> None:
    """Every ONNX input and output appears with its type and its dims after the batch dim."""
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    dtype = model_config_pb2.DataType.Name
    for ours, theirs in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in ours] == [v.name for v in theirs]
        for t, v in zip(ours, theirs, strict=True):
            tt = v.type.tensor_type
            assert dtype(t.data_type) == ONNX_TYPES[tt.elem_type], t.name
            dims = [d.dim_value or -1 for d in tt.shape.dim]
            assert dims[0] == -1  # the batch
            if len(dims) > 1:
                assert list(t.dims) == dims[1:], t.name
            else:  # [N]: one dim reshaped away, as Triton requires
                assert list(t.dims) == [1] and list(t.reshape.shape) == []


@pytest.mark.parametrize(("name", "nms"), [(COCO, "onnx"), (COCO, "none"), (PERSON, "onnx")])
def test_onnx_repository(tmp_path, exported, name, nms) -> None:
    graph = exported(name, nms)
    proc = run_cli("triton-repo", str(graph), str(tmp_path / "repo"), "--max-batch", "16")
    assert proc.returncode == 0, proc.stderr
    name = read_onnx_metadata(graph).get("ssd_trt.model") or graph.stem  # the default
    folder = tmp_path / "repo" / name
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [name]  # no temp left
    assert (folder / "1" / "model.onnx").read_bytes() == graph.read_bytes()
    config = parse(folder)
    assert (config.name, config.platform, config.max_batch_size) == (
        name,
        "onnxruntime_onnx",
        16,
    )
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert config.parameters["ssd_trt.input_size"].string_value
    check_against_onnx(config, graph)
    # The input is the preprocessed tensor: [3, 300, 300] float.
    assert list(config.input[0].dims) == [3, 300, 300]

    again = run_cli("triton-repo", str(graph), str(tmp_path / "repo"))
    assert again.returncode == 2 and "pass --force" in error_line(again)
    assert run_cli("triton-repo", str(graph), str(tmp_path / "repo"), "--force").returncode == 0


def test_engine_repository(tmp_path, exported) -> None:
    """A real TensorRT-RTX engine (built ahead of time, no GPU needed) as tensorrt_plan, its
    max batch from the engine's profile and its I/O from the ONNX it was built from."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is in the [rtx] extra")
    from ssd_trt.precision.engine import BuildOptions, build_engine
    from ssd_trt.precision.trt_compat import load_trt

    graph = exported(PERSON, "none")
    engine = tmp_path / "person.engine"
    build_engine(graph, engine, BuildOptions(max_batch=4), trt_api=load_trt("rtx"))
    proc = run_cli("triton-repo", str(engine), str(tmp_path / "repo"), "--name", "people")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "repo" / "people"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    config = parse(folder)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    check_against_onnx(config, graph)


def test_bad_model_is_one_line(tmp_path) -> None:
    junk = tmp_path / "x.engine"
    junk.write_bytes(b"junk")
    proc = run_cli("triton-repo", str(junk), str(tmp_path / "repo"))
    assert proc.returncode == 2 and "metadata" in error_line(proc)
