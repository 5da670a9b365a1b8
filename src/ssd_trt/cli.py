"""The ``ssd-trt`` command line: one verb per task.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or environment (a one-line message
says what to do), 130 interrupted.
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
        parents=[common],
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


if __name__ == "__main__":
    sys.exit(main())
