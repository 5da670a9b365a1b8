"""Per-frame CPU cost of tracking against detection alone, at 1 and 32 streams, in one run.

Detects every frame of a video once (Debian opencv-doc's vtest.avi, pedestrians; bikes.mp4 from
the cache when it is missing; or ``--video``) with the COCO model on ONNX Runtime's CPU backend
(batch 1, timed: that is "detection alone"), then replays those detections into
``ssd_trt.Tracker``s: one stream (one Tracker over the frames) and 32 streams (32 Trackers, each
fed the video from a different start frame, one frame per stream in turn as a multi-camera loop
does). Tracking
runs on the host after detection returns, so its cost adds to the host's per-frame work, not to
the network's. Writes JSON with machine details.

    python benchmarks/tracking_cpu.py [--trackers bytetrack,sort,ocsort,botsort] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "ssdlite_mobilenet_v2_coco"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def stats(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "n": len(ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trackers", default="bytetrack,sort,ocsort,botsort")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--video", type=Path, default=VTEST if VTEST.is_file() else None)
    parser.add_argument("--frames", type=int, default=250, help="frames of the video to use")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from importlib.metadata import version

    import cv2

    from ssd_trt import Detector, Tracker
    from ssd_trt.quality.bench import machine_info
    from ssd_trt.store import ArtifactStore

    video = args.video or ArtifactStore().sample_video()
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while len(frames) < args.frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()

    detect_ms, detections = [], []
    with Detector(MODEL, backend="cpu", threads=args.threads) as det:
        det.detect(frames[0])  # warm-up
        for frame in frames:
            t0 = time.perf_counter()
            detections.append(det.detect(frame))
            detect_ms.append((time.perf_counter() - t0) * 1000)
    boxes = [len(d) for d in detections]

    results = []
    for kind in args.trackers.split(","):
        for streams in (1, args.streams):
            pool = [Tracker(kind, frame_rate=fps, name=f"s{i}") for i in range(streams)]
            starts = [i * len(frames) // streams for i in range(streams)]
            per_frame = []
            for step in range(len(frames)):
                for tracker, start in zip(pool, starts, strict=True):
                    i = (start + step) % len(frames)
                    t0 = time.perf_counter()
                    tracker.update(detections[i], frame=frames[i] if kind == "botsort" else None)
                    per_frame.append((time.perf_counter() - t0) * 1000)
            tracks = sum(sum(t.tracks_per_class().values()) for t in pool)
            row = {"tracker": kind, "streams": streams, "tracks": tracks, **stats(per_frame)}
            results.append(row)
            print(json.dumps(row), file=sys.stderr)

    detect = stats(detect_ms)
    out = {
        "what": "per-frame host cost of ssd_trt.Tracker.update vs detection alone (CPU)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "trackers": version("trackers")},
        "video": video.name,
        "fps": fps,
        "frames": len(frames),
        "detections_per_frame_mean": round(sum(boxes) / len(boxes), 2),
        "detect_alone": {"model": MODEL, "backend": "cpu", "threads": args.threads, **detect},
        "tracking": [
            {**r, "share_of_detect_p50": round(r["p50_ms"] / detect["p50_ms"], 4)} for r in results
        ],
        "notes": "botsort is given the frame (its camera-motion compensation, sparse optical "
        "flow on the CPU); the others ignore frames. 32 streams: each tracker is fed the same "
        "video from a different start frame, one frame per stream in turn.",
    }
    out_path = args.out or REPO / "benchmarks" / "results" / (
        f"tracking-cpu-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
