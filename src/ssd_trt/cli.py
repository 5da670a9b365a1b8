"""The ``ssd-trt`` command line: one verb per task.

Exit codes: 0 success; 1 an unexpected failure, or `compare` tolerances exceeded (FAIL);
2 bad input or environment (a one-line message says what to do); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import SsdTrtError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PRECISION_KEYS = ("fp32", "fp16", "int8")


def _quiet_tensorflow(verbose: bool) -> None:
    # TensorFlow and tf2onnx are chatty at import and conversion time; keep our progress readable.
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def cmd_models(args: argparse.Namespace) -> int:
    from .fetch import default_cache_dir
    from .models import MODELS

    cache = default_cache_dir(args.cache_dir) / "models"
    width = max(len(n) for n in MODELS)
    for spec in MODELS.values():
        here = "cached" if (cache / spec.name / spec.graph).exists() else ""
        print(f"{spec.name:<{width}}  {spec.source:<4}  {here:<6}  {spec.description}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import default_cache_dir, fetch_model
    from .models import get_model

    spec = get_model(args.name)
    path = fetch_model(
        spec,
        default_cache_dir(args.cache_dir),
        url=args.url,
        progress=not args.quiet,
        force=args.force,
    )
    print(path)
    return EXIT_OK


def resolve_model(
    name_or_path: str, cache_dir: str | None, progress: bool
) -> tuple[Path, str, str]:
    """A registry name (fetched on demand) or a local path -> (graph path, label kind, name)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path, "auto", path.stem if path.is_file() else path.name
    from .fetch import default_cache_dir, fetch_model
    from .models import get_model

    looks_like_path = os.sep in name_or_path or Path(name_or_path).suffix in (".pb", ".json")
    if looks_like_path:
        raise SsdTrtError(f"{name_or_path} does not exist; check the path")
    spec = get_model(name_or_path)
    graph = fetch_model(spec, default_cache_dir(cache_dir), progress=progress)
    return graph, spec.labels, spec.name


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, export

    graph, labels, name = resolve_model(args.model, args.cache_dir, progress=not args.quiet)
    output = Path(args.output) if args.output else Path(f"{name}.onnx")
    if output.exists() and output.is_dir():
        raise SsdTrtError(f"output {output} is a directory; pass a file name such as model.onnx")
    options = ExportOptions(
        nms=args.nms,
        max_detections=args.max_detections,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        max_per_class=args.max_per_class,
        labels=args.labels or labels,
        model_name=name,
    )
    pipeline = Path(args.pipeline_config) if args.pipeline_config else None
    if pipeline is not None and not pipeline.is_file():
        raise SsdTrtError(f"pipeline config {pipeline} does not exist")
    summary = export(graph, output, options, pipeline, progress=not args.quiet)
    if not args.quiet:
        print("\n".join(summary.lines()))
    return EXIT_OK


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise SsdTrtError(f"--serve {text!r}: expected HOST:PORT or PORT, e.g. 127.0.0.1:8080")
    return host or "127.0.0.1", int(port)


def run_video(args: argparse.Namespace, source_spec: str | int) -> int:
    """Shared body of ``detect`` and ``webcam``."""
    from .detector import Detector
    from .outputs import JsonLinesOutput, ServeOutput, VideoOutput, WindowOutput, has_display
    from .pipeline import Pipeline
    from .sources import PacedSource, open_source

    show = args.show if args.show is not None else has_display()
    outputs: list = []
    detector = source = None
    try:
        source = open_source(source_spec)
        if args.realtime:
            if source.live:
                raise SsdTrtError("--realtime is for files and images; live sources already are")
            source = PacedSource(source, source.fps or 25.0)
        detector = Detector(
            args.model,
            args.backend,
            score_threshold=args.score_threshold,
            classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
            cache_dir=args.cache_dir,
            precision=args.precision,
            calib_images=args.calib_images,
            progress=not args.quiet,
        )
        if not args.quiet:
            print(
                f"backend: {detector.backend_name}; source: {source.description}", file=sys.stderr
            )
        if args.output:
            outputs.append(VideoOutput(Path(args.output), source.fps))
        if args.json:
            outputs.append(JsonLinesOutput(Path(args.json)))
        if args.serve:
            server = ServeOutput(*_parse_hostport(args.serve))
            outputs.append(server)
            if not args.quiet:
                print(f"serving the live view at {server.url}", file=sys.stderr)
        if show:
            outputs.append(WindowOutput())
        progress = _progress_bar(args, source)
        pipeline = Pipeline(
            detector,
            source,
            outputs,
            sync=args.sync,
            max_frames=args.max_frames,
            on_frame=(lambda r: progress.update(1)) if progress is not None else None,
        )
        outputs = []  # the pipeline owns them now and finalizes them
        try:
            stats = pipeline.run()
        finally:
            if progress is not None:
                progress.close()
        if not args.quiet:
            print(stats.summary(), file=sys.stderr)
        return EXIT_OK
    finally:
        for out in outputs:  # only those created before a failure
            out.abort()
        if source is not None:
            source.close()
        if detector is not None:
            detector.close()


