"""Build stage: an exported ONNX -> a serialized TensorRT engine plus a metadata sidecar.

Precision is not chosen here. TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8 and
calibrators), so the ONNX passed in already carries it: float16 tensors for FP16, Q/DQ nodes for
INT8. ``BuildOptions.precision`` states what the caller expects and is checked against the graph.

An engine only runs with the TensorRT flavour and version and on the GPU architecture that built it,
so ``<engine>.json`` records those together with the engine's size and sha256 (to catch truncated
copies) and the ONNX's ``ssd_trt.*`` metadata (labels, preprocessing, NMS settings) for the runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..contract import INPUT_NAME, check_precision, metadata_of
from ..errors import SsdTrtError, require
from ..fsutil import atomic_write
from .trt_compat import TrtApi, load_trt, local_gpu, normalize_cc

log = logging.getLogger(__name__)
METADATA_FORMAT = 1
NMS_OPS = ("NonMaxSuppression", "EfficientNMS_TRT")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_REBUILD = "rebuild it with ssd-trt build"
_NO_NMS_LAYER = (
    "{api} has no NMS layer but {onnx} has NMS in the graph; export it with --nms none, or "
    "pass the model name (ssd-trt build MODEL_NAME exports --nms none by itself)"
)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # what the ONNX is typed as; checked, not applied
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace: int | None = None  # bytes; None: TensorRT's default (the GPU's memory)
    timing_cache: Path | None = None  # loaded if present, saved after the build
    compute_capability: str | None = None  # "sm89": build ahead of time for that GPU (RTX)
    verbose: bool = False

    def validate(self) -> None:
        check_precision(self.precision)
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise SsdTrtError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace is not None and self.workspace <= 0:
            raise SsdTrtError(f"workspace must be a positive number of bytes, got {self.workspace}")
        if self.compute_capability is not None:
            normalize_cc(self.compute_capability)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        return data


@dataclass
class EngineMetadata:
    """What ``<engine>.json`` holds; ``path`` is the engine it was loaded for (not stored)."""

    engine_bytes: int
    engine_sha256: str
    onnx_path: str
    onnx_sha256: str
    precision: str
    input_name: str
    input_profile: dict[str, list[int]]  # "min" / "opt" / "max" -> [N, 3, H, W]
    outputs: list[str]
    trt_flavour: str
    trt_version: str
    gpu_name: str | None  # the building machine's GPU; None when it had none
    # "sm89": the GPU architecture the engine is for; "portable": a TensorRT-RTX engine built
    # without a target (runs on any GPU that version supports); "none": unknown
    compute_capability: str
    aot: bool  # built ahead of time, without needing the target GPU (TensorRT-RTX)
    build_options: dict[str, Any]
    onnx_metadata: dict[str, str]  # the ONNX's ssd_trt.* metadata_props
    created: str
    build_seconds: float
    format: int = METADATA_FORMAT
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["path"]
        return data

    @classmethod
    def load(cls, engine_path: Path) -> EngineMetadata:
        """Read the sidecar of ``engine_path`` (``<engine>.json``)."""
        engine_path = Path(engine_path)
        side = sidecar_path(engine_path)
        problem = f"engine metadata {side} is missing or corrupt; {_REBUILD}"
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SsdTrtError(problem) from exc
        names = {f.name for f in fields(cls)} - {"path"}
        required = {f.name for f in fields(cls) if f.name not in ("path", "format")}
        if not isinstance(data, dict) or not required <= data.keys():
            raise SsdTrtError(problem)
        if data.get("format", METADATA_FORMAT) > METADATA_FORMAT:
            raise SsdTrtError(f"{side} was written by a newer ssd-trt; upgrade ssd-trt")
        return cls(**{k: v for k, v in data.items() if k in names}, path=engine_path)

    def check_compatible(self, trt_api: TrtApi, gpu_cc: str | None) -> None:
        """Raise if this engine cannot run with ``trt_api`` on a GPU of ``gpu_cc`` (None: skip)."""
        where = self.path or "this engine"
        if (self.trt_flavour, self.trt_version) != (trt_api.flavour, trt_api.version):
            built = TrtApi(None, self.trt_flavour, self.trt_version).name
            raise SsdTrtError(
                f"engine {where} was built with {built} but {trt_api.name} is installed; {_REBUILD}"
            )
        if gpu_cc is not None and self.compute_capability not in ("none", "portable"):
            if normalize_cc(gpu_cc) != self.compute_capability:
                raise SsdTrtError(
                    f"engine {where} was built for {self.compute_capability} but this GPU is "
                    f"{normalize_cc(gpu_cc)}; {_REBUILD}"
                )


def sidecar_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def engine_cache_key(
    onnx_sha256: str, options: BuildOptions, flavour: str, version: str, gpu_cc: str | None
) -> str:
    """sha256 of everything that changes the engine's bytes (not logging or the cache path)."""
    opts = options.to_json()
    for irrelevant in ("verbose", "timing_cache"):
        del opts[irrelevant]
    key = {
        "onnx_sha256": onnx_sha256,
        "options": opts,
        "flavour": flavour,
        "version": version,
        "gpu_cc": None if gpu_cc is None else normalize_cc(gpu_cc),
    }
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cached_engine_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.engine"


