"""CPU cost of NMS before and after the candidate cap, measured in one run.

Exports the COCO model three times from the same code: ``max_candidates=0`` (the per-class
NonMaxSuppression over every (anchor, class) pair, the graph before the cap), the default
(top-1000 candidates, one NMS over class-offset boxes) and ``--nms none``. Then it times ONNX
Runtime on the CPU (1 intra-op thread, batch 1) on the coco_mini photos and frames of bikes.mp4,
the graphs interleaved image by image so that drift hits both alike, and the project NMS
(``ssd_trt.nms.batched_nms``) on the ``--nms none`` outputs with and without the cap. It checks
that the cap changed no score >= 0.3 detection and writes JSON with machine details.

    python benchmarks/nms_cpu.py [--rounds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from ssd_trt.model.export import ExportOptions, export
from ssd_trt.nms import NmsSettings, batched_nms
from ssd_trt.preprocess import PreprocessConfig, preprocess
from ssd_trt.quality.bench import machine_info
from ssd_trt.store import ArtifactStore

MODEL = "ssdlite_mobilenet_v2_coco"
REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO / "tests" / "data" / "coco_mini"


def images(every: int) -> dict[str, list[np.ndarray]]:
    photos = [cv2.imread(str(p)) for p in sorted((COCO_MINI / "images").glob("*.jpg"))]
    video = ArtifactStore().sample_video()
    cap = cv2.VideoCapture(str(video))
    frames, index = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % every == 0:
            frames.append(frame)
        index += 1
    cap.release()
    if not photos or not frames:
        raise SystemExit(f"no images in {COCO_MINI} or no frames in {video}")
    return {"coco_mini": photos, "bikes": frames}


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "n": len(ms),
    }


def confident(out: dict[str, np.ndarray], i: int) -> list[tuple[int, float]]:
    n = int(out["num_detections"][i, 0])
    return sorted(
        (int(c), round(float(s), 4))
        for s, c in zip(
            out["detection_scores"][i, :n], out["detection_classes"][i, :n], strict=True
        )
        if s >= 0.3
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed passes over the images")
    parser.add_argument("--every", type=int, default=25, help="use every n-th bikes.mp4 frame")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/nms-cpu-DATE.json)")
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).parent / "results" / f"nms-cpu-{stamp}.json")

    graph = ArtifactStore().fetch(MODEL)
    variants = {
        "before": ExportOptions(labels="coco", max_candidates=0),
        "after": ExportOptions(labels="coco"),
        "network_only": ExportOptions(labels="coco", nms="none"),
    }
    sets = images(args.every)
    tagged = [(name, img) for name, imgs in sets.items() for img in imgs]
    batch = preprocess([img for _, img in tagged], PreprocessConfig())

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for key, options in variants.items():
            path = Path(tmp) / f"{key}.onnx"
            print(f"exporting {key} ...", file=sys.stderr, flush=True)
            export(graph, path, options)
            sessions[key] = session(path)

        def run(key: str, i: int) -> dict[str, np.ndarray]:
            sess = sessions[key]
            names = [o.name for o in sess.get_outputs()]
            return dict(zip(names, sess.run(None, {"images": batch[i : i + 1]}), strict=True))

        for i in range(min(3, len(batch))):  # warm-up
            for key in sessions:
                run(key, i)
        graph_ms: dict[str, dict[str, list[float]]] = {k: {s: [] for s in sets} for k in sessions}
        first: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in sessions}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for i, (source, _) in enumerate(tagged):
                for key in sessions:
                    t0 = time.perf_counter()
                    result = run(key, i)
                    graph_ms[key][source].append((time.perf_counter() - t0) * 1e3)
                    if r == 0:
                        first[key].append(result)

    nms_settings = {"before": NmsSettings(max_candidates=0), "after": NmsSettings()}
    nms_ms: dict[str, dict[str, list[float]]] = {k: {s: [] for s in sets} for k in nms_settings}
    nms_out: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in nms_settings}
    for r in range(args.rounds):
        for i, (source, _) in enumerate(tagged):
            raw = first["network_only"][i]
            for key, settings in nms_settings.items():
                t0 = time.perf_counter()
                result = batched_nms(raw["boxes"], raw["scores"], settings)
                nms_ms[key][source].append((time.perf_counter() - t0) * 1e3)
                if r == 0:
                    nms_out[key].append(result)

    def changed(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> int:
        return sum(confident(x, 0) != confident(y, 0) for x, y in zip(a, b, strict=True))

    changed_graph = changed(first["before"], first["after"])
    changed_nms = changed(nms_out["before"], nms_out["after"])
    graph_vs_nms = changed(first["after"], nms_out["after"])

    def summary(ms: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        every = [t for per_source in ms.values() for t in per_source]
        return {"all": stats(every), **{s: stats(v) for s, v in ms.items()}}

    graphs = {k: summary(v) for k, v in graph_ms.items()}
    project = {k: summary(v) for k, v in nms_ms.items()}

    def ratio(table: dict[str, Any], stat: str) -> float:
        return round(table["before"]["all"][stat] / table["after"]["all"][stat], 2)

    machine = machine_info()
    machine.pop("gpus", None)
    result = {
        "benchmark": "nms_cpu",
        "model": MODEL,
        "settings": {
            "threads": 1,
            "batch": 1,
            "rounds": args.rounds,
            "images": {s: len(v) for s, v in sets.items()},
            "nms": NmsSettings().__dict__,
            "before": "max_candidates=0: per-class NonMaxSuppression over all 1917 x 90 pairs",
            "after": "max_candidates=1000: TopK 1000 pairs, one NMS over class-offset boxes",
        },
        "machine": machine,
        "whole_graph": graphs,
        "project_nms": project,
        "ratios_before_over_after": {
            "graph_p50": ratio(graphs, "p50_ms"),
            "graph_p90": ratio(graphs, "p90_ms"),
            "project_nms_p50": ratio(project, "p50_ms"),
            "project_nms_p90": ratio(project, "p90_ms"),
        },
        "checks": {
            "images_whose_score_ge_0.3_detections_changed_graph": changed_graph,
            "images_whose_score_ge_0.3_detections_changed_project_nms": changed_nms,
            "images_where_graph_and_project_nms_differ_ge_0.3": graph_vs_nms,
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratios_before_over_after", "checks")}, indent=2))
    for name, table in (("whole graph", graphs), ("project NMS", project)):
        for key, row in table.items():
            print(
                f"{name:12s} {key:13s} p50 {row['all']['p50_ms']:7.2f} ms  "
                f"p90 {row['all']['p90_ms']:7.2f} ms"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
