"""The verbs that measure: bench (speed), compare (precisions against FP32) and eval (COCO mAP)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..contract import PRECISIONS, parse_precisions
from ..detector import Detector
from ..errors import SsdTrtError
from ..model.registry import MODELS
from ..precision.quantize import check_calibration_source
from ..quality import bench
from ..quality.compare import compare, load_images, parse_per_key
from ..quality.evaluate import evaluate, load_annotations
from ..quality.report import write_json
from ..runtime.registry import canonical_backend
from ..store import ArtifactStore, Calibration
from .console import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    check_json_output,
    human_stream,
    write_json_output,
)

log = logging.getLogger(__name__)


def cmd_bench(args: argparse.Namespace) -> int:
    bench.check_batch_memory(args.batch_sizes)
    check_json_output(args)
    video = args.video or str(ArtifactStore(args.cache_dir).sample_video())
    requested = list(dict.fromkeys(p.strip().lower() for p in args.precision.split(",")))
    if len(requested) > 1:
        return _bench_precisions(args, parse_precisions(args.precision), video)
    parse_precisions(args.precision)  # one clear error for an unknown name
    # One precision: the full benchmark; fp32 also lets an engine run in its own precision.
    args.precision = {"fp32": None}.get(requested[0], requested[0])
    if canonical_backend(args.backend) == "cuda":  # the GPU paths side by side
        report = bench.compare_backends(
            args.model,
            bench.first_frames(video, 16),
            video=video,
            batch_sizes=args.batch_sizes,
            iterations=args.iterations,
            cache_dir=args.cache_dir,
            max_frames=args.max_frames,
        )
    else:
        with Detector(
            args.model,
            args.backend,
            threads=args.threads,
            cache_dir=args.cache_dir,
            precision=args.precision,
            calib_images=args.calib_images,
            max_batch=max(args.batch_sizes),
        ) as detector:
            log.info("benchmarking %s on %s", detector.model_path, detector.backend_name)
            report = bench.run(
                detector,
                video,
                args.batch_sizes,
                iterations=args.iterations,
                max_frames=args.max_frames,
                paced_fps=args.camera_fps,
            )
    print(report.table(), file=human_stream(args))
    if args.json:
        write_json_output(args.json, report.to_json())
    return EXIT_OK


def _bench_precisions(args: argparse.Namespace, precisions: list[str], video: str) -> int:
    store = ArtifactStore(args.cache_dir)
    # The network alone is the --nms none export of a registry model; a given file runs as is.
    network = str(store.onnx(args.model, nms="none")) if args.model in MODELS else args.model

    def open_detector(model: str, precision: str) -> Detector:
        return Detector(
            model,
            args.backend,
            threads=args.threads,
            cache_dir=args.cache_dir,
            precision=precision,
            calib_images=args.calib_images,
        )

    report = bench.precision_table(
        open_detector,
        precisions,
        bench.first_frame(video),
        network,
        args.model,
        iterations=args.iterations,
    )
    print(report.table(), file=human_stream(args))
    if args.json:
        write_json_output(args.json, report.to_json())
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    precisions = parse_precisions(args.precisions)
    check_json_output(args)
    if "int8" in precisions and not args.calib_images:
        raise SsdTrtError(
            "int8 needs --calib-images DIR (real photos or a video, not the compared images)"
        )
    if "int8" in precisions:
        check_calibration_source(args.calib_images)  # before the export and the fp32 runs
    images = load_images(args.images, args.max_images)
    coco = None
    if args.coco_annotations:
        coco = load_annotations(Path(args.coco_annotations))
    elif args.max_map_drop:
        raise SsdTrtError("--max-map-drop needs --coco-annotations FILE for the --images")
    store = ArtifactStore(args.cache_dir)
    onnx_path = store.onnx(args.model)
    report = compare(
        onnx_path,
        precisions,
        images,
        store=store,
        calibration=Calibration(images=args.calib_images),
        atol=parse_per_key(args.atol, "--atol"),
        rtol=parse_per_key(args.rtol, "--rtol"),
        error_stat=args.error_stat,
        score_threshold=args.score_threshold,
        min_match=parse_per_key(args.min_match, "--min-match", PRECISIONS),
        max_drift=parse_per_key(args.max_drift, "--max-drift", PRECISIONS),
        max_map_drop=parse_per_key(args.max_map_drop, "--max-map-drop", PRECISIONS),
        coco=coco,
        coco_images=Path(args.images) if coco is not None else None,
        batch=args.batch,
        verbose=args.verbose,
    )
    print(report.table(), file=human_stream(args))
    if args.json:
        write_json(report, args.json)
    return {"PASS": EXIT_OK, "FAIL": EXIT_FAILURE}.get(report.verdict, EXIT_USAGE)


def cmd_eval(args: argparse.Namespace) -> int:
    requested = {p.strip().lower() for p in args.precision.split(",")}
    precisions = [p for p in parse_precisions(args.precision) if p in requested]
    check_json_output(args)
    report = evaluate(
        args.model,
        precisions,
        Path(args.coco_annotations),
        Path(args.images),
        backend=args.backend,
        cache_dir=args.cache_dir,
        calib_images=args.calib_images,
        batch=args.batch,
    )
    print(report.table(), file=human_stream(args))
    if args.json:
        write_json_output(args.json, {**report.to_json(), "machine": bench.machine_info()})
    return EXIT_OK
