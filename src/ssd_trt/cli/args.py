"""The command line's arguments: shared groups defined once, then one small parser per verb.

Choices come from the single constants in contract and runtime.select, so a new precision or
backend shows up here by itself.
"""

from __future__ import annotations

import argparse
import os

from ..batching import HOST_MAX_BATCH
from ..contract import NMS_MODES
from ..detector import DEFAULT_MODEL
from ..precision.trt_compat import FLAVOURS
from .groups import (
    backend_group,
    batch_sizes,
    common,
    detection_group,
    many_sources_group,
    positive_int,
    precision_group,
    unit_float,
    video_parent,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssd-trt",
        parents=[common(suppress=False)],
        description="Pretrained TF Object Detection API SSDs -> ONNX with NMS -> TensorRT, run "
        "on live video. Exit codes: 0 success; 1 unexpected failure or compare FAIL; 2 bad "
        "input (one line says what to do); 130 interrupted.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    shared = common(suppress=True)

    def verb(name: str, help: str, description: str, *parents: argparse.ArgumentParser):
        return verbs.add_parser(
            name, parents=[shared, *parents], help=help, description=description
        )

    verb("models", "list the known models", "List the known models, their source and cache state.")

    p = verb(
        "fetch",
        "download a known model into the cache",
        "Download a known model into the cache (no-op when it is already there).",
    )
    p.add_argument("name", help="a model name from 'ssd-trt models'")
    p.add_argument("--url", help="fetch a zoo tarball from this URL or local file instead")
    p.add_argument("--force", action="store_true", help="download again even if cached")

    p = verb(
        "export",
        "convert a TF SSD to ONNX with NMS in the graph",
        "Convert a TF Object Detection API SSD (registry name, frozen .pb, SavedModel "
        "directory or TF.js model.json) to ONNX: input 'images' float32[N,3,H,W] RGB, "
        "preprocessed; outputs num_detections, detection_boxes, detection_scores, "
        "detection_classes. NMS settings default to the model's pipeline.config.",
    )
    p.add_argument("model", help="registry name or path")
    p.add_argument("-o", "--output", help="ONNX file to write (default: NAME.onnx)")
    p.add_argument(
        "--nms",
        choices=NMS_MODES,
        default="onnx",
        help="onnx: standard NonMaxSuppression (ONNX Runtime, TensorRT); efficient: "
        "EfficientNMS_TRT plugin (TensorRT 10 only); none: end at decoded boxes and scores "
        "(TensorRT-RTX, the GPU fast path), NMS runs after the network",
    )
    nms = p.add_argument_group("NMS settings (default: the model's own)")
    nms.add_argument("--max-detections", type=positive_int, help="K, detections per image")
    nms.add_argument(
        "--score-threshold", type=unit_float, help="drop detections scoring at or below (0..1)"
    )
    nms.add_argument("--iou-threshold", type=unit_float, help="NMS IoU threshold (0..1)")
    nms.add_argument("--max-per-class", type=positive_int, help="NMS detections per class")
    p.add_argument("--pipeline-config", help="pipeline.config (default: next to the model)")
    p.add_argument(
        "--labels", help="label map: coco, person, or a label_map.pbtxt (default: the model's)"
    )

    p = verb(
        "detect",
        "detect objects in a video, stream or images",
        "Run the detector over a video file, an RTSP/HTTP stream URL, a webcam index, an "
        "image, a directory of images or a glob. q or Esc in the window quits.",
        video_parent(live=False),
    )
    p.add_argument(
        "source",
        nargs="*",
        help="video files, stream URLs, webcam indexes, images, dirs or globs, in any mix "
        "(default: the sample video, bikes.mp4, fetched once)",
    )
    many_sources_group(p)

    p = verb(
        "serve",
        "serve detection over HTTP with Ray Serve",
        "A Ray Serve application: POST /detect with JPEG or PNG bytes returns the detections "
        "as one JSON line's record; GET /healthz. Starts a local Ray on 127.0.0.1 unless "
        "--address joins a cluster. Ctrl-C stops it. Needs pip install 'ssd-trt[ray]'.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registry name, exported .onnx or engine (default: %(default)s)",
    )
    backend_group(p)
    detection_group(p, 0.5)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    net.add_argument("--port", type=positive_int, default=8000, help="(default: %(default)s)")
    net.add_argument(
        "--token",
        default=os.environ.get("SSD_TRT_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on /detect (default: $SSD_TRT_TOKEN)",
    )
    net.add_argument(
        "--max-body-mb", type=float, default=20.0, help="largest accepted image (default: 20)"
    )
    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--address", help="join this Ray cluster (default: start a local Ray)")
    cluster.add_argument(
        "--replicas", type=positive_int, default=1, help="replicas (default: %(default)s)"
    )
    cluster.add_argument("--min-replicas", type=int, help="autoscale from this many ...")
    cluster.add_argument("--max-replicas", type=positive_int, help="... to this many")
    cluster.add_argument(
        "--max-batch",
        type=positive_int,
        default=HOST_MAX_BATCH,
        help="requests batched into one detector call per replica, and the replica Detector's "
        "batch (a TensorRT engine's profile) (default: %(default)s)",
    )
    cluster.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="wait this long for a batch to fill (default: %(default)g)",
    )

    p = verb(
        "triton-repo",
        "write a Triton Inference Server model repository",
        "Write DIR/NAME/config.pbtxt (dynamic batching; input and output names, types and dims "
        "from the ONNX) and DIR/NAME/1/model.onnx (platform onnxruntime_onnx) or, for an engine "
        "from 'ssd-trt build', 1/model.plan (tensorrt_plan).",
    )
    p.add_argument("model", help="exported .onnx, registry name or built engine")
    p.add_argument("dir", help="the model repository folder (created if needed)")
    p.add_argument("--name", help="model name in the repository (default: the model's)")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        help="max_batch_size for an ONNX (an engine's is its profile's max; default: 8)",
    )
    p.add_argument("--force", action="store_true", help="replace DIR/NAME if it exists")

    p = verb(
        "webcam",
        "live detection on a webcam",
        "Live detection on a webcam, in a window (q or Esc quits). For files and streams use "
        "'ssd-trt detect SOURCE'.",
        video_parent(live=True),
    )
    p.add_argument("camera", nargs="?", default="0", help="camera index (default: 0)")

    p = verb(
        "build",
        "build a TensorRT engine (FP32, FP16 or INT8)",
        "Build a TensorRT or TensorRT-RTX engine from an exported ONNX (or a model name / TF "
        "graph, exported first). FP16 converts the ONNX to float16 tensors; INT8 inserts Q/DQ "
        "nodes with entropy calibration on real images. Writes the engine, a JSON metadata "
        "sidecar, and the converted ONNX beside it.",
    )
    p.add_argument("model", help="exported .onnx, registry name or TF graph")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.engine)")
    prec = p.add_argument_group("precision").add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="float16 network")
    prec.add_argument("--int8", action="store_true", help="INT8 Q/DQ network (calibrated)")
    calib = p.add_argument_group("calibration (--int8)")
    calib.add_argument("--calib-images", help="folder, glob or video of real calibration images")
    calib.add_argument("--calib-cache", help="calibration cache file (default: beside the engine)")
    calib.add_argument(
        "--calib-count",
        type=positive_int,
        default=64,
        help="calibration images to use (default: %(default)s)",
    )
    calib.add_argument(
        "--calib-batch",
        type=positive_int,
        default=8,
        help="calibration batch size (default: %(default)s)",
    )
    eng = p.add_argument_group("engine")
    eng.add_argument("--min-batch", type=positive_int, default=1, help="profile min batch")
    eng.add_argument("--opt-batch", type=positive_int, help="profile opt batch (default: min)")
    eng.add_argument(
        "--max-batch",
        type=positive_int,
        default=HOST_MAX_BATCH,
        help="the engine's profile max batch: the largest batch it runs (default: %(default)s)",
    )
    eng.add_argument("--workspace", type=positive_int, help="builder workspace limit in MiB")
    eng.add_argument("--timing-cache", help="timing cache file, read and updated")
    eng.add_argument(
        "--nms",
        choices=NMS_MODES,
        help="NMS mode when exporting a model name or TF graph (default: onnx, or "
        "none on TensorRT-RTX, which has no NMS layer)",
    )
    eng.add_argument(
        "--compute-capability",
        metavar="SM",
        help="build ahead of time for this GPU, e.g. sm86 or sm89 (TensorRT-RTX)",
    )
    eng.add_argument(
        "--trt",
        choices=("auto", *FLAVOURS),
        default="auto",
        help="which TensorRT to use (default: tensorrt, else tensorrt-rtx)",
    )

    p = verb(
        "compare",
        "accuracy of FP16/INT8 variants against FP32 (tensors and detections)",
        "Build the FP16/INT8 variants of an exported ONNX and compare each with FP32 on real "
        "images: per output tensor (Polygraphy, ONNX Runtime CPU runners; TensorRT runners "
        "where an engine can run here) and per detection (matched by class and IoU >= 0.5 at "
        "--score-threshold). Prints a table and PASS or FAIL. Default tolerances: match rate >= "
        "0.9 (fp16) / 0.8 (int8); mean score drift of matched detections <= 0.02 (fp16) / 0.05 "
        "(int8); with --coco-annotations, mAP drop <= 0.01 (fp16) / 0.03 (int8). Tensor "
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
        type=positive_int,
        default=64,
        help="use at most this many images (default: %(default)s)",
    )
    p.add_argument("--calib-images", help="calibration images for int8 (not the --images)")
    tol = p.add_argument_group("tolerances")
    tol.add_argument(
        "--atol",
        action="append",
        metavar="[TENSOR=]X",
        help="absolute tolerance, for all tensors or one (repeatable, e.g. "
        "--atol detection_scores=0.01); reported at 1e-3 when not given",
    )
    tol.add_argument(
        "--rtol",
        action="append",
        metavar="[TENSOR=]X",
        help="relative tolerance, like --atol (reported at 1e-3 when not given)",
    )
    tol.add_argument(
        "--error-stat",
        choices=("elemwise", "max", "mean", "median"),
        default="mean",
        help="tensor error statistic checked against atol/rtol (default: %(default)s)",
    )
    tol.add_argument(
        "--min-match",
        action="append",
        metavar="[PREC=]X",
        help="minimum match rate, matched / (matched + lost + gained), e.g. 0.9 or int8=0.75",
    )
    tol.add_argument(
        "--max-drift",
        action="append",
        metavar="[PREC=]X",
        help="maximum mean |score drift| of matched detections, e.g. 0.02 or fp16=0.01",
    )
    tol.add_argument(
        "--max-map-drop",
        action="append",
        metavar="[PREC=]X",
        help="maximum COCO AP drop vs fp32 (needs --coco-annotations)",
    )
    detection_group(p, 0.3)
    p.add_argument("--coco-annotations", help="COCO instances json of --images: adds mAP")
    p.add_argument("--batch", type=positive_int, default=8, help="images per inference (8)")
    p.add_argument("--json", help="write all numbers here (- for stdout)")

    p = verb(
        "eval",
        "COCO mAP of a model, per precision",
        "COCO bbox mAP (AP, AP50, AP75, APs, APm, APl; pycocotools) of a registry model, "
        "exported .onnx or engine on annotated images, for each requested precision, at score "
        ">= 0.001 (n/a where the images hold no object of that size; annotations without "
        "ground truth are an error). int8 needs --calib-images. --json adds image and "
        "detection counts and machine details.",
    )
    p.add_argument("model", help="registry name, exported .onnx or engine")
    p.add_argument("--coco-annotations", required=True, help="COCO instances json")
    p.add_argument("--images", required=True, help="folder of the annotated images")
    precision_group(p, multiple=True)
    backend_group(p, default="cpu")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=8,
        help="images per inference, and the max batch of engines built (default: 8)",
    )
    p.add_argument("--json", help="write the metrics here (- for stdout)")

    p = verb(
        "bench",
        "latency, throughput, stage costs, sync vs async FPS",
        "Benchmark a model and backend: network latency p50/p90/p99 and throughput per batch "
        "size, Detector.detect overhead, per-stage costs over a video, and sync vs async "
        "pipeline FPS. With several precisions (--precision fp32,fp16,int8) it compares them "
        "instead, in one interleaved run: network-only and end-to-end p50 latency at batch 1 on "
        "the video's first frame, with the speed-up vs FP32. Prints a table; --json writes "
        "results with machine details.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registry name, exported .onnx or engine (default: %(default)s)",
    )
    backend_group(p)
    precision_group(p, multiple=True)
    p.add_argument("--video", help="video for the pipeline runs (default: the sample video)")
    p.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=[1, 2, 4, 8],
        help="comma-separated batch sizes (default: 1,2,4,8)",
    )
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=50,
        help="timed runs per batch size (default: %(default)s)",
    )
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-frames", type=positive_int, help="frames per pipeline run")
    p.add_argument(
        "--camera-fps",
        type=float,
        help="deliver the video at this rate, like a camera (default: as fast as it decodes)",
    )
    p.add_argument("--json", help="write the results here (- for stdout)")
    return parser