def read_engine_bytes(path: Path, metadata: EngineMetadata | None = None) -> bytes:
    """The engine's bytes, checked against the size and sha256 its sidecar recorded."""
    path = Path(path)
    if not path.is_file():
        raise SsdTrtError(f"engine {path} does not exist; build it with ssd-trt build")
    meta = metadata or EngineMetadata.load(path)
    data = path.read_bytes()
    if not data:
        raise SsdTrtError(f"engine {path} is empty; {_REBUILD}")
    if len(data) != meta.engine_bytes:
        raise SsdTrtError(
            f"engine {path} is truncated or corrupt ({len(data)} bytes, expected "
            f"{meta.engine_bytes}); {_REBUILD}"
        )
    if hashlib.sha256(data).hexdigest() != meta.engine_sha256:
        raise SsdTrtError(f"engine {path} is truncated or corrupt (sha256 mismatch); {_REBUILD}")
    return data


# ----------------------------------------------------------------------------------------- build


def _scan_onnx(onnx: Any, model: Any) -> tuple[set[str], bool]:
    """Op types of the graph and its subgraphs, and whether any tensor is float16."""
    f16 = onnx.TensorProto.FLOAT16
    ops: set[str] = set()
    has_f16 = False
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        has_f16 = has_f16 or any(t.data_type == f16 for t in g.initializer)
        has_f16 = has_f16 or any(v.type.tensor_type.elem_type == f16 for v in (*g.input, *g.output))
        for node in g.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                    has_f16 = True
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                    has_f16 = True
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    return ops, has_f16


def preflight(onnx_path: Path, api: TrtApi) -> None:
    """The checks a build can make before calibration or parsing: an NMS op on a TensorRT
    without an NMS layer."""
    onnx = require("onnx", api.extra)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise SsdTrtError(f"{onnx_path} is not a valid ONNX file; re-export it") from exc
    ops, _ = _scan_onnx(onnx, model)
    if not api.has_nms_layer and ops & set(NMS_OPS):
        raise SsdTrtError(_NO_NMS_LAYER.format(api=api.name, onnx=onnx_path))


def _check_precision(onnx_path: Path, precision: str, ops: set[str], has_f16: bool) -> None:
    has_qdq = bool(ops & set(QDQ_OPS))
    typed = "int8 (Q/DQ)" if has_qdq else "fp16" if has_f16 else "fp32"
    ok = {"fp32": not has_qdq and not has_f16, "fp16": has_f16 and not has_qdq, "int8": has_qdq}
    if not ok[precision]:
        raise SsdTrtError(
            f"{onnx_path} is typed {typed} but precision {precision} was asked for; TensorRT takes "
            "precision from the ONNX, so pass the ONNX converted for that precision"
        )


