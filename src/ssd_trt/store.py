"""The artifact store: the cache folders and the chain that fills them.

    name or path -> fetched TF graph -> exported ONNX -> FP16/INT8 ONNX -> TensorRT engine

Each step is one small method that takes the previous step's file and returns the next one's,
so callers (the Detector, the CLI verbs, the benchmarks) compose just the steps they need, much
like Polygraphy's lazy loaders. Every artifact is keyed by what it was made from, so a changed
model, option, TensorRT version or GPU never reuses a stale file. Layout under the cache root::

    models/<name>/...             fetched artifacts (see model.fetch)
    onnx/<name>[.nms-<mode>][.iou-...].onnx   exports of registry models (NMS settings)
    onnx/graphs/<stem>.<hash>.onnx            exports of TF graphs for build
    prepared/<stem>.<hash>.<precision>.onnx and .calib.json   precision conversions
    engines/<key>.engine and .engine.json                     engines built on demand
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .contract import (
    ENGINE_SUFFIXES,
    ONNX_SUFFIX,
    is_current_export,
    is_engine,
    read_onnx_metadata,
)
from .errors import SsdTrtError
from .fsutil import writable_folder
from .model.export import ExportOptions, ExportSummary, export
from .model.fetch import fetch_model
from .model.registry import MODELS, SAMPLE_VIDEO, get_model
from .nms import NmsSettings
from .precision.engine import (
    BuildOptions,
    EngineMetadata,
    build_engine,
    engine_cache_key,
    preflight,
)
from .precision.quantize import Flavour, check_calibration_source, prepare
from .precision.trt_compat import TrtApi, local_gpu

log = logging.getLogger(__name__)

_TF_GRAPH_SUFFIXES = (".pb", ".json")
CACHE_HINT = "pass --cache-dir (or set SSD_TRT_CACHE to) a folder you can write to"


def default_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else $SSD_TRT_CACHE, else $XDG_CACHE_HOME/ssd_trt,
    else ~/.cache/ssd_trt."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("SSD_TRT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ssd_trt"
    return Path.home() / ".cache" / "ssd_trt"


@dataclass(frozen=True)
class TfModel:
    """A TF graph to export: its file or folder, its label map kind and a name for outputs."""

    graph: Path
    labels: str  # "coco", "person" or "auto" (labels.label_map)
    name: str


@dataclass(frozen=True)
class Calibration:
    """Where INT8 calibration images come from and how many to use."""

    images: str | None = None  # a folder, glob, image or video of real images
    cache: Path | None = None  # the ranges file; default: beside the converted ONNX
    count: int = 64
    batch: int = 8


class ArtifactStore:
    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = default_cache_dir(cache_dir)
        if self.root.exists() and not self.root.is_dir():
            raise SsdTrtError(f"the cache {self.root} is a file, not a folder; {CACHE_HINT}")

    def writable(self, folder: str) -> Path:
        """The cache's ``folder``, made and checked writable before a step that fills it (a
        read-only cache that already holds everything is fine until then)."""
        return writable_folder(self.root / folder, "the cache folder", CACHE_HINT)

    # ------------------------------------------------------------------ fetch

    def fetch(self, name: str, url: str | None = None, force: bool = False) -> Path:
        """A registry model's graph file, downloaded and verified once. ``force`` downloads it
        again and drops what was made from it (exports and their conversions)."""
        spec = get_model(name)
        if force or not self.is_fetched(spec.name):
            self.writable("models")
        graph = fetch_model(spec, self.root, url=url, force=force)
        if force:
            self.drop_exports(spec.name)
        return graph

    def drop_exports(self, name: str) -> list[Path]:
        """Remove a registry model's cached exports and their FP16/INT8 conversions, so the
        next run makes them again."""
        dropped = []
        for folder in (self.root / "onnx", self.root / "prepared"):
            if folder.is_dir():
                for path in folder.iterdir():
                    # The calibration ranges (.calib.json) stay: they are keyed by content.
                    if path.name.startswith(f"{name}.") and path.suffix == ONNX_SUFFIX:
                        path.unlink()
                        dropped.append(path)
        if dropped:
            log.info("dropped %d cached exports and conversions of %s", len(dropped), name)
        return dropped

    def sample_video(self) -> Path:
        if not (self.root / "models" / SAMPLE_VIDEO.name / SAMPLE_VIDEO.graph).is_file():
            self.writable("models")
        return fetch_model(SAMPLE_VIDEO, self.root)

    def is_fetched(self, name: str) -> bool:
        spec = get_model(name)
        return (self.root / "models" / spec.name / spec.graph).exists()

    def tf_model(self, name_or_path: str) -> TfModel:
        """A registry name (fetched on demand) or a local TF graph path."""
        path = Path(name_or_path).expanduser()
        if path.exists():
            return TfModel(path, "auto", path.stem if path.is_file() else path.name)
        if os.sep in name_or_path or path.suffix in _TF_GRAPH_SUFFIXES:
            raise SsdTrtError(f"{name_or_path} does not exist; check the path")
        spec = get_model(name_or_path)
        return TfModel(self.fetch(spec.name), spec.labels, spec.name)

    # ----------------------------------------------------------------- export

    def export(
        self,
        model: TfModel,
        output: Path,
        options: ExportOptions,
        pipeline_config: Path | None = None,
    ) -> ExportSummary:
        return export(model.graph, output, options, pipeline_config)

    def onnx(
        self,
        model: str | os.PathLike[str],
        nms: str = "onnx",
        max_candidates: int | None = None,
        settings: NmsSettings | None = None,
    ) -> Path:
        """An exported .onnx as is; a registry name is fetched and exported into the cache once.

        ``nms`` picks the export for registry names (``none`` for runtimes that run NMS after
        the network), ``max_candidates`` its candidate cap (None: the default; 0: no cap, the
        graph as it was before the cap), ``settings`` its IoU threshold, per-class limit and
        top-K (None: the model's own; each set of settings is its own cached export); a given
        .onnx keeps whatever it was exported with.
        """
        path = Path(model).expanduser()
        if is_engine(path):
            raise SsdTrtError(f"{path} is a TensorRT engine; this step takes the exported .onnx")
        if path.suffix == ONNX_SUFFIX:
            if not path.is_file():
                raise SsdTrtError(f"{path} does not exist; export a model with 'ssd-trt export'")
            return path
        if path.exists() and str(model) not in MODELS:
            raise SsdTrtError(
                f"{path} is not an .onnx file; export it first with 'ssd-trt export {path}'"
            )
        spec = get_model(str(model))
        name = spec.name if nms == "onnx" else f"{spec.name}.nms-{nms}"
        if max_candidates is not None:
            name += f".candidates-{max_candidates or 'all'}"
        if settings is not None:
            name += (
                f".iou-{float(settings.iou_threshold)!r}.per-class-{settings.max_per_class}"
                f".max-det-{settings.max_total}"
            )
        onnx_path = self.root / "onnx" / f"{name}{ONNX_SUFFIX}"
        if onnx_path.exists():
            try:
                if is_current_export(read_onnx_metadata(onnx_path)):
                    return onnx_path
                log.info("%s comes from an older ssd_trt; exporting it again", onnx_path.name)
            except SsdTrtError as exc:  # damaged (disk, a copy cut short): make it again
                log.warning("cached export unreadable (%s); exporting it again", exc)
        self.writable("onnx")
        tf = TfModel(self.fetch(spec.name), spec.labels, spec.name)
        log.info("exporting %s to %s (once)", spec.name, onnx_path)
        options = ExportOptions(
            nms=nms,  # type: ignore[arg-type]
            labels=spec.labels,
            model_name=spec.name,
            max_candidates=max_candidates,
            iou_threshold=None if settings is None else settings.iou_threshold,
            max_per_class=None if settings is None else settings.max_per_class,
            max_detections=None if settings is None else settings.max_total,
        )
        self.export(tf, onnx_path, options)
        return onnx_path

    # -------------------------------------------------------------- precision

    def prepared(
        self,
        onnx_path: Path,
        precision: str,
        calibration: Calibration = Calibration(),
        out_dir: Path | None = None,
        flavour: Flavour = "tensorrt",
    ) -> Path:
        """The ONNX for ``precision``: the FP32 export itself, or a converted copy (cached).

        ``flavour`` picks the INT8 form: ``tensorrt`` for TensorRT and ONNX Runtime's GPU
        providers, ``cpu`` for ONNX Runtime's CPU kernels; both come from one calibration.
        """
        if precision == "int8":  # calibration takes a while: fail before it, not after
            if out_dir is None:
                self.writable("prepared")
            else:
                writable_folder(out_dir)
        return prepare(
            onnx_path,
            precision,
            out_dir or self.root / "prepared",
            calib_images=calibration.images,
            calib_cache=calibration.cache,
            calib_count=calibration.count,
            calib_batch=calibration.batch,
            flavour=flavour,
        )

    # ----------------------------------------------------------------- engine

    def engine(self, onnx_path: Path, options: BuildOptions, api: TrtApi) -> Path:
        """An engine for ``onnx_path`` from the cache, built when missing or unusable.

        The key covers the ONNX's content, the build options, the TensorRT flavour and version
        and the GPU, so another GPU or TensorRT version gets its own engine. A cached engine
        whose sidecar does not match (corrupt, or another TensorRT) is rebuilt, with a message.
        """
        gpu = local_gpu()
        if gpu is None and not options.compute_capability:
            raise SsdTrtError(
                "building a TensorRT engine here needs a CUDA GPU; use backend cpu, or build "
                "ahead of time with 'ssd-trt build --trt tensorrt-rtx --compute-capability SM'"
            )
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        cc = options.compute_capability or (gpu[1] if gpu else None)
        key = engine_cache_key(digest, options, api.flavour, api.version, cc)
        path = self.root / "engines" / f"{key}.engine"
        if path.exists():
            try:
                EngineMetadata.load(path).check_compatible(api, gpu[1] if gpu else None)
                return path
            except SsdTrtError as exc:
                log.warning("cached engine unusable (%s); rebuilding", exc)
        self.writable("engines")
        build_engine(onnx_path, path, options, trt_api=api)
        return path

    def build(
        self,
        model: str,
        output: Path | None,
        options: BuildOptions,
        api: TrtApi,
        calibration: Calibration = Calibration(),
        nms: str | None = None,
    ) -> tuple[Path, Path, EngineMetadata]:
        """``ssd-trt build``: a registry name, TF graph or .onnx -> an engine at ``output``.

        A name or TF graph is exported into the cache first, never into the working directory
        (``nms`` defaults to what the TensorRT flavour can run). Returns the engine, the ONNX it
        was built from (the FP16/INT8 conversion, which ONNX Runtime runs too) and the engine's
        metadata. Options are checked before any fetch, export or calibration.
        """
        if output is not None and output.suffix not in ENGINE_SUFFIXES:
            raise SsdTrtError(
                f"engine file {output} should end in {' or '.join(ENGINE_SUFFIXES)}; "
                "pass e.g. -o model.engine"
            )
        options.validate()
        if options.compute_capability is not None:
            api.check_target(options.compute_capability)
        if options.precision == "int8" and calibration.images:
            check_calibration_source(calibration.images)
        source = Path(model).expanduser()
        if source.suffix == ONNX_SUFFIX:
            if not source.is_file():
                raise SsdTrtError(
                    f"{source} does not exist; export a model with 'ssd-trt export' first"
                )
            if nms:
                raise SsdTrtError(
                    "--nms applies when building from a model name or TF graph; for an "
                    ".onnx, export it again with 'ssd-trt export --nms ...'"
                )
            engine = output or source.with_suffix(".engine")
        else:
            mode = nms or ("onnx" if api.has_nms_layer else "none")
            if mode != "none" and not api.has_nms_layer:
                raise SsdTrtError(
                    f"{api.name} has no NMS layer; build with --nms none (its default)"
                )
            source, name = self._export_for_build(model, mode)
            engine = output or Path(f"{name}.engine")
        preflight(source, api)  # what can fail fast does, before any calibration
        built_from = self.prepared(source, options.precision, calibration, out_dir=engine.parent)
        if built_from != source:
            log.info("%s ONNX (runs in ONNX Runtime too): %s", options.precision, built_from)
        return engine, built_from, build_engine(built_from, engine, options, trt_api=api)

    def _export_for_build(self, model: str, nms: str) -> tuple[Path, str]:
        """The export ``build`` starts from, in the cache, and the model's name: a registry
        name's export is shared with every other verb; a TF graph's is keyed by its content."""
        if model in MODELS and not Path(model).expanduser().exists():
            return self.onnx(model, nms=nms), model
        tf = self.tf_model(model)
        digest = hashlib.sha256(nms.encode())
        for file in _graph_files(tf.graph):
            digest.update(str(file.relative_to(tf.graph.parent)).encode() + b"\0")
            digest.update(file.read_bytes())
        onnx_path = self.root / "onnx" / "graphs" / f"{tf.name}.{digest.hexdigest()[:16]}.onnx"
        try:
            if onnx_path.exists() and is_current_export(read_onnx_metadata(onnx_path)):
                return onnx_path, tf.name
        except SsdTrtError:  # unreadable: exported again below
            pass
        log.info("exporting %s to %s", tf.graph, onnx_path)
        options = ExportOptions(nms=nms, labels=tf.labels, model_name=tf.name)  # type: ignore[arg-type]
        self.export(tf, onnx_path, options)
        return onnx_path, tf.name


def _graph_files(graph: Path) -> list[Path]:
    """The files an export of ``graph`` reads: a SavedModel folder's files, or the graph file,
    a TF.js model's weight shards and the pipeline.config beside it."""
    if graph.is_dir():
        return sorted(p for p in graph.rglob("*") if p.is_file())
    files = [graph]
    if graph.suffix == ".json":
        try:
            manifest = json.loads(graph.read_text(encoding="utf-8")).get("weightsManifest", [])
            shards = [graph.parent / path for group in manifest for path in group["paths"]]
        except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
            shards = []  # the export says what is wrong with it
        files += [shard for shard in shards if shard.is_file()]
    near = graph.parent / "pipeline.config"
    return files + ([near] if near.is_file() else [])
