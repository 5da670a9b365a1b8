"""Argument groups and value types shared by several verbs, each defined once."""

from __future__ import annotations

import argparse
import os

from ..batching import FILE_WAIT_MS, GPU_MAX_BATCH, HOST_MAX_BATCH, LIVE_WAIT_MS
from ..contract import PRECISIONS
from ..detector import DEFAULT_MODEL
from ..errors import SsdTrtError
from ..runtime.select import ALIASES, BACKEND_HELP, BACKENDS
from ..tracking import DEFAULT_TRACKER, TRACKERS
from ..video.decode import DECODERS
from ..video.tracks import TrackSettings


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_float(text: str) -> float:
    """A score or IoU threshold: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4,8, got {text!r}")
    return sizes


# ------------------------------------------------------------------------------------ groups


def common(suppress: bool) -> argparse.ArgumentParser:
    """-q / -v / --cache-dir, accepted before and after the verb.

    On the verbs' parsers the defaults are suppressed, so a value given before the verb is not
    overwritten by the verb's default.
    """
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print only results and errors",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show library logs (and TensorFlow's) too",
    )
    g.add_argument(
        "--cache-dir",
        default=default,
        help="model cache (default: $SSD_TRT_CACHE, $XDG_CACHE_HOME/ssd_trt or ~/.cache/ssd_trt)",
    )
    return p


def backend_group(p: argparse.ArgumentParser, default: str = "auto") -> None:
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        default=default,
        choices=(*BACKENDS, *ALIASES),
        metavar="NAME",
        help=f"{BACKEND_HELP} (default: {default})",
    )


def precision_group(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    g = p.add_argument_group("precision")
    if multiple:
        g.add_argument(
            "--precision",
            default="fp32",
            help=f"comma-separated precisions from {','.join(PRECISIONS)} (default: fp32)",
        )
    else:
        g.add_argument(
            "--precision",
            choices=PRECISIONS,
            help="run an FP16 or INT8 (Q/DQ) version of the model (default: fp32; an engine "
            "runs in the precision it was built with)",
        )
    g.add_argument("--calib-images", help="folder, glob or video of real images for int8")


def detection_group(p: argparse.ArgumentParser, default_score: float) -> None:
    g = p.add_argument_group("detections")
    g.add_argument(
        "--score-threshold",
        type=unit_float,
        default=default_score,
        help=f"minimum score, 0 to 1 (default: {default_score:g})",
    )


def video_parent(live: bool) -> argparse.ArgumentParser:
    """Model, backend, precision, detections and outputs of ``detect`` and ``webcam``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registry name, exported .onnx or engine (default: %(default)s)",
    )
    backend_group(p)
    precision_group(p)
    detection_group(p, 0.5)
    p.add_argument("--classes", help="comma-separated class names or ids to keep")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        help="frames per detector call (of all sources together with several), and the batch "
        "the backend is set up for: a TensorRT engine's profile, the GPU fast path's largest "
        f"graph (default: {GPU_MAX_BATCH} on the GPU fast path, else {HOST_MAX_BATCH})",
    )
    nms = p.add_argument_group(
        "NMS (default: the model's own; where NMS is in the graph, a registry name is exported "
        "again with them once, an .onnx or engine takes only a smaller --max-det)"
    )
    nms.add_argument("--iou", type=unit_float, help="NMS IoU threshold, 0 to 1")
    nms.add_argument("--max-det", type=positive_int, help="detections per image at most")
    nms.add_argument("--max-per-class", type=positive_int, help="detections per class at most")
    out = p.add_argument_group("outputs")
    out.add_argument(
        "--output",
        help="write the annotated video here (.mp4 or .avi); for images also an image name "
        "(one image) or DIR/ (one annotated image per input, like --save-dir)",
    )
    if not live:
        out.add_argument(
            "--save-dir",
            metavar="DIR",
            help="write each input image annotated, at its own size and named like it, into "
            "DIR (created if missing)",
        )
    out.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="FILE",
        help="write one JSON line per frame here (- for stdout; with --output-dir: no FILE, "
        "DIR/NAME.jsonl)",
    )
    out.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="serve a live page with the annotated stream (e.g. 127.0.0.1:8080)",
    )
    out.add_argument(
        "--token",
        default=os.environ.get("SSD_TRT_TOKEN"),
        help="with --serve: answer only requests with 'Authorization: Bearer TOKEN' or "
        "?token=TOKEN (the page URL to open is logged; default: $SSD_TRT_TOKEN)",
    )
    shown = out.add_mutually_exclusive_group()
    shown.add_argument(
        "--show",
        dest="show",
        action="store_true",
        default=None,
        help="open a window (default: when a display is available)",
    )
    shown.add_argument("--no-show", dest="show", action="store_false", help="no window")
    track_group(p)
    run = p.add_argument_group("run")
    run.add_argument(
        "--decode",
        choices=DECODERS,
        default="auto",
        help="who decodes video: cpu (OpenCV/FFmpeg), nvdec (the GPU's decoder, for files and "
        "RTSP on the GPU fast path; not available yet) or auto (nvdec where it can run, else "
        "cpu; the choice and why are logged) (default: auto)",
    )
    run.add_argument(
        "--sync", action="store_true", help="plain capture/infer/draw loop instead of async"
    )
    run.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    if not live:
        run.add_argument(
            "--realtime",
            action="store_true",
            help="play a file at its own frame rate, like a camera (stale frames are dropped)",
        )
        run.add_argument(
            "--loop",
            action="store_true",
            help="replay a file or images from the start when they end (until Ctrl-C or "
            "--max-frames); frame numbers go on counting",
        )
    return p


