"""Canonical CPU benchmark: async vs sync pipeline where capture costs about what inference does.

Decoding bikes.mp4 (640x272) takes ~1 ms, far below inference, so async has nothing to overlap.
This script re-encodes the sample video as 5120x2176 MJPEG, whose decode costs about one ONNX
Runtime single-thread inference on this class of CPU, then runs ``ssd-trt bench`` with one ORT
thread (so decode and inference can run side by side on a 2-core machine) and writes the JSON
results, with machine details, to benchmarks/results/.

    python benchmarks/cpu_async.py [--model ssdlite_mobilenet_v2_coco] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import cv2

from ssd_trt.store import ArtifactStore

SIZE = (5120, 2176)


def heavy_video(frames: int = 120) -> Path:
    store = ArtifactStore()
    out = store.root / "media" / f"bikes_{SIZE[0]}x{SIZE[1]}_mjpeg.avi"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".partial_" + out.name)
    cap = cv2.VideoCapture(str(store.sample_video()))
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 25, SIZE)
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, SIZE, interpolation=cv2.INTER_CUBIC))
    writer.release()
    cap.release()
    tmp.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ssdlite_mobilenet_v2_coco")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/cpu-DATE.json)")
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"cpu-async-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "ssd_trt.cli",
        "bench",
        "--model",
        args.model,
        "--backend",
        args.backend,
        "--video",
        str(heavy_video()),
        "--threads",
        "1",
        "--iterations",
        "30",
        "--batch-sizes",
        "1,2,4",
        "--json",
        str(out),
    ]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
