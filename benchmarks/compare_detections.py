"""Compare two ``--json`` detection files of the same video frame by frame (e.g. ``detect
--decode nvdec`` against ``--decode cpu``): detections matched by class and box (within
``--box-px``), their score differences, and those without a match on either side.

    python benchmarks/compare_detections.py a.jsonl[.gz] b.jsonl[.gz] [--box-px 2] [--out x.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def matches(a: dict, b: dict, box_px: float) -> tuple[list[float], list[float]]:
    """For each of ``a``'s detections: the smallest score difference to a ``b`` detection of its
    class with every box coordinate within ``box_px``; the scores of those with none."""
    diffs, lost = [], []
    for det in a["detections"]:
        same = [
            o["score"]
            for o in b["detections"]
            if o["class_id"] == det["class_id"]
            and max(abs(p - q) for p, q in zip(o["box"], det["box"], strict=True)) <= box_px
        ]
        if same:
            diffs.append(min(abs(s - det["score"]) for s in same))
        else:
            lost.append(det["score"])
    return diffs, lost


def compare(a: list[dict], b: list[dict], box_px: float) -> dict:
    if [f["frame"] for f in a] != [f["frame"] for f in b]:
        raise SystemExit("the two files do not hold the same frames")
    diffs, only_a, only_b = [], [], []
    for fa, fb in zip(a, b, strict=True):
        d, lost = matches(fa, fb, box_px)
        diffs += d
        only_a += lost
        only_b += matches(fb, fa, box_px)[1]
    return {
        "frames": len(a),
        "detections": [sum(len(f["detections"]) for f in x) for x in (a, b)],
        "matched": len(diffs),
        "score_diff_max": round(max(diffs, default=0.0), 4),
        "score_diff_mean": round(float(np.mean(diffs)) if diffs else 0.0, 4),
        "score_diff_p99": round(float(np.percentile(diffs, 99)) if diffs else 0.0, 4),
        "unmatched_first": len(only_a),
        "unmatched_second": len(only_b),
        "unmatched_scores_max": round(max(only_a + only_b, default=0.0), 4),
        "box_px": box_px,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--box-px", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = compare(load(args.first), load(args.second), args.box_px)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