def track_group(p: argparse.ArgumentParser) -> None:
    """--track [KIND] and --track-option KEY=VALUE (the video verbs, the stream benchmarks)."""
    track = p.add_argument_group(
        "tracking (pip install 'ssd-trt[track]'; one tracker per source, IDs from 1 per source)"
    )
    track.add_argument(
        "--track",
        nargs="?",
        const=DEFAULT_TRACKER,
        metavar="KIND",
        help=f"give detections track IDs (JSON track_id, #ID in labels, trails, tracks per "
        f"class in the summary) with {', '.join(TRACKERS)} (no KIND: {DEFAULT_TRACKER}); "
        "put it after the source",
    )
    track.add_argument(
        "--track-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tracker setting, e.g. lost_track_buffer=60 or frame_rate=25 (default: the "
        "tracker's own, at the source's frame rate; repeatable)",
    )


def track_settings(args: argparse.Namespace) -> TrackSettings | None:
    """--track and --track-option, checked before any source or model work."""
    if args.track is None:
        if args.track_option:
            raise SsdTrtError("--track-option needs --track (e.g. --track bytetrack)")
        return None
    return TrackSettings(args.track, tuple(args.track_option))


def many_sources_group(p: argparse.ArgumentParser) -> None:
    """``detect`` over many sources at once (video/multi.py): outputs per source, one batch."""
    g = p.add_argument_group("many sources")
    g.add_argument("--sources", metavar="FILE", help="read more sources from FILE, one a line")
    g.add_argument(
        "--output-dir",
        metavar="DIR",
        help="per-source outputs: DIR/NAME.mp4 and, with --json, DIR/NAME.jsonl (NAME from the "
        "source, made unique); required with several sources",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        help="close a batch this long after its first frame (default: "
        f"{LIVE_WAIT_MS:g} with a live source, else {FILE_WAIT_MS:g})",
    )
    g.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        metavar="N",
        help="spread the sources over N processes, each with its own detector and decoders "
        "(one Python process keeps up with about 48 NVDEC streams of 720p30)",
    )
    g.add_argument(
        "--ray",
        action="store_true",
        help="spread the sources over a Ray cluster with Ray Data (pip install 'ssd-trt[ray]')",
    )
    g.add_argument("--address", help="with --ray: the cluster to join (default: a local Ray)")


# ------------------------------------------------------------------------------------ verbs
