"""The one seam between ssd_trt and the TensorRT Python APIs it supports.

Three APIs share one shape (Builder, OnnxParser, BuilderConfig, Runtime) but differ in details:

- TensorRT 10.x: weak typing still exists (deprecated since 10.12); we always ask for a strongly
  typed network, so precision comes from the ONNX's tensor types and Q/DQ nodes, never builder
  flags. EXPLICIT_BATCH is deprecated and the default, so it is never passed.
- TensorRT 11.x: networks are always strongly typed; the STRONGLY_TYPED flag is accepted and
  ignored; BuilderFlag.FP16/INT8 and calibrators are gone.
- TensorRT-RTX (module ``tensorrt_rtx``): can build ahead of time for a named compute capability
  without a GPU, has no NMS layer, and treats timing caches as no-ops (deprecated in RTX 1.2).

Everything else in the package talks to TensorRT through ``TrtApi`` so those differences live here.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from ..errors import MissingExtraError, SsdTrtError

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_EXTRAS = {"tensorrt": "tensorrt", "tensorrt-rtx": "rtx"}
_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


class NoTensorRTError(MissingExtraError):
    """Neither TensorRT nor TensorRT-RTX can be imported."""

    def __init__(self) -> None:
        SsdTrtError.__init__(
            self,
            "neither tensorrt nor tensorrt_rtx is installed; install one with: "
            "pip install 'ssd-trt[tensorrt]' (NVIDIA GPU) or pip install 'ssd-trt[rtx]' "
            "(TensorRT-RTX, also builds engines ahead of time without a GPU)",
        )


@dataclass(frozen=True)
class TrtApi:
    """A loaded TensorRT module and what it can do."""

    trt: Any
    flavour: str  # "tensorrt" | "tensorrt-rtx"
    version: str

    @property
    def name(self) -> str:
        """Human-readable name and version, e.g. ``TensorRT-RTX 1.7.1.116``."""
        return f"{_NAMES[self.flavour]} {self.version}"

    @property
    def extra(self) -> str:
        """The ssd-trt pip extra that installs this flavour."""
        return _EXTRAS[self.flavour]

    @property
    def has_nms_layer(self) -> bool:
        # TensorRT-RTX parses NonMaxSuppression but has no kernel for it ("has no runners").
        return self.flavour == "tensorrt"

    @property
    def has_timing_cache(self) -> bool:
        # RTX keeps the API but ignores the cache; reloading one even touches CUDA without a GPU.
        return self.flavour == "tensorrt"

    @property
    def can_target_compute_capability(self) -> bool:
        return hasattr(self.trt, "ComputeCapability") and hasattr(
            self.trt.IBuilderConfig, "set_compute_capability"
        )

    @property
    def has_progress_monitor(self) -> bool:
        return hasattr(self.trt, "IProgressMonitor")

    def compute_capabilities(self) -> list[str]:
        """The targets ``set_compute_capability`` accepts, e.g. ``["sm75", "sm80", ...]``."""
        if not self.can_target_compute_capability:
            return []
        names = self.trt.ComputeCapability.__members__
        return [n.lower() for n in names if re.fullmatch(r"SM\d+", n)]

    def create_network(self, builder: Any) -> Any:
        """An explicit-batch, strongly typed network on every supported version."""
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return builder.create_network(0 if flag is None else 1 << int(flag))

    def init_plugins(self, logger: Any) -> None:
        """Register TensorRT's bundled plugins (EfficientNMS_TRT) before parsing an ONNX."""
        init = getattr(self.trt, "init_libnvinfer_plugins", None)
        if self.flavour == "tensorrt" and init is not None:
            init(logger, "")

    def builder(self, logger: Any) -> Any:
        """trt.Builder, with a one-line error where it cannot start (no GPU for full TensorRT)."""
        try:
            builder = self.trt.Builder(logger)
        except (TypeError, RuntimeError) as exc:
            builder, cause = None, " ".join(str(exc).split())[:160]
        else:
            cause = "it returned no builder"
        if builder is None:
            raise SsdTrtError(
                f"{self.name} cannot create a builder here ({cause}); full TensorRT needs an "
                "NVIDIA GPU and driver, TensorRT-RTX builds without one (--trt tensorrt-rtx)"
            )
        return builder

    def runtime_config(self, engine: Any) -> Any:
        """TensorRT-RTX's IRuntimeConfig with its own whole-graph CUDA capture turned on (RTX
        needs REQUIRE_USER_ALLOCATION engines for user stream capture; this needs nothing);
        None for TensorRT, where the runtime captures graphs itself (runtime.cuda_graph)."""
        strategy = getattr(self.trt, "CudaGraphStrategy", None)
        if self.flavour != "tensorrt-rtx" or strategy is None:
            return None
        config = engine.create_runtime_config()
        config.cuda_graph_strategy = strategy.WHOLE_GRAPH_CAPTURE
        return config

    def execution_context(self, engine: Any) -> Any:
        """An execution context (None when TensorRT cannot make one, e.g. out of memory)."""
        config = self.runtime_config(engine)
        if config is None:
            return engine.create_execution_context()
        return engine.create_execution_context(config)

    def set_workspace(self, config: Any, nbytes: int) -> None:
        config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(nbytes))

    def check_target(self, cc: str) -> str:
        """``cc`` normalized (``"sm89"``) when this TensorRT can build for it, else one line
        saying why not; cheap, so a build checks it before any export or calibration."""
        target = normalize_cc(cc)
        if not self.can_target_compute_capability:
            gpu = local_gpu()
            if gpu is not None and gpu[1] == target:
                return target  # the local GPU: full TensorRT builds for it as it is
            raise SsdTrtError(
                f"{self.name} builds only for the local GPU; building for {cc} ahead of time "
                "needs TensorRT-RTX (pip install 'ssd-trt[rtx]') or a machine with that GPU"
            )
        supported = self.compute_capabilities()
        if target not in supported:
            raise SsdTrtError(
                f"{self.name} cannot build for {cc}; it supports {', '.join(supported)}"
            )
        return target

    def set_compute_capability(self, config: Any, cc: str) -> None:
        """Build for one named target (``"sm89"``) instead of the local GPU."""
        if not self.can_target_compute_capability:
            raise SsdTrtError(
                f"{self.name} builds only for the local GPU; building for {cc} ahead of time "
                "needs TensorRT-RTX (pip install 'ssd-trt[rtx]') or a machine with that GPU"
            )
        member = getattr(self.trt.ComputeCapability, self.check_target(cc).upper())
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(member, 0):
            raise SsdTrtError(f"{self.name} refused compute capability {cc}")

    def logger(self, verbose: bool = False) -> Any:
        """A TensorRT logger that logs warnings (everything when verbose).

        Errors are kept in ``.errors`` rather than logged unless verbose: callers turn the last
        one into the one-line SsdTrtError the user sees.
        """
        trt: Any = self.trt  # annotated: mypy takes trt.ILogger as a base then
        show = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)
        error = int(trt.ILogger.Severity.ERROR)
        warning = int(trt.ILogger.Severity.WARNING)

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                level = int(severity)
                if level <= error:
                    self.errors.append(msg)
                if level <= show and (verbose or level > error):
                    log.log(logging.WARNING if level <= warning else logging.DEBUG, "%s", msg)

        return _Logger()