def _first_parser_error(parser: Any, onnx_path: Path) -> SsdTrtError:
    parts = []
    if parser.num_errors:
        err = parser.get_error(0)
        node = err.node_name() or (f"node {err.node()}" if err.node() >= 0 else "")
        op = err.node_operator()
        parts = [p for p in (f"{op} {node}".strip(), err.desc()) if p]
    detail = ": ".join(parts) or "unknown error"
    return SsdTrtError(f"TensorRT could not parse {onnx_path}: {' '.join(detail.split())}")


def _make_monitor(
    api: TrtApi, step: Callable[[str], None], on_phase: Callable[[str], None] | None
) -> Any:
    """A progress monitor that logs phases and turns Ctrl-C into a cancelled build.

    TensorRT calls it on the main thread, so Ctrl-C raises KeyboardInterrupt inside a callback;
    it is stored and answered by cancelling (step_complete -> False), then re-raised after
    build_serialized_network returns, instead of escaping into C++.
    """
    trt: Any = api.trt  # annotated: mypy takes trt.IProgressMonitor as a base then

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.interrupt: BaseException | None = None
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                if self.interrupt is not None:
                    return  # cancelling: TensorRT may still open a phase or two
                depth = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
                self.depth[phase_name] = depth
                if 1 <= depth <= 2:
                    step(f"      {'  ' * (depth - 1)}{phase_name}")
                if on_phase is not None:
                    on_phase(phase_name)
            except BaseException as exc:  # noqa: BLE001 - re-raised after the build returns
                self.interrupt = self.interrupt or exc

        def phase_finish(self, phase_name: str) -> None:
            pass

        def step_complete(self, phase_name: str, step_index: int) -> bool:
            return self.interrupt is None

    return _Monitor()


