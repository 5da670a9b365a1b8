"""One function per verb: parse what argparse gave, make one library call, print the result.

Results go to stdout; progress and notes go through logging (stderr), which -q quiets.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..batching import default_max_batch
from ..contract import ONNX_SUFFIX, is_engine
from ..detector import Detector
from ..errors import SsdTrtError
from ..fsutil import check_writable
from ..model.export import ExportOptions
from ..model.registry import MODELS
from ..precision.engine import BuildOptions
from ..precision.trt_compat import load_trt
from ..scale.batch import BatchStats, RayBatchJob, run_ray_batch
from ..scale.serving import ServeConfig, serve_until_interrupted
from ..scale.triton import write_repository
from ..source_names import read_source_list
from ..store import ArtifactStore, Calibration
from ..video.app import FoundSummary, MultiJob, VideoJob, parse_hostport, run_video
from ..video.decode import choose_for_sources
from ..video.outputs import FrameResult
from ..video.shards import run_sharded
from ..video.stats import RunStats
from .console import (
    EXIT_OK,
    human_stream,
)
from .groups import track_settings
from .measure import cmd_bench, cmd_compare, cmd_eval

log = logging.getLogger(__name__)


def cmd_models(args: argparse.Namespace) -> int:
    store = ArtifactStore(args.cache_dir)
    width = max(len(n) for n in MODELS)
    print(f"{'name':<{width}}  {'from':<4}  {'cache':<6}  description")
    for spec in MODELS.values():
        here = "cached" if store.is_fetched(spec.name) else "-"
        print(f"{spec.name:<{width}}  {spec.source:<4}  {here:<6}  {spec.description}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    print(ArtifactStore(args.cache_dir).fetch(args.name, url=args.url, force=args.force))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    store = ArtifactStore(args.cache_dir)
    pipeline = Path(args.pipeline_config) if args.pipeline_config else None
    if pipeline is not None and not pipeline.is_file():
        raise SsdTrtError(f"pipeline config {pipeline} does not exist")
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise SsdTrtError(f"output {output} is a directory; pass a file name such as model.onnx")
    if output is not None and output.suffix != ONNX_SUFFIX:
        raise SsdTrtError(f"output {output} should end in .onnx; pass e.g. -o model.onnx")
    if output is not None:
        check_writable(output)  # before the fetch and the conversion
    model = store.tf_model(args.model)
    options = ExportOptions(
        nms=args.nms,
        max_detections=args.max_detections,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        max_per_class=args.max_per_class,
        labels=args.labels or model.labels,
        model_name=model.name,
    )
    summary = store.export(model, output or Path(f"{model.name}.onnx"), options, pipeline)
    print("\n".join(summary.lines()))
    return EXIT_OK


def _detector_factory(args: argparse.Namespace) -> Callable[[], Detector]:
    """The detector the options describe, made where it runs: a partial, so that it also
    reaches the processes of --processes."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    return functools.partial(
        Detector,
        args.model,
        args.backend,
        score_threshold=args.score_threshold,
        classes=classes,
        cache_dir=args.cache_dir,
        precision=args.precision,
        calib_images=args.calib_images,
        iou=args.iou,
        max_det=args.max_det,
        max_per_class=args.max_per_class,
        max_batch=args.max_batch,  # None: the backend's default (batching.py)
    )


def _video(args: argparse.Namespace, source: str | int, decode: str = "cpu") -> int:
    track = track_settings(args)
    if args.json == "":  # --json without FILE is for --output-dir
        raise SsdTrtError("--json needs a FILE for one source (or pass --output-dir DIR)")
    job = VideoJob(
        source=source,
        decode=decode,
        output=args.output or None,  # a str: a trailing slash means a folder for images
        json=Path(args.json) if args.json else None,
        serve=parse_hostport(args.serve) if args.serve else None,
        token=args.token,
        show=args.show,
        sync=args.sync,
        realtime=getattr(args, "realtime", False),
        loop=getattr(args, "loop", False),
        max_frames=args.max_frames,
        save_dir=Path(args.save_dir) if getattr(args, "save_dir", None) else None,
        max_batch=getattr(args, "max_batch", None),
        max_wait_ms=getattr(args, "batch_wait_ms", None),
        track=track,
    )
    found = FoundSummary()

    def on_result(result: FrameResult) -> None:
        line = found.add(result)
        if line is not None:  # an image: what it holds, as soon as it is known
            print(line, file=human, flush=True)

    human = human_stream(args)
    try:
        stats = run_video(job, _detector_factory(args), on_result)
    except KeyboardInterrupt:
        _print_found(
            found, human
        )  # what it found up to Ctrl-C or SIGTERM (run_video logged the rest)
        raise
    log.info("%s", stats.summary())
    log.info("%s", stats.stages_line())
    _print_found(found, human, stats.tracks)
    return EXIT_OK


def _print_found(found: FoundSummary, human: TextIO, tracks: dict[str, int] | None = None) -> None:
    if found.frames > 1:  # a video or several images: the totals too
        print("\n".join(found.lines(tracks)), file=human, flush=True)


def cmd_detect(args: argparse.Namespace) -> int:
    track_settings(args)  # bad tracking input fails first, before a sample video download
    specs = list(args.source) + (read_source_list(Path(args.sources)) if args.sources else [])
    # None: the sample video
    choices = choose_for_sources(args.decode, args.backend, specs or [None])
    decoders = tuple(c.kind for c in choices)
    if args.ray or args.output_dir or len(specs) > 1:
        return _many(args, specs, decoders)
    if args.processes > 1:
        raise SsdTrtError(
            "--processes spreads several sources over processes; one source runs in one "
            "(drop --processes, or pass more sources with --output-dir DIR)"
        )
    source = specs[0] if specs else str(ArtifactStore(args.cache_dir).sample_video())
    return _video(args, source, decoders[0])