def normalize_cc(cc: str) -> str:
    """``"sm89"``, ``"SM_89"``, ``"8.9"`` -> ``"sm89"``."""
    text = cc.strip().lower().replace("_", "")
    m = re.fullmatch(r"sm(\d+)", text) or re.fullmatch(r"(\d+)\.(\d)", text)
    if m is None:
        raise SsdTrtError(f"bad compute capability {cc!r}; write it like sm89 or 8.9")
    return "sm" + "".join(m.groups())


def load_trt(prefer: str = "auto") -> TrtApi:
    """Import TensorRT: ``"tensorrt"``, ``"tensorrt-rtx"`` (or ``"rtx"``), or ``"auto"``.

    ``auto`` tries full TensorRT first (it also runs NMS in the engine), then TensorRT-RTX.
    """
    prefer = {"rtx": "tensorrt-rtx", "tensorrt_rtx": "tensorrt-rtx"}.get(prefer, prefer)
    if prefer not in ("auto", *FLAVOURS):
        raise SsdTrtError(f"unknown TensorRT flavour {prefer!r}; use auto, tensorrt or rtx")
    for flavour in FLAVOURS if prefer == "auto" else (prefer,):
        try:
            module = importlib.import_module(_MODULES[flavour])
        except (ImportError, OSError) as exc:  # OSError: a wheel whose native libraries are stubs
            if prefer == "auto":
                continue
            raise MissingExtraError(_MODULES[flavour], _EXTRAS[flavour]) from exc
        version = str(module.__version__)
        if flavour == "tensorrt" and int(version.split(".")[0]) < 10:
            # TensorRT 8/9 need EXPLICIT_BATCH and have no strongly typed build path we rely on.
            raise SsdTrtError(f"TensorRT {version} is too old; ssd-trt needs TensorRT 10 or newer")
        return TrtApi(trt=module, flavour=flavour, version=version)
    raise NoTensorRTError()


def local_gpu(device: int = 0) -> tuple[str, str] | None:
    """``(name, "sm89")`` of a local GPU via cuda-python; None without a GPU or cuda-python."""
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cuda as driver  # older cuda-python
        except ImportError:
            return None
    ok = driver.CUresult.CUDA_SUCCESS
    try:
        (err,) = driver.cuInit(0)
        if err != ok:
            return None
        err, dev = driver.cuDeviceGet(device)
        if err != ok:
            return None
        err, raw = driver.cuDeviceGetName(256, dev)
        attr = driver.CUdevice_attribute
        err2, major = driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev
        )
        err3, minor = driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev
        )
    except Exception:  # a driver/bindings mismatch is "no usable GPU" here, not a crash
        return None
    if not err == err2 == err3 == ok:
        return None
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return name, f"sm{major}{minor}"