def _progress_bar(args: argparse.Namespace, source):
    if args.quiet:
        return None
    from tqdm import tqdm

    total = getattr(source, "frame_count", None) or None
    return tqdm(total=total, unit="frame", desc="detect", file=sys.stderr, leave=False)


def cmd_detect(args: argparse.Namespace) -> int:
    source = args.source or str(sample_video(args.cache_dir, not args.quiet))
    return run_video(args, source)


def cmd_webcam(args: argparse.Namespace) -> int:
    return run_video(args, args.camera)


def sample_video(cache_dir: str | None, progress: bool) -> Path:
    from .fetch import default_cache_dir, fetch_model
    from .models import SAMPLE_VIDEO

    return fetch_model(SAMPLE_VIDEO, default_cache_dir(cache_dir), progress=progress)


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench
    from .detector import Detector
    from .fsutil import atomic_write

    video = args.video or str(sample_video(args.cache_dir, not args.quiet))
    sizes = _batch_sizes(args.batch_sizes) if args.batch_sizes else [1, 2, 4, 8]
    with Detector(
        args.model,
        args.backend,
        threads=args.threads,
        cache_dir=args.cache_dir,
        precision=args.precision,
        calib_images=args.calib_images,
        progress=not args.quiet,
    ) as detector:
        if not args.quiet:
            print(
                f"benchmarking {detector.model_path.name} on {detector.backend_name}",
                file=sys.stderr,
            )
        report = bench.run(
            detector,
            video,
            sizes,
            iterations=args.iterations,
            max_frames=args.max_frames,
            model=detector.model_path.name,
            paced_fps=args.camera_fps,
        )
    print(report.table())
    if args.json:
        with atomic_write(Path(args.json)) as f:
            f.write(json.dumps(report.to_json(), indent=2).encode() + b"\n")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from .engine import BuildOptions, build_engine
    from .export import ExportOptions, export
    from .quantize import prepare
    from .trt_compat import load_trt

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.int8 and not (args.calib_images or args.calib_cache):
        raise SsdTrtError(
            "--int8 needs --calib-images DIR (real photos or a video), or a --calib-cache"
        )
    api = load_trt(args.trt)
    source = Path(args.model)
    if source.suffix != ".onnx":  # a registry name or TF graph: export it first
        graph, labels, name = resolve_model(args.model, args.cache_dir, progress=not args.quiet)
        nms = args.nms or ("onnx" if api.has_nms_layer else "none")
        source = Path(args.output or f"{name}.engine").with_suffix(".onnx")
        export(
            graph,
            source,
            ExportOptions(nms=nms, labels=labels, model_name=name),
            progress=not args.quiet,
        )
    elif not source.is_file():
        raise SsdTrtError(f"{source} does not exist; export a model with 'ssd-trt export' first")
    elif args.nms:
        raise SsdTrtError(
            "--nms applies when building from a model name or TF graph; for an "
            ".onnx, export it again with 'ssd-trt export --nms ...'"
        )
    engine = Path(args.output) if args.output else source.with_suffix(".engine")
    onnx_for_build = prepare(
        source,
        precision,
        engine.parent,
        calib_images=args.calib_images,
        calib_cache=Path(args.calib_cache) if args.calib_cache else None,
        calib_count=args.calib_count,
        calib_batch=args.calib_batch,
        progress=not args.quiet,
    )
    if onnx_for_build != source and not args.quiet:
        print(f"{precision} ONNX (runs in ONNX Runtime too): {onnx_for_build}", file=sys.stderr)
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
    meta = build_engine(onnx_for_build, engine, options, progress=not args.quiet, trt_api=api)
    if not args.quiet:
        print(
            f"wrote {engine} ({meta.engine_bytes / 1e6:.1f} MB, {meta.trt_flavour} "
            f"{meta.trt_version}, {meta.compute_capability}, {meta.build_seconds:.1f} s) "
            f"and {engine}.json"
        )
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, load_images, parse_per_key, parse_precisions, write_json
    from .detector import resolve_onnx
    from .fetch import default_cache_dir

    precisions = parse_precisions(args.precisions)
    if "int8" in precisions and not args.calib_images:
        raise SsdTrtError(
            "int8 needs --calib-images DIR (real photos or a video, not the compared images)"
        )
    images = load_images(args.images, args.max_images)
    coco = None
    if args.coco_annotations:
        from .evaluate import load_annotations

        coco = load_annotations(Path(args.coco_annotations))
    elif args.max_map_drop:
        raise SsdTrtError("--max-map-drop needs --coco-annotations FILE for the --images")
    onnx_path = resolve_onnx(args.model, args.cache_dir, progress=not args.quiet)
    if onnx_path.suffix != ".onnx":
        raise SsdTrtError(f"compare takes the FP32 .onnx export, not {onnx_path.name}")
    report = compare(
        onnx_path,
        precisions,
        images,
        out_dir=default_cache_dir(args.cache_dir) / "prepared",
        calib_images=args.calib_images,
        atol=parse_per_key(args.atol, "--atol"),
        rtol=parse_per_key(args.rtol, "--rtol"),
        error_stat=args.error_stat,
        score_threshold=args.score_threshold,
        min_match=parse_per_key(args.min_match, "--min-match", PRECISION_KEYS),
        max_drift=parse_per_key(args.max_drift, "--max-drift", PRECISION_KEYS),
        max_map_drop=parse_per_key(args.max_map_drop, "--max-map-drop", PRECISION_KEYS),
        coco=coco,
        coco_images=Path(args.images) if coco is not None else None,
        batch=args.batch,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    print(report.table())
    if args.json:
        write_json(report, Path(args.json))
    return EXIT_OK if report.passed else EXIT_FAILURE


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .bench import machine_info
    from .compare import parse_precisions
    from .detector import Detector
    from .evaluate import EVAL_SCORE_THRESHOLD, METRICS, coco_map, image_paths, load_annotations
    from .fsutil import atomic_write

    requested = [p.strip().lower() for p in args.precision.split(",") if p.strip()]
    precisions = [p for p in parse_precisions(args.precision) if p in requested]
    if "int8" in precisions and not args.calib_images:
        raise SsdTrtError(
            "int8 needs --calib-images DIR (real photos or a video, not the evaluated images)"
        )
    is_engine = Path(args.model).suffix in (".engine", ".plan", ".trt")
    if is_engine and precisions != ["fp32"]:
        raise SsdTrtError(
            "an engine has the one precision it was built with; evaluate the .onnx to compare "
            "precisions"
        )
    coco = load_annotations(Path(args.coco_annotations))
    images_dir = Path(args.images)
    image_paths(coco, images_dir)  # missing images fail before any model work
    results, where = {}, {}
    for precision in precisions:
        with Detector(
            args.model,
            args.backend,
            score_threshold=EVAL_SCORE_THRESHOLD,
            cache_dir=args.cache_dir,
            precision="fp32" if is_engine else precision,
            calib_images=args.calib_images,
            progress=not args.quiet,
        ) as detector:
            if not args.quiet:
                print(f"evaluating {precision} on {detector.backend_name}", file=sys.stderr)
            results[precision] = coco_map(
                coco, images_dir, detector.detect, detector.info.labels, batch=args.batch
            )
            where[precision] = (str(detector.model_path), detector.backend_name)
    first = next(iter(results.values()))
    print(
        f"COCO bbox mAP of {Path(args.model).name} on {first.images} images "
        f"(score >= {EVAL_SCORE_THRESHOLD:g}, {where[precisions[0]][1]})"
    )
    print(f"{'precision':<9}  " + "  ".join(f"{m:>6}" for m in METRICS) + "  detections")
    for precision, r in results.items():
        row = "  ".join(f"{r.metrics[m]:>6.3f}" for m in METRICS)
        print(f"{precision:<9}  {row}  {r.detections:>10}")
    if args.json:
        data = {
            "model": args.model,
            "annotations": str(args.coco_annotations),
            "images": first.images,
            "score_threshold": EVAL_SCORE_THRESHOLD,
            "precisions": {
                p: {
                    "metrics": r.metrics,
                    "images": r.images,
                    "detections": r.detections,
                    "model_path": where[p][0],
                    "backend": where[p][1],
                }
                for p, r in results.items()
            },
            "machine": machine_info(),
        }
        with atomic_write(Path(args.json)) as f:
            f.write(json.dumps(data, indent=2).encode() + b"\n")
    return EXIT_OK


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SsdTrtError(f"--batch-sizes {text!r}: expected positive integers like 1,2,4,8")
    return sizes


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    common.add_argument("-v", "--verbose", action="store_true", help="show library logs too")
    common.add_argument(
        "--cache-dir",
        help="model cache (default: $SSD_TRT_CACHE, $XDG_CACHE_HOME/ssd_trt or ~/.cache/ssd_trt)",
    )

    parser = argparse.ArgumentParser(
        prog="ssd-trt",
        description="Pretrained TF Object Detection API SSDs -> ONNX with NMS -> TensorRT.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser(
        "models",
        parents=[common],
        help="list the known models",
        description="List the known models, their source and cache state.",
    )
    p.set_defaults(func=cmd_models)

    p = verbs.add_parser(
        "fetch",
        parents=[common],
        help="download a known model into the cache",
        description="Download a known model into the cache (no-op when it is already there).",
    )
    p.add_argument("name", help="a model name from 'ssd-trt models'")
    p.add_argument("--url", help="fetch a zoo tarball from this URL instead (a mirror)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_fetch)

    p = verbs.add_parser(
        "export",
        parents=[common],
        help="convert a TF SSD to ONNX with NMS in the graph",
        description=(
            "Convert a TF Object Detection API SSD (registry name, frozen .pb, SavedModel "
            "directory or TF.js model.json) to ONNX: input 'images' float32[N,3,H,W] RGB, "
            "preprocessed; outputs num_detections, detection_boxes, detection_scores, "
            "detection_classes. NMS settings default to the model's pipeline.config."
        ),
    )
    p.add_argument("model", help="registry name or path")
    p.add_argument("-o", "--output", help="ONNX file to write (default: NAME.onnx)")
    p.add_argument(
        "--nms",
        choices=("onnx", "efficient", "none"),
        default="onnx",
        help="onnx: standard NonMaxSuppression (ONNX Runtime, TensorRT); efficient: "
        "EfficientNMS_TRT plugin (TensorRT 10 only); none: end at decoded boxes and scores "
        "(TensorRT-RTX), NMS runs after the engine",
    )
    p.add_argument("--max-detections", type=_positive_int, help="K, detections per image")
    p.add_argument("--score-threshold", type=float, help="drop detections scoring at or below")
    p.add_argument("--iou-threshold", type=float, help="NMS IoU threshold")
    p.add_argument("--max-per-class", type=_positive_int, help="NMS detections per class")
    p.add_argument("--pipeline-config", help="pipeline.config (default: next to the model)")
    p.add_argument(
        "--labels", help="label map: coco, person, or a label_map.pbtxt (default: the model's)"
    )
    p.set_defaults(func=cmd_export)

    video = argparse.ArgumentParser(add_help=False)
    video.add_argument(
        "--model",
        default="ssdlite_mobilenet_v2_coco",
        help="registry name or exported .onnx (default: %(default)s)",
    )
    video.add_argument(
        "--backend",
        default="auto",
        help="auto, cpu, cuda, onnxruntime-tensorrt or tensorrt (default: auto)",
    )
    video.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="minimum score to show (default: %(default)s)",
    )
    video.add_argument("--classes", help="comma-separated class names or ids to keep")
    video.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="run an FP16 or INT8 (Q/DQ) version of the model",
    )
    video.add_argument("--calib-images", help="calibration images for --precision int8")
    video.add_argument("--output", help="write the annotated video here (.mp4 or .avi)")
    video.add_argument("--json", help="write one JSON line per frame here")
    video.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="serve a live page with the annotated stream (e.g. 127.0.0.1:8080)",
    )
    shown = video.add_mutually_exclusive_group()
    shown.add_argument(
        "--show",
        dest="show",
        action="store_true",
        default=None,
        help="open a window (default: when a display is available)",
    )
    shown.add_argument("--no-show", dest="show", action="store_false", help="no window")
    video.add_argument(
        "--sync",
        action="store_true",
        help="plain capture/infer/draw loop instead of the async pipeline",
    )
    video.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    video.add_argument(
        "--realtime",
        action="store_true",
        help="play a file at its own frame rate, like a camera (stale frames are dropped)",
    )

    p = verbs.add_parser(
        "detect",
        parents=[common, video],
        help="detect objects in a video, stream or images",
        description="Run the detector over a video file, an RTSP/HTTP stream URL, a webcam "
        "index, an image, a directory of images or a glob. q or Esc in the window quits.",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="video file, stream URL, webcam index, image, dir or glob "
        "(default: the sample video, bikes.mp4, fetched once)",
    )
    p.set_defaults(func=cmd_detect)

    p = verbs.add_parser(
        "webcam",
        parents=[common, video],
        help="live detection on a webcam",
        description="Live detection on a webcam, in a window (q or Esc quits).",
    )
    p.add_argument("camera", nargs="?", type=int, default=0, help="camera index (default: 0)")
    p.set_defaults(func=cmd_webcam)

    p = verbs.add_parser(
        "build",
        parents=[common],
        help="build a TensorRT engine (FP32, FP16 or INT8)",
        description="Build a TensorRT or TensorRT-RTX engine from an exported ONNX (or a model "
        "name / TF graph, exported first). FP16 converts the ONNX to float16 tensors; INT8 "
        "inserts Q/DQ nodes with entropy calibration on real images. Writes the engine, a JSON "
        "metadata sidecar, and the converted ONNX beside it.",
    )
    p.add_argument("model", help="exported .onnx, registry name or TF graph")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.engine)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="float16 network")
    prec.add_argument("--int8", action="store_true", help="INT8 Q/DQ network (calibrated)")
    p.add_argument("--calib-images", help="folder, glob or video of real calibration images")
    p.add_argument("--calib-cache", help="calibration cache file (default: beside the engine)")
    p.add_argument(
        "--calib-count",
        type=_positive_int,
        default=64,
        help="calibration images to use (default: %(default)s)",
    )
    p.add_argument(
        "--calib-batch",
        type=_positive_int,
        default=8,
        help="calibration batch size (default: %(default)s)",
    )
    p.add_argument("--min-batch", type=_positive_int, default=1, help="profile min batch")
    p.add_argument("--opt-batch", type=_positive_int, help="profile opt batch (default: min)")
    p.add_argument(
        "--max-batch",
        type=_positive_int,
        default=8,
        help="profile max batch (default: %(default)s)",
    )
    p.add_argument("--workspace", type=_positive_int, help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file, read and updated")
    p.add_argument(
        "--nms",
        choices=("onnx", "efficient", "none"),
        help="NMS mode when exporting a model name or TF graph (default: onnx, or "
        "none on TensorRT-RTX, which has no NMS layer)",
    )
    p.add_argument(
        "--compute-capability",
        metavar="SM",
        help="build ahead of time for this GPU, e.g. sm86 or sm89 (TensorRT-RTX)",
    )
    p.add_argument(
        "--trt",
        choices=("auto", "tensorrt", "tensorrt-rtx"),
        default="auto",
        help="which TensorRT to use (default: tensorrt, else tensorrt-rtx)",
    )
    p.set_defaults(func=cmd_build)

    p = verbs.add_parser(
        "compare",
        parents=[common],
        help="accuracy of FP16/INT8 variants against FP32 (tensors and detections)",
        description="Build the FP16/INT8 variants of an exported ONNX and compare each with "
        "FP32 on real images: per output tensor (Polygraphy, ONNX Runtime CPU runners; TensorRT "
        "runners where an engine can run here) and per detection (matched by class and IoU >= "
        "0.5 at --score-threshold). Prints a table and PASS or FAIL. Default tolerances: match "
        "rate >= 0.9 (fp16) / 0.8 (int8); mean score drift of matched detections <= 0.02 (fp16) "
        "/ 0.05 (int8); with --coco-annotations, mAP drop <= 0.01 (fp16) / 0.03 (int8). Tensor "
        "tolerances are reported and gate the verdict only when given (the detection tensors "
        "come after TopK, so a tiny score change reorders rows). Exit 0 on PASS, 1 when a "
        "tolerance is exceeded (usable in CI), 2 on bad input.",
    )
    p.add_argument("model", help="exported FP32 .onnx (or a registry name)")
    p.add_argument(
        "--precisions",
        default="fp32,fp16",
        help="comma-separated precisions; fp32 is the reference (default: %(default)s)",
    )
    p.add_argument("--images", help="folder (or glob or video) of real images to compare on")
    p.add_argument(
        "--max-images",
        type=_positive_int,
        default=64,
        help="use at most this many images (default: %(default)s)",
    )
    p.add_argument("--calib-images", help="calibration images for int8 (not the --images)")
    p.add_argument(
        "--atol",
        action="append",
        metavar="[TENSOR=]X",
        help="absolute tolerance, for all tensors or one (repeatable, e.g. "
        "--atol detection_scores=0.01); reported at 1e-3 when not given",
    )
    p.add_argument(
        "--rtol",
        action="append",
        metavar="[TENSOR=]X",
        help="relative tolerance, like --atol (reported at 1e-3 when not given)",
    )
    p.add_argument(
        "--error-stat",
        choices=("elemwise", "max", "mean", "median"),
        default="mean",
        help="tensor error statistic checked against atol/rtol (default: %(default)s)",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="detections compared score at least this (default: %(default)s)",
    )
    p.add_argument(
        "--min-match",
        action="append",
        metavar="[PREC=]X",
        help="minimum match rate, matched / (matched + lost + gained), e.g. 0.9 or int8=0.75",
    )
    p.add_argument(
        "--max-drift",
        action="append",
        metavar="[PREC=]X",
        help="maximum mean |score drift| of matched detections, e.g. 0.02 or fp16=0.01",
    )
    p.add_argument(
        "--max-map-drop",
        action="append",
        metavar="[PREC=]X",
        help="maximum COCO AP drop vs fp32 (needs --coco-annotations)",
    )
    p.add_argument("--coco-annotations", help="COCO instances json of --images: adds mAP")
    p.add_argument(
        "--batch", type=_positive_int, default=8, help="images per inference (default: 8)"
    )
    p.add_argument("--json", help="write all numbers here")
    p.set_defaults(func=cmd_compare)

    p = verbs.add_parser(
        "eval",
        parents=[common],
        help="COCO mAP of a model, per precision",
        description="COCO bbox mAP (AP, AP50, AP75, APs, APm, APl; pycocotools) of a registry "
        "model, exported .onnx or engine on annotated images, for each requested precision, at "
        "score >= 0.001. --json adds image and detection counts and machine details.",
    )
    p.add_argument("model", help="registry name, exported .onnx or engine")
    p.add_argument("--coco-annotations", required=True, help="COCO instances json")
    p.add_argument("--images", required=True, help="folder of the annotated images")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated precisions, e.g. fp32,fp16,int8 (default: %(default)s)",
    )
    p.add_argument("--calib-images", help="calibration images for int8 (not the --images)")
    p.add_argument(
        "--backend",
        default="cpu",
        help="auto, cpu, cuda, onnxruntime-tensorrt or tensorrt (default: cpu, reproducible)",
    )
    p.add_argument(
        "--batch", type=_positive_int, default=8, help="images per inference (default: 8)"
    )
    p.add_argument("--json", help="write the metrics here")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser(
        "bench",
        parents=[common],
        help="latency, throughput, stage costs, sync vs async FPS",
        description="Benchmark a model and backend: latency p50/p90/p99 and throughput per "
        "batch size, Detector.detect overhead, per-stage costs over a video, and sync vs async "
        "pipeline FPS. Prints a table; --json writes results with machine details.",
    )
    p.add_argument(
        "--model",
        default="ssdlite_mobilenet_v2_coco",
        help="registry name or exported .onnx (default: %(default)s)",
    )
    p.add_argument(
        "--backend", default="auto", help="auto, cpu, cuda, onnxruntime-tensorrt or tensorrt"
    )
    p.add_argument("--video", help="video for the pipeline runs (default: the sample video)")
    p.add_argument("--batch-sizes", help="comma-separated batch sizes (default: 1,2,4,8)")
    p.add_argument(
        "--iterations",
        type=_positive_int,
        default=50,
        help="timed runs per batch size (default: %(default)s)",
    )
    p.add_argument("--threads", type=_positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-frames", type=_positive_int, help="frames per pipeline run")
    p.add_argument(
        "--camera-fps",
        type=float,
        help="deliver the video at this rate, like a camera (default: as fast as it decodes)",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="benchmark an FP16 or INT8 (Q/DQ) version of the model",
    )
    p.add_argument("--calib-images", help="calibration images for --precision int8")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_tensorflow(args.verbose)
    try:
        return int(args.func(args))
    except SsdTrtError as exc:
        print(f"ssd-trt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ssd-trt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.verbose:
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"ssd-trt: error: unexpected {type(exc).__name__}: {message} "
            "(run with --verbose for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