def _many(args: argparse.Namespace, specs: list[str], decoders: tuple[str, ...] = ()) -> int:
    """Several sources: per-source outputs in --output-dir, frames batched across sources
    (video/multi.py), or spread over a Ray cluster with --ray (scale/batch.py)."""
    track = track_settings(args)
    if not specs:
        raise SsdTrtError("no sources given; pass files, folders, URLs or cameras, or --sources")
    if not args.output_dir:
        raise SsdTrtError("several sources write per-source files: pass --output-dir DIR")
    if args.json:
        raise SsdTrtError(
            f"with --output-dir, --json takes no FILE ({args.json!r}): each source gets "
            "DIR/NAME.jsonl; put --json after the sources"
        )
    if args.output:
        raise SsdTrtError("--output is for one source; with --output-dir each gets DIR/NAME.mp4")
    if args.save_dir:
        raise SsdTrtError(
            "--save-dir is for one source (a folder of images is one); with --output-dir each "
            "source gets DIR/NAME.mp4"
        )
    stats: BatchStats | RunStats
    if args.ray and track is not None:
        raise SsdTrtError(
            "--track cannot run with --ray: a video's chunks go to several Ray actors, out of "
            "frame order; drop --ray to track (one host batches many sources), or drop --track"
        )
    if args.ray and args.processes > 1:
        raise SsdTrtError("--processes and --ray both spread the sources; pick one")
    if args.ray:
        if (args.iou, args.max_det, args.max_per_class) != (None, None, None):
            raise SsdTrtError(
                "--iou, --max-det and --max-per-class do not reach Ray workers yet; drop them "
                "with --ray, or export the model with those NMS settings ('ssd-trt export')"
            )
        stats = run_ray_batch(
            RayBatchJob(
                sources=tuple(specs),
                output_dir=Path(args.output_dir),
                json=args.json == "",
                address=args.address,
                model=args.model,
                backend=args.backend,
                score_threshold=args.score_threshold,
                max_frames=args.max_frames,
                max_batch=args.max_batch or default_max_batch(on_gpu=False),
            )
        )
    else:
        stats = run_sharded(
            MultiJob(
                sources=tuple(specs),
                output_dir=Path(args.output_dir),
                json=args.json == "",
                serve=parse_hostport(args.serve) if args.serve else None,
                token=args.token,
                realtime=args.realtime,
                max_frames=args.max_frames,
                max_batch=args.max_batch,
                max_wait_ms=args.batch_wait_ms,
                track=track,
                decode=decoders,
            ),
            _detector_factory(args),
            args.processes,
        )
    log.info("%s", stats.summary())
    if isinstance(stats, RunStats):
        log.info("%s", stats.stages_line())
    return EXIT_OK


def cmd_webcam(args: argparse.Namespace) -> int:
    if not str(args.camera).isdigit():
        raise SsdTrtError(
            f"webcam takes a camera index such as 0, not {args.camera!r}; for a file or stream "
            f"use: ssd-trt detect {args.camera}"
        )
    choose_for_sources(args.decode, args.backend, [int(args.camera)])
    return _video(args, int(args.camera))


def cmd_build(args: argparse.Namespace) -> int:
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.int8 and not (args.calib_images or args.calib_cache):
        raise SsdTrtError(
            "--int8 needs --calib-images DIR (real photos or a video), or a --calib-cache"
        )
    if args.output:
        check_writable(args.output)  # before the export, calibration and build
    options = BuildOptions(
        precision=precision,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch or args.min_batch,
        max_batch=args.max_batch,
        workspace=args.workspace * (1 << 20) if args.workspace else None,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        compute_capability=args.compute_capability,
        verbose=args.verbose,
    )
    calibration = Calibration(
        images=args.calib_images,
        cache=Path(args.calib_cache) if args.calib_cache else None,
        count=args.calib_count,
        batch=args.calib_batch,
    )
    engine, _, meta = ArtifactStore(args.cache_dir).build(
        args.model,
        Path(args.output) if args.output else None,
        options,
        load_trt(args.trt),
        calibration,
        nms=args.nms,
    )
    print(
        f"wrote {engine} ({meta.engine_bytes / 1e6:.1f} MB, {meta.trt_flavour} "
        f"{meta.trt_version}, {meta.compute_capability}, {meta.build_seconds:.1f} s) "
        f"and {engine}.json"
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    serve_until_interrupted(
        ServeConfig(
            model=args.model,
            backend=args.backend,
            score_threshold=args.score_threshold,
            cache_dir=args.cache_dir,
            host=args.host,
            port=args.port,
            token=args.token,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            max_batch=args.max_batch,
            batch_wait_s=args.batch_wait_ms / 1000,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            address=args.address,
        )
    )
    return EXIT_OK


def cmd_triton_repo(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not model.is_file() or not (is_engine(model) or model.suffix == ONNX_SUFFIX):
        model = ArtifactStore(args.cache_dir).onnx(args.model)
    folder = write_repository(
        model, Path(args.dir), name=args.name, max_batch=args.max_batch, force=args.force
    )
    print(f"wrote {folder}/config.pbtxt and {folder}/1/")
    return EXIT_OK


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": cmd_models,
    "fetch": cmd_fetch,
    "export": cmd_export,
    "detect": cmd_detect,
    "webcam": cmd_webcam,
    "build": cmd_build,
    "compare": cmd_compare,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "triton-repo": cmd_triton_repo,
    "serve": cmd_serve,
}
