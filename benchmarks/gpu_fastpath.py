"""Benchmark the GPU fast path: batch-1 latency and pipelined throughput, fp32 and fp16.

    python benchmarks/gpu_fastpath.py coco_none.onnx --video bikes.mp4 --out results.json

Latency is host uint8 frame -> host detections (``run``), p50 over many calls. Throughput keeps
two batches in flight with ``submit``/``collect``, frames already decoded in host memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from ssd_trt.detection_batch import TOTAL
from ssd_trt.quality.bench import first_frames
from ssd_trt.runtime.gpu.fastpath import STAGES, GpuFastPath

log = logging.getLogger("gpu_fastpath_bench")


def latency(fp: GpuFastPath, frame: np.ndarray, iters: int) -> dict[str, float]:
    for _ in range(20):
        fp.run([frame])
    times, stages = [], {k: [] for k in (*STAGES, TOTAL)}
    sub, col = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        fp.run([frame])
        times.append((time.perf_counter() - t0) * 1e3)
        for k, v in fp.last_stage_ms.items():
            stages[k].append(v)
    for _ in range(iters):  # host time of submit (returns at once) and collect (waits)
        t0 = time.perf_counter()
        h = fp.submit([frame])
        t1 = time.perf_counter()
        fp.collect(h)
        sub.append((t1 - t0) * 1e3)
        col.append((time.perf_counter() - t1) * 1e3)
    result = {"p50_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}
    result |= {"host_submit_ms": float(np.median(sub)), "collect_ms": float(np.median(col))}
    result |= {f"gpu_{k}_ms": float(np.median(v)) for k, v in stages.items() if v}
    return result


def network_only(fp: GpuFastPath, iters: int) -> float:
    """p50 of one batch-1 network run (graph replay) plus a stream sync, host-timed."""
    return fp.network_ms(1, iters)


def nms_only(fp: GpuFastPath, batch: int, reps: int = 100) -> dict:
    """The NMS kernels alone on the last network outputs (CUDA events), and the phase stamps
    of the select kernel (us; the last phase is rows + walk)."""
    return fp.nms_profile(batch, reps)


def throughput(fp: GpuFastPath, frames: list[np.ndarray], batch: int, batches: int) -> dict:
    pool = [frames[(i * 7) % len(frames) : (i * 7) % len(frames) + batch] for i in range(8)]
    pool = [p if len(p) == batch else (frames * batch)[:batch] for p in pool]
    fp.run(pool[0])
    pending = []
    t0 = time.perf_counter()
    for i in range(batches):
        pending.append(fp.submit(pool[i % len(pool)]))
        if len(pending) == 2:
            fp.collect(pending.pop(0))
    for h in pending:
        fp.collect(h)
    dt = time.perf_counter() - t0
    fp.run(pool[0])
    stages = {f"gpu_{k}_ms": round(v, 3) for k, v in fp.last_stage_ms.items()}
    return {"images_per_s": batch * batches / dt, "batch": batch, **stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument(
        "--variants",
        default="fp32,fp16,fp32-tf32",
        help="comma-separated: fp32 (TF32 on) or fp16, optionally -tf32 (TF32 off), +nhwc "
        "(prefer_nhwc=1), +exh (cudnn_conv_algo_search=EXHAUSTIVE), +ws (max cuDNN workspace), "
        "+big (batch sizes >= 16 without CUDA graphs), +bignhwc (that and prefer_nhwc=1 there), "
        "+nograph (no CUDA graphs of our own around the network), +split (ONNX Runtime replays its "
        "own graph between two of ours)",
    )
    parser.add_argument("--sizes", default="8,32,64")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")  # INFO for this script only
    log.setLevel(logging.INFO)
    import onnxruntime
    from cuda import core

    frames = first_frames(str(args.video), 128)
    small = [np.ascontiguousarray(f[:, 170:470]) for f in frames]  # 272x300 crops
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict = {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "cuda_core": core.__version__,
        "frame_shape": list(frames[0].shape),
        "results": {},
    }
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        opts = {}
        if "+nhwc" in variant:
            opts["prefer_nhwc"] = "1"
        if "+exh" in variant:
            opts["cudnn_conv_algo_search"] = "EXHAUSTIVE"
        if "+ws" in variant:
            opts["cudnn_conv_use_max_workspace"] = "1"
        large = None
        if "+big" in variant:
            large = {"prefer_nhwc": "1"} if "+bignhwc" in variant else {}
        with GpuFastPath(
            args.onnx,
            batch_sizes=(1, *sizes),
            fp16=variant.startswith("fp16"),
            tf32="-tf32" not in variant,
            provider_options=opts,
            large_batch_options=large,
            own_graphs=False if "+nograph" in variant else "split" if "+split" in variant else True,
        ) as fp:
            fp.warm_up()
            report[f"{variant}_setup_s"] = time.perf_counter() - t0
            res = {"batch1": latency(fp, frames[0], args.iters)}
            res["own_graphs"] = fp.graph_mode
            res["batch1_network_only_ms"] = network_only(fp, args.iters)
            res["batch1_nms"] = nms_only(fp, 1)
            log.info("%s batch 1: %s", variant, res["batch1"])
            for b in sizes:
                res[f"batch{b}"] = throughput(fp, frames, b, args.batches)
                res[f"batch{b}_272x300"] = throughput(fp, small, b, args.batches)
                log.info("%s batch %d: %s", variant, b, res[f"batch{b}"])
            res[f"batch{sizes[-1]}_nms"] = nms_only(fp, sizes[-1], 20)
        report["results"][variant] = res
    text = json.dumps(report, indent=2)
    log.info("%s", text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
