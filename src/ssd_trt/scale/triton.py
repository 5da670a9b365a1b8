"""A Triton Inference Server model repository from an exported ONNX or a built engine.

Layout (Triton's)::

    DIR/<name>/config.pbtxt      platform, max_batch_size, inputs, outputs, dynamic batching
    DIR/<name>/1/model.onnx      (onnxruntime_onnx) or 1/model.plan (tensorrt_plan)

Names, types and dims come from the ONNX graph (for an engine: the ONNX it was built from, which
its ``<engine>.json`` names). The network's input is the preprocessed ``images`` tensor, so a
Triton client resizes and scales first; the config carries the ``ssd_trt.*`` metadata (input
size, scale, offset, labels) as parameters so a client can read them from the server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..contract import is_engine, read_onnx_metadata
from ..errors import SsdTrtError, require
from ..precision.engine import EngineMetadata

log = logging.getLogger(__name__)

# ONNX TensorProto element types -> Triton's DataType names.
_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}
# Batches Triton forms while requests queue: short enough for live video (1 ms).
DEFAULT_QUEUE_DELAY_US = 1000


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # TYPE_FP32 ...
    dims: tuple[int, ...]  # without the batch dimension; -1 where dynamic


@dataclass(frozen=True)
class TritonModel:
    name: str
    platform: str  # onnxruntime_onnx or tensorrt_plan
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    @property
    def file_name(self) -> str:
        return "model.plan" if self.platform == "tensorrt_plan" else "model.onnx"

    def config_pbtxt(self) -> str:
        """The config in protobuf text format (Triton's model_config.proto)."""
        lines = [
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
            f"max_batch_size: {self.max_batch_size}",
        ]
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            for spec in specs:
                lines += [f"{kind} {{", f'  name: "{spec.name}"', f"  data_type: {spec.data_type}"]
                if spec.dims:
                    lines.append(f"  dims: [ {', '.join(str(d) for d in spec.dims)} ]")
                else:
                    # A per-image scalar ([N] in the graph): Triton wants one dim, reshaped away.
                    lines += ["  dims: [ 1 ]", "  reshape: { shape: [ ] }"]
                lines.append("}")
        preferred = sorted({b for b in (4, 8, self.max_batch_size) if b <= self.max_batch_size})
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
            f"  max_queue_delay_microseconds: {self.queue_delay_us}",
            "}",
        ]
        for key, value in sorted(self.parameters.items()):
            lines += [
                "parameters {",
                f"  key: {json.dumps(key)}",
                f"  value: {{ string_value: {json.dumps(value)} }}",
                "}",
            ]
        return "\n".join(lines) + "\n"


def _tensor(value_info, where: Path, batched: bool) -> TensorSpec:
    t = value_info.type.tensor_type
    if t.elem_type not in _TYPES:
        raise SsdTrtError(f"{where}: tensor {value_info.name} has a type Triton has no name for")
    dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]
    if batched:
        dims = dims[1:]
    return TensorSpec(value_info.name, _TYPES[t.elem_type], tuple(dims))


def describe(model: Path, name: str | None = None, max_batch: int = 8) -> TritonModel:
    """Read what a config needs from an ssd_trt ONNX or engine (without writing anything)."""
    onnx_mod = require("onnx", "export")
    model = Path(model)
    if not model.is_file():
        raise SsdTrtError(f"{model} does not exist; pass an exported .onnx or a built engine")
    if is_engine(model):
        meta = EngineMetadata.load(model)
        graph_path = Path(meta.onnx_path)
        if not graph_path.is_file():
            raise SsdTrtError(
                f"{graph_path}, the ONNX engine {model} was built from, is missing; the "
                "repository's I/O come from it: rebuild the engine or restore that file"
            )
        platform, max_batch = "tensorrt_plan", int(meta.input_profile["max"][0])
    else:
        graph_path, platform = model, "onnxruntime_onnx"
    try:
        graph = onnx_mod.load(str(graph_path), load_external_data=False).graph
    except Exception as exc:
        raise SsdTrtError(f"cannot read {graph_path} as ONNX: {exc}") from None
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    first = inputs[0].type.tensor_type.shape.dim if inputs else []
    batched = bool(first) and first[0].dim_value <= 0  # a dynamic leading dim is the batch
    meta_props = read_onnx_metadata(graph_path)
    default_name = meta_props.get("ssd_trt.model") or model.stem
    return TritonModel(
        name=_safe_name(name or default_name),
        platform=platform,
        max_batch_size=max_batch if batched else 0,
        inputs=tuple(_tensor(v, graph_path, batched) for v in inputs),
        outputs=tuple(_tensor(v, graph_path, batched) for v in graph.output),
        parameters=meta_props,
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "ssd"


def write_repository(
    model: Path, repo_dir: Path, *, name: str | None = None, max_batch: int = 8, force: bool = False
) -> Path:
    """Write ``repo_dir/<name>/`` (config + version 1) atomically; return that folder.

    Built in a temp folder beside it and renamed, so an interrupted run leaves nothing behind.
    """
    spec = describe(model, name, max_batch)
    repo_dir = Path(repo_dir)
    if repo_dir.exists() and not repo_dir.is_dir():
        raise SsdTrtError(f"{repo_dir} is a file; pass a folder for the model repository")
    target = repo_dir / spec.name
    if target.exists() and not force:
        raise SsdTrtError(f"{target} exists; pass --force to replace it")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        # --force replaces a model folder, never a link, device or file in its place.
        raise SsdTrtError(f"{target} is not a model folder; remove it or pass another --name")
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=repo_dir))
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(model, tmp / "1" / spec.file_name)
        (tmp / "config.pbtxt").write_text(spec.config_pbtxt(), encoding="utf-8")
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, max batch %d)", target, spec.platform, spec.max_batch_size)
    return target
