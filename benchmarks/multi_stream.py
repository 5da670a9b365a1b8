"""How many 720p camera streams at 30 FPS one GPU sustains: ``detect`` over many sources, batched.

The test video: Debian opencv-doc's vtest.avi (768x576, 795 frames of pedestrians, a real CCTV
view) scaled to 1280x960 (aspect kept, bicubic) and centre-cropped to 1280x720, every source
frame kept once and stamped at 30 FPS (so people walk 3x faster than they did; every frame
is a distinct real picture), encoded as H.264 (GStreamer's openh264enc, 4 Mbit/s, mp4mux).
OpenCV's bundled FFmpeg decodes H.264 but cannot encode it, so the encoder runs in Debian's
python3 with GStreamer (apt: python3-gi gstreamer1.0-plugins-bad for openh264enc); the frames are
piped to it raw. Make it once, where GStreamer is, and carry the file to the GPU machine::

    python benchmarks/multi_stream.py --make-video            # -> ~/.cache/ssd_trt/media/...

Each run opens N streams of that file, each played at 30 FPS like a camera (``PacedSource``:
its own decoder, stale frames dropped when inference falls behind), through
``video.multi.MultiPipeline`` (frames of all streams batched, up to --max-batch per call). A
stream count is sustained when every stream had >= 99% of the frames it read detected (stale
frames dropped at most 1%) and the p99 capture-to-output latency is <= 100 ms. The sweep stops
at the first count that is not sustained. Drawing and file outputs are off: this measures
detection, not the encoder.

    python benchmarks/multi_stream.py --backend cuda --streams 8,16,24,32,40,48   # GPU machine
    python benchmarks/multi_stream.py --backend cpu --streams 1,2 --fps 5 --seconds 8   # CPU

Results (JSON, with machine details) go to benchmarks/results/multi-stream-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from ssd_trt.detector import Detector
from ssd_trt.quality.bench import machine_info
from ssd_trt.sources import PacedSource, open_source
from ssd_trt.store import ArtifactStore
from ssd_trt.video.multi import MultiPipeline
from ssd_trt.video.outputs import Output

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SIZE = (1280, 720)
ENCODER = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
w, h, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pipe = Gst.parse_launch(
    f"fdsrc fd=0 blocksize={w * h * 3} ! rawvideoparse width={w} height={h} format=bgr "
    "framerate=30/1 ! videoconvert ! video/x-raw,format=I420 ! openh264enc bitrate=4000000 "
    f"! h264parse ! mp4mux ! filesink location={out}"
)
pipe.set_state(Gst.State.PLAYING)
ends = Gst.MessageType.EOS | Gst.MessageType.ERROR
msg = pipe.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE, ends)
pipe.set_state(Gst.State.NULL)
sys.exit(0 if msg.type == Gst.MessageType.EOS else msg.parse_error()[0].message)
"""


def test_video() -> Path:
    return ArtifactStore().root / "media" / "vtest_720p30_h264.mp4"


def make_video() -> Path:
    out = test_video()
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".partial_" + out.name)
    enc = subprocess.Popen(
        ["/usr/bin/python3", "-c", ENCODER, str(SIZE[0]), str(SIZE[1]), str(tmp)],
        stdin=subprocess.PIPE,
    )
    cap = cv2.VideoCapture(str(VTEST))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            big = cv2.resize(frame, (1280, 960), interpolation=cv2.INTER_CUBIC)
            enc.stdin.write(np.ascontiguousarray(big[120:840]).tobytes())
    finally:
        cap.release()
        enc.stdin.close()
    if enc.wait(timeout=600) != 0:
        tmp.unlink(missing_ok=True)
        sys.exit("the H.264 encoder failed (needs python3-gi and gstreamer1.0-plugins-bad)")
    tmp.replace(out)
    return out


class _Latencies(Output):
    """Keeps each frame's capture-to-output latency (the only output of the benchmark)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.lock = threading.Lock()

    def write(self, result, annotated) -> None:
        with self.lock:
            self.values.append(result.latency_ms)


def run(detector: Detector, video: Path, streams: int, fps: float, seconds: float, batch: int):
    frames = int(fps * seconds)
    sources = [PacedSource(open_source(str(video)), fps) for _ in range(streams)]
    outs = [_Latencies() for _ in range(streams)]
    pipeline = MultiPipeline(
        detector,
        sources,
        [[o] for o in outs],
        [f"cam{i}" for i in range(streams)],
        max_batch=batch,
        max_frames=frames,
        draw=False,
    )
    try:
        stats = pipeline.run()
    finally:
        for s in sources:
            s.close()
    latencies = np.concatenate([o.values for o in outs]) if stats.frames else np.zeros(1)
    # Each stream runs until it has processed ``frames``: what a live stream lost on the way
    # shows as drops, so the share processed is frames / (frames + dropped).
    delivered = [s.frames / max(1, s.frames + s.dropped) for s in stats.sources.values()]
    p99 = float(np.percentile(latencies, 99))
    return {
        "streams": streams,
        "target_fps": fps,
        "frames_per_stream": frames,
        "delivered_min": round(min(delivered), 4),
        "dropped": sum(s.dropped for s in stats.sources.values()),
        "fps_total": round(stats.frames / stats.seconds, 1),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p99": round(p99, 1),
        "mean_batch": round(stats.mean_batch, 2),
        "sustained": min(delivered) >= 0.99 and p99 <= 100.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ssdlite_mobilenet_v2_coco")
    parser.add_argument("--backend", default="auto", help="cuda: the GPU fast path")
    parser.add_argument("--video", help="720p test video (default: made from vtest.avi)")
    parser.add_argument("--make-video", action="store_true", help="only make the test video")
    parser.add_argument("--streams", default="1,2,4,8,16,24,32,40,48")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per stream count")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/...)")
    args = parser.parse_args()
    if args.make_video:
        print(make_video())
        return 0
    video = Path(args.video) if args.video else make_video()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"multi-stream-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with Detector(args.model, args.backend, max_batch=args.max_batch) as detector:
        # Warm-up: every batch size the batcher can form builds its session/graph now, not
        # inside the first measured stream count.
        with open_source(str(video)) as src:
            first = src.read().image
        size = 1
        while size <= args.max_batch:
            detector.detect([first] * size)
            size *= 2
        detector.detect([first] * args.max_batch)
        run(detector, video, 1, args.fps, 2.0, args.max_batch)
        for n in [int(s) for s in args.streams.split(",")]:
            row = run(detector, video, n, args.fps, args.seconds, args.max_batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not row["sustained"]:
                break
        backend = detector.backend_name
    best = max((r["streams"] for r in rows if r["sustained"]), default=0)
    result = {
        "benchmark": "multi_stream",
        "video": str(video),
        "backend": backend,
        "model": args.model,
        "criterion": ">= 99% of frames delivered per stream, p99 latency <= 100 ms",
        "max_sustained_streams": best,
        "runs": rows,
        "machine": machine_info(),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{best} streams of 720p at {args.fps:g} FPS sustained on {backend}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
