"""The backend registry: one table of backend specs, and ``auto``.

Each ``BackendSpec`` says: its name; the export it runs (NMS in the graph, or ``--nms none``
with NMS after the network); its INT8 form; ONE availability check that says why it cannot run
here; how to open it (a ``FrameDetector``, runtime/base.py); and its place in ``auto``'s order.
A new backend is one module (its FrameDetector, or a Network run by runtime/host.HostStages)
plus one entry in ``REGISTRY``.

Names, by where the work runs: ``cpu`` is ONNX Runtime on the CPU; ``cuda`` is the GPU fast path
(resize, network and NMS on an NVIDIA GPU; the network in ONNX Runtime's CUDA provider);
``tensorrt`` is a TensorRT engine (between the fast path's GPU kernels where cuda.core is here,
else with host arrays and TensorRT's NMS layer). ``onnxruntime-cuda`` and
``onnxruntime-tensorrt`` are ONNX Runtime's GPU providers with host arrays, NMS in the graph.
``onnxruntime-cpu``, the name ``cpu`` reported before, still works.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..batching import default_max_batch
from ..contract import ONNX_SUFFIX, ModelInfo, is_engine
from ..errors import MissingExtraError, SsdTrtError
from ..nms import NmsChange
from ..precision.cpu import cpu_has_fast_fp16
from ..precision.engine import BuildOptions
from ..precision.quantize import Flavour
from ..precision.trt_compat import load_trt, local_gpu
from ..store import ArtifactStore, Calibration
from .base import FrameDetector, Network
from .host import HostStages
from .nms_plan import gpu_nms, nms_plan, with_nms
from .ort import OnnxRuntimeBackend, provider_missing

log = logging.getLogger(__name__)

GRAPH_NMS = "NMS in graph"
# ONNX Runtime device (runtime/ort.py PROVIDERS) per backend name.
ORT_DEVICE = {"cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}
AFTER_NMS = "NMS after the network (--nms none)"


@dataclass(frozen=True)
class OpenRequest:
    """What opening a backend needs: the model, the asked precision and settings."""

    model: str | Path
    precision: str  # checked; an engine runs in its own
    store: ArtifactStore
    calibration: Calibration = field(default_factory=Calibration)
    nms_change: NmsChange = field(default_factory=NmsChange)
    max_batch: int | None = None  # None: the default for the backend (batching.py)
    threads: int | None = None

    def batch(self, gpu_fast_path: bool) -> int:
        return self.max_batch or default_max_batch(gpu_fast_path)

    def prepared(self, onnx: Path, flavour: Flavour = "tensorrt") -> Path:
        """The ONNX in the asked precision (converted or calibrated once, cached)."""
        return self.store.prepared(onnx, self.precision, self.calibration, flavour=flavour)

    def graph_export(self) -> Path:
        """The export with NMS in the graph that gives the asked NMS settings."""
        return with_nms(self.nms_change, self.store, self.model, self.store.onnx(self.model))

    def host(self, network: Network, max_batch: int) -> HostStages:
        """``network`` between host preprocessing and NMS (closed on a bad NMS plan)."""
        try:
            settings, cut = nms_plan(self.nms_change, network.info, str(self.model))
        except SsdTrtError:
            network.close()
            raise
        return HostStages(network, settings, cut, max_batch)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    help: str  # for --backend's help
    export: str  # what it runs: GRAPH_NMS or AFTER_NMS (or which, when)
    int8: Flavour  # the INT8 form it runs fastest
    why_not: Callable[[bool], str | None]  # (for auto) -> why it cannot run here, or None
    open: Callable[[OpenRequest], FrameDetector]
    auto_rank: int | None = None  # auto tries lower ranks first; None: only by name

    def unusable(self, auto: bool = False) -> str | None:
        try:
            return self.why_not(auto)
        except SsdTrtError as exc:  # a missing extra says so in one line
            return str(exc)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package is missing
        return False


# ---------------------------------------------------------------------- availability checks


def _ort_here(auto: bool) -> str | None:
    return None if has_module("onnxruntime") else str(MissingExtraError("onnxruntime", "ort"))


def _cuda_here(auto: bool) -> str | None:
    why = provider_missing("CUDAExecutionProvider", "cuda")
    if why is None and not has_module("cuda.core"):
        why = "the cuda backend needs cuda.core and an NVIDIA GPU: pip install 'ssd-trt[gpu]'"
    return why


def _tensorrt_here(auto: bool) -> str | None:
    """TensorRT and a GPU here. auto leaves TensorRT-RTX to explicit use: it has no NMS layer
    for the default export and does not run on Hopper."""
    api = load_trt()  # raises: not installed
    if auto and api.flavour != "tensorrt":
        return f"only {api.name} is installed, which auto does not pick"
    if local_gpu() is None:
        if auto:
            return "no CUDA GPU (or no cuda-python) here"
        return (
            "the tensorrt backend needs a CUDA GPU (and cuda-python) here; use backend cpu, "
            "or build ahead of time with 'ssd-trt build --trt tensorrt-rtx "
            "--compute-capability SM'"
        )
    return None


def _provider_here(provider: str, name: str) -> Callable[[bool], str | None]:
    return lambda auto: provider_missing(provider, name)


# ------------------------------------------------------------------------------- openers


def _open_ort(name: str) -> Callable[[OpenRequest], FrameDetector]:
    def open_(req: OpenRequest) -> FrameDetector:
        if name == "cpu" and req.precision == "fp16" and not cpu_has_fast_fp16():
            log.warning(
                "FP16 is for GPUs: ONNX Runtime's CPU kernels have no fast float16 path on this "
                "CPU, so FP16 runs slower than FP32 here; use fp32 or int8 on the CPU"
            )
        prepared = req.prepared(req.graph_export(), flavour_for(name))
        network = OnnxRuntimeBackend(prepared, ORT_DEVICE[name], req.threads)
        return req.host(network, req.batch(False))

    return open_


def _open_cuda(req: OpenRequest) -> FrameDetector:
    from .gpu.backend import FastPathBackend  # cuda.core, only where it runs

    onnx = req.store.onnx(req.model, nms="none")  # NMS runs on the GPU after the network
    nms = gpu_nms(req.nms_change, onnx)
    batch = req.batch(True)
    if req.precision == "fp16":  # the fast path converts the network itself
        return FastPathBackend(onnx, fp16=True, max_batch=batch, nms=nms)
    return FastPathBackend(req.prepared(onnx), max_batch=batch, nms=nms)


def _open_tensorrt(req: OpenRequest) -> FrameDetector:
    """With the fast path's kernels (cuda.core) here: an engine of the ``--nms none`` network
    between the GPU resize and NMS kernels. Without: the engine of the default export
    (TensorRT's NMS layer), host arrays in and out. The engine's profile is the batch size."""
    from .tensorrt import TensorRTBackend

    api = load_trt()
    if has_module("cuda.core"):
        from .gpu.backend import FastPathBackend

        raw = req.store.onnx(req.model, nms="none")
        if ModelInfo.from_onnx(raw).raw_outputs:
            batch = req.batch(True)
            nms = gpu_nms(req.nms_change, raw)
            raw = req.prepared(raw)
            options = BuildOptions(precision=req.precision, max_batch=batch)
            engine = req.store.engine(raw, options, api)
            return FastPathBackend(raw, max_batch=batch, engine=engine, nms=nms)
    batch = req.batch(False)
    options = BuildOptions(precision=req.precision, max_batch=batch)
    engine = req.store.engine(req.prepared(req.graph_export()), options, api)
    return req.host(TensorRTBackend(engine), batch)


def open_engine(req: OpenRequest, asked_precision: str | None) -> FrameDetector:
    """A built engine file: TensorRT with host arrays, in the precision it was built for."""
    from .tensorrt import TensorRTBackend

    engine = TensorRTBackend(Path(req.model))
    if asked_precision not in (None, engine.precision):
        engine.close()
        raise SsdTrtError(
            f"{req.model} was built for {engine.precision}, not {asked_precision}; build an "
            "engine for that precision or pass the .onnx"
        )
    return req.host(engine, req.max_batch or engine.max_batch or default_max_batch(False))


# ---------------------------------------------------------------------------------- table

REGISTRY: tuple[BackendSpec, ...] = (
    BackendSpec("cpu", "ONNX Runtime", GRAPH_NMS, "cpu", _ort_here, _open_ort("cpu"), 3),
    BackendSpec("cuda", "the GPU fast path", AFTER_NMS, "tensorrt", _cuda_here, _open_cuda, 1),
    BackendSpec(
        "tensorrt",
        "a TensorRT engine, built once and cached",
        f"{AFTER_NMS} on the GPU fast path, else {GRAPH_NMS}",
        "tensorrt",
        _tensorrt_here,
        _open_tensorrt,
        0,
    ),
    BackendSpec(
        "onnxruntime-cuda",
        "ONNX Runtime's CUDA provider",
        GRAPH_NMS,
        "tensorrt",
        _provider_here("CUDAExecutionProvider", "onnxruntime-cuda"),
        _open_ort("onnxruntime-cuda"),
        2,
    ),
    BackendSpec(
        "onnxruntime-tensorrt",
        "ONNX Runtime's TensorRT provider",
        GRAPH_NMS,
        "tensorrt",
        _provider_here("TensorrtExecutionProvider", "onnxruntime-tensorrt"),
        _open_ort("onnxruntime-tensorrt"),
    ),
)
SPECS = {spec.name: spec for spec in REGISTRY}
BACKENDS = ("auto", *SPECS)
ALIASES = {"onnxruntime-cpu": "cpu"}
BACKEND_HELP = (
    "auto (the fastest usable here), "
    + ", ".join(f"{s.name} ({s.help})" for s in REGISTRY[:3])
    + ", onnxruntime-cuda or onnxruntime-tensorrt (ONNX Runtime's GPU providers, NMS in the graph)"
)


def canonical_backend(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise SsdTrtError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name


def flavour_for(backend: str) -> Flavour:
    """The INT8 form a concrete backend runs fastest: ONNX Runtime's CPU kernels want their own
    (QLinearConv-ready) form; TensorRT and ONNX Runtime's CUDA/TensorRT providers the Q/DQ one.
    ``auto`` resolves to a concrete backend first, so it never gets a form slower there."""
    spec = SPECS.get(ALIASES.get(backend, backend))
    return spec.int8 if spec is not None else "tensorrt"


def unusable(name: str) -> str | None:
    """Why the backend ``name`` cannot run here, in one line, or None. Cheap (no model is
    loaded), so a backend asked for by name fails before any export or conversion."""
    name = canonical_backend(name)
    return None if name == "auto" else SPECS[name].unusable()


def candidates(requested: str) -> list[str]:
    """The backends to try, in order: the one asked for (an error where it cannot run here),
    or for ``auto`` the registry's order filtered by availability."""
    requested = canonical_backend(requested)
    if requested != "auto":
        why = unusable(requested)
        if why is not None:
            raise SsdTrtError(why)
        return [requested]
    order, last_why = [], "no backend"
    for spec in sorted((s for s in REGISTRY if s.auto_rank is not None), key=_rank):
        why = spec.unusable(auto=True)
        if why is None:
            order.append(spec.name)
        else:
            log.debug("auto: not %s (%s)", spec.name, why)
            last_why = why
    if not order:
        raise SsdTrtError(last_why)
    return order


def _rank(spec: BackendSpec) -> int:
    return spec.auto_rank if spec.auto_rank is not None else len(REGISTRY)


def open_backend(req: OpenRequest, backend: str, precision: str | None) -> FrameDetector:
    """The backend ``backend`` (or ``auto``'s first that opens) for ``req.model``."""
    if is_engine(Path(req.model)):
        if canonical_backend(backend) not in ("auto", "tensorrt"):
            raise SsdTrtError(f"{req.model} is a TensorRT engine; use backend tensorrt or auto")
        return open_engine(req, precision)
    if req.nms_change != NmsChange() and Path(req.model).suffix == ONNX_SUFFIX:
        req.graph_export()  # NMS settings a given .onnx cannot take: refused now
    order = candidates(backend)
    for i, name in enumerate(order):
        try:
            chosen = SPECS[name].open(req)
        except SsdTrtError as exc:
            if i + 1 == len(order):
                raise
            log.warning("backend %s unusable here (%s); trying %s", name, exc, order[i + 1])
            continue
        log.info("backend %s -> %s", backend, chosen.name)
        return chosen
    raise AssertionError("candidates() is never empty")


def tensorrt_usable() -> str | None:
    """None when full TensorRT and a GPU are here (what ``auto`` needs), else why not."""
    return SPECS["tensorrt"].unusable(auto=True)