def _load_timing_cache(config: Any, path: Path | None, step: Callable[[str], None]) -> Any:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
        step(f"      timing cache: loaded {path} ({len(data)} bytes)")
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU or version is dropped, not trusted.
    config.set_timing_cache(cache, False)
    return cache


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    options: BuildOptions = BuildOptions(),
    *,
    trt_api: TrtApi | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> EngineMetadata:
    """Build ``engine_path`` (and ``<engine_path>.json``) from an ssd_trt ONNX.

    ``on_phase`` is called with each optimizer phase's name as TensorRT starts it (where the API
    has IProgressMonitor); an exception it raises, KeyboardInterrupt included, cancels the build.
    Nothing is written unless the build succeeds.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    options.validate()
    api = trt_api or load_trt()
    trt = api.trt
    onnx = require("onnx", api.extra)

    step = log.info

    # 1. Read the ONNX once: its hash keys the cache, its ops and metadata are checked here.
    if not onnx_path.is_file():
        raise SsdTrtError(f"ONNX file {onnx_path} does not exist; export one with ssd-trt export")
    raw = onnx_path.read_bytes()
    onnx_sha256 = hashlib.sha256(raw).hexdigest()
    step(f"[1/4] reading {onnx_path} (sha256 {onnx_sha256[:12]})")
    try:
        model = onnx.load_from_string(raw)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise SsdTrtError(f"{onnx_path} is not a valid ONNX file; re-export it") from exc
    ops, has_f16 = _scan_onnx(onnx, model)
    if not api.has_nms_layer and ops & set(NMS_OPS):
        raise SsdTrtError(_NO_NMS_LAYER.format(api=api.name, onnx=onnx_path))
    _check_precision(onnx_path, options.precision, ops, has_f16)
    onnx_meta = metadata_of(model)
    del model, raw  # the parser gets the file path (external weights stay possible)

    # 2. Parse.
    step(f"[2/4] parsing with {api.name}")
    trt_log = api.logger(options.verbose)
    api.init_plugins(trt_log)
    builder = api.builder(trt_log)
    network = api.create_network(builder)
    parser = trt.OnnxParser(network, trt_log)
    if not parser.parse_from_file(str(onnx_path)):
        raise _first_parser_error(parser, onnx_path)
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if INPUT_NAME not in inputs or len(inputs[INPUT_NAME].shape) != 4:
        raise SsdTrtError(
            f"{onnx_path} has no 4-D input {INPUT_NAME!r} (it has {', '.join(inputs) or 'none'}); "
            "export it with ssd-trt export"
        )
    batch, channels, height, width = inputs[INPUT_NAME].shape
    if min(channels, height, width) < 1:
        raise SsdTrtError(f"{onnx_path}: input {INPUT_NAME!r} needs a fixed C, H and W")
    batches = (options.min_batch, options.opt_batch, options.max_batch)
    if batch != -1 and set(batches) != {batch}:
        raise SsdTrtError(f"{onnx_path} has a fixed batch size {batch}; build with batch {batch}")
    names = ("min", "opt", "max")
    shapes = {k: [b, channels, height, width] for k, b in zip(names, batches, strict=True)}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]

    # 3. Configure and build.
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if options.workspace is not None:
        api.set_workspace(config, options.workspace)
    gpu = local_gpu()  # None without a GPU or without cuda-python
    target = normalize_cc(options.compute_capability) if options.compute_capability else None
    # TensorRT-RTX compiles without a GPU; with no target its engines are portable across the
    # GPUs it supports. Full TensorRT builds for the local GPU only.
    aot = api.can_target_compute_capability
    if target is not None and (aot or gpu is None or gpu[1] != target):
        api.set_compute_capability(config, target)  # full TensorRT raises: it cannot target
    cc = target or ("portable" if aot else gpu[1] if gpu else "none")
    cache = None
    if options.timing_cache is not None:
        if api.has_timing_cache:
            cache = _load_timing_cache(config, options.timing_cache, step)
        else:
            step(f"      timing cache: not used ({api.name} ignores timing caches)")
    monitor = None
    if api.has_progress_monitor:
        monitor = _make_monitor(api, step, on_phase)
        config.progress_monitor = monitor
    step(
        f"[3/4] building {options.precision} engine for {cc}{' (ahead of time)' if aot else ''}, "
        f"batch {'/'.join(map(str, batches))}, input {height}x{width}"
    )
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if monitor is not None and monitor.interrupt is not None:
        raise monitor.interrupt
    if serialized is None:
        last = " ".join(trt_log.errors[-1].split()) if trt_log.errors else "no details"
        if "BuildCanceled" in last:  # Ctrl-C escaped a callback; TensorRT cancelled the build
            raise KeyboardInterrupt
        raise SsdTrtError(f"{api.name} failed to build {onnx_path}: {last}")
    data = memoryview(serialized)

    # 4. Write the engine, its sidecar and the timing cache; each appears whole or not at all.
    meta = EngineMetadata(
        engine_bytes=data.nbytes,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        onnx_path=str(onnx_path),
        onnx_sha256=onnx_sha256,
        precision=options.precision,
        input_name=INPUT_NAME,
        input_profile=shapes,
        outputs=outputs,
        trt_flavour=api.flavour,
        trt_version=api.version,
        gpu_name=gpu[0] if gpu else None,
        compute_capability=cc,
        aot=aot,
        build_options=options.to_json(),
        onnx_metadata=onnx_meta,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
        path=engine_path,
    )
    with atomic_write(engine_path) as f:
        f.write(data)
    try:
        with atomic_write(sidecar_path(engine_path)) as f:
            f.write(json.dumps(meta.to_json(), indent=2, sort_keys=True).encode() + b"\n")
    except BaseException:
        engine_path.unlink(missing_ok=True)  # an engine without its sidecar is unusable
        raise
    if cache is not None and options.timing_cache is not None:
        with atomic_write(options.timing_cache) as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
        step(f"      timing cache: saved {options.timing_cache}")
    step(f"[4/4] wrote {engine_path} ({data.nbytes / 1e6:.1f} MB) in {seconds:.1f} s")
    return meta
