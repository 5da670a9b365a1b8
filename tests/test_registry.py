"""The backend registry: one table of specs, one availability check each, ``auto`` as the
table's order filtered by what runs here, and the old runtime.select names as an alias."""

from __future__ import annotations

import pytest

from ssd_trt.errors import SsdTrtError
from ssd_trt.runtime import registry, select
from ssd_trt.runtime.ort import available_providers
from ssd_trt.store import ArtifactStore

COCO = "ssdlite_mobilenet_v2_coco"
NO_GPU = "CUDAExecutionProvider" not in available_providers()


def test_one_table_names_every_backend():
    assert registry.BACKENDS == (
        "auto", "cpu", "cuda", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt"
    )  # fmt: skip
    for spec in registry.REGISTRY:
        assert spec.export in registry.GRAPH_NMS + registry.AFTER_NMS or "else" in spec.export
        assert registry.flavour_for(spec.name) == spec.int8
        assert spec.name in registry.BACKEND_HELP
    assert registry.flavour_for("cpu") == "cpu" and registry.flavour_for("onnxruntime-cpu") == "cpu"
    # auto never picks ONNX Runtime's TensorRT provider; the rest in a fixed order.
    ranked = sorted((s for s in registry.REGISTRY if s.auto_rank is not None), key=registry._rank)
    assert [s.name for s in ranked] == ["tensorrt", "cuda", "onnxruntime-cuda", "cpu"]


def test_runtime_select_is_an_alias_of_the_registry():
    assert select.candidates is registry.candidates
    assert select.BACKENDS is registry.BACKENDS and select.ORT_DEVICE is registry.ORT_DEVICE
    assert select.canonical_backend("onnxruntime-cpu") == "cpu"
    with pytest.raises(SsdTrtError, match="unknown backend 'gpu'; use one of auto, cpu"):
        select.canonical_backend("gpu")


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU stack")
def test_each_check_says_why_not_in_one_line():
    assert registry.unusable("cpu") is None and registry.unusable("auto") is None
    for name in ("cuda", "onnxruntime-cuda", "onnxruntime-tensorrt"):
        why = registry.unusable(name)
        assert why is not None and "\n" not in why, name
        assert why.endswith("pip install 'ssd-trt[gpu]'") and name in why
    assert registry.unusable("tensorrt")  # no TensorRT or no GPU here, said in one line
    assert registry.candidates("auto") == ["cpu"]
    with pytest.raises(SsdTrtError, match=r"ssd-trt\[gpu\]"):
        registry.candidates("cuda")


def test_opening_through_the_registry(model_cache, tmp_path):
    store = ArtifactStore(model_cache)
    onnx = store.onnx(COCO)
    request = registry.OpenRequest(onnx, "fp32", store, max_batch=None, threads=1)
    with registry.open_backend(request, "auto", None) as backend:
        assert backend.name == "cpu" or not NO_GPU
        assert backend.max_batch == 8 and not backend.queues
    # An engine file is TensorRT's alone: refused for another backend before anything loads.
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not read")
    with pytest.raises(SsdTrtError, match="is a TensorRT engine; use backend tensorrt or auto"):
        registry.open_backend(registry.OpenRequest(engine, "fp32", store), "cpu", None)
