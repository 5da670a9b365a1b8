"""Summarize a py-spy raw profile (``py-spy record --format raw --threads [--gil]``) of
benchmarks/multi_stream.py by thread role: samples, the share of the profiled time each role
held the GIL (with ``--gil``, py-spy samples only the thread holding it), and the top leaf and
inclusive functions of each role.

    python benchmarks/profile_summary.py PROFILE.txt --rate 100 --seconds 12 --out summary.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from ssd_trt.quality.bench import machine_info

ROLES = (
    ("ssd-trt-cap", "capture"),
    ("ssd-trt-batcher", "batcher"),
    ("ssd-trt-emit", "emit"),
    ("bench-cpu", "bench sampler"),
    ("MainThread", "main"),
)


def role_of(thread: str) -> str:
    for prefix, role in ROLES:
        if prefix in thread:
            return role
    return "other"


def summarize(path: Path, rate: float, seconds: float | None, top: int = 12) -> dict:
    samples: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        role = role_of(frames[0])
        n = int(count)
        samples[role] += n
        # Frames without line numbers, so one function is one entry.
        names = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]] or ["(no python frame)"]
        leaves.setdefault(role, Counter())[names[-1]] += n
        for name in set(names):
            inclusive.setdefault(role, Counter())[name] += n
    total = sum(samples.values())
    roles = {}
    for role, n in samples.most_common():
        roles[role] = {
            "samples": n,
            "share_of_samples": round(n / total, 3) if total else 0.0,
            "top_leaf": leaves[role].most_common(top),
            "top_inclusive": inclusive[role].most_common(top),
        }
        if seconds:
            roles[role]["share_of_time"] = round(n / (rate * seconds), 3)
    return {
        "profile": path.name,
        "rate_hz": rate,
        "seconds": seconds,
        "samples": total,
        "share_of_time": round(total / (rate * seconds), 3) if seconds else None,
        "roles": roles,
        "machine": machine_info(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's --rate")
    parser.add_argument("--seconds", type=float, help="the profiled wall time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = summarize(args.profile, args.rate, args.seconds)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    for role, r in result["roles"].items():
        print(role, r["samples"], r.get("share_of_time"), r["top_leaf"][:3])
    return 0


if __name__ == "__main__":
    sys.exit(main())
