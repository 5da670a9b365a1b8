"""INT8 that pays off on the CPU: speed and accuracy of the INT8 forms against FP32, in one run.

    PYTHONPATH=src python benchmarks/int8_cpu.py [--out benchmarks/results/int8-cpu.json]

- Speed: the precision table (quality.bench.precision_table), 1 ONNX Runtime thread, batch 1, on
  a real COCO photo: network alone (the --nms none export) and end to end (Detector.detect on the
  default export, NMS in the graph), the precisions timed in turns.
- Accuracy: COCO AP on coco_mini for FP32 and both INT8 forms (all run by ONNX Runtime on the
  CPU); the person model's person AP on the coco_mini images that have people, and its
  agreement with FP32 as ``compare`` measures it (score >= 0.3, same class, IoU >= 0.5), on
  coco_mini and on vtest.avi frames not used for calibration, for two calibration sets:
  bikes.mp4 (the sample video) and vtest.avi (pedestrians, the person model's own domain).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssd_trt import Detector
from ssd_trt.precision.quantize import prepare
from ssd_trt.quality.bench import machine_info, precision_table
from ssd_trt.quality.evaluate import EVAL_SCORE_THRESHOLD, coco_map, load_annotations
from ssd_trt.quality.report import agreement
from ssd_trt.store import ArtifactStore

log = logging.getLogger("int8_cpu")
REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO / "tests" / "data" / "coco_mini"
ANNOTATIONS = COCO_MINI / "instances_train2017_small.json"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
COCO, PERSON = "ssdlite_mobilenet_v2_coco", "ssdlite_mobilenet_v2_person"
COMPARE_SCORE = 0.3  # compare's default --score-threshold


def video_frames(path: Path, every: int, offset: int = 0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == offset:
            frames.append(frame)
        i += 1
    cap.release()
    return frames


def write_folder(frames: list[np.ndarray], folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return str(folder)


def person_subset(coco: Any) -> Any:
    """The coco_mini images with people, with only their person boxes: the person model's task."""
    from pycocotools.coco import COCO

    anns = [a for a in coco.dataset["annotations"] if a["category_id"] == 1]
    ids = {a["image_id"] for a in anns}
    subset = COCO()
    subset.dataset = {
        "images": [im for im in coco.dataset["images"] if im["id"] in ids],
        "annotations": anns,
        "categories": [c for c in coco.dataset["categories"] if c["id"] == 1],
    }
    subset.createIndex()
    return subset


def ap(model: Path, coco: Any) -> float:
    with Detector(model, "cpu", score_threshold=EVAL_SCORE_THRESHOLD) as d:
        return round(coco_map(coco, COCO_MINI / "images", d.detect, d.info.labels).metrics["AP"], 4)


def agree(ref: Path, other: Path, images: list[np.ndarray]) -> dict[str, Any]:
    dets = []
    for model in (ref, other):
        with Detector(model, "cpu", score_threshold=COMPARE_SCORE) as d:
            dets.append([x for i in range(0, len(images), 8) for x in d.detect(images[i : i + 8])])
    a = agreement(*dets)
    return {
        "reference": a.reference,
        "matched": a.matched,
        "lost": a.lost,
        "gained": a.gained,
        "match_rate": round(a.match_rate, 3),
        "mean_score_drift": round(a.mean_score_drift, 4),
        "passes_compare_defaults": a.match_rate >= 0.8 and a.mean_score_drift <= 0.05,
    }


def speed(store: ArtifactStore, calib: str, photo: np.ndarray, iterations: int) -> dict[str, Any]:
    def open_detector(model: str, precision: str) -> Detector:
        return Detector(
            model,
            "cpu",
            threads=1,
            cache_dir=store.root,
            precision=precision,
            calib_images=calib,
        )

    network = str(store.onnx(COCO, nms="none"))
    report = precision_table(
        open_detector, ["fp32", "fp16", "int8"], photo, network, COCO, iterations=iterations
    )
    print(report.table(), flush=True)
    return report.to_json()


def accuracy(store: ArtifactStore, work: Path, calib: dict[str, str]) -> dict[str, Any]:
    coco = load_annotations(ANNOTATIONS)
    people = person_subset(coco)
    photos = [
        cv2.imread(str(COCO_MINI / "images" / im["file_name"])) for im in coco.dataset["images"]
    ]
    held_out = video_frames(VTEST, every=16, offset=8)  # calibration used offset 0
    out: dict[str, Any] = {"coco": {}, "person": {}}
    src = store.onnx(COCO)
    forms = {
        "int8_cpu": prepare(src, "int8", work, calib_images=calib["bikes"], flavour="cpu"),
        "int8_tensorrt": prepare(src, "int8", work, calib_images=calib["bikes"]),
    }
    fp32 = ap(src, coco)
    out["coco"] = {"calibration": "bikes.mp4", "AP": {"fp32": fp32}}
    for form, path in forms.items():
        out["coco"]["AP"][form] = ap(path, coco)
        out["coco"][f"{form}_ap_drop"] = round(fp32 - out["coco"]["AP"][form], 4)
    print("COCO AP on coco_mini:", out["coco"], flush=True)
    src = store.onnx(PERSON)
    out["person"]["fp32_person_AP"] = ap(src, people)
    out["person"]["person_images"] = len(people.dataset["images"])
    for set_name, folder in calib.items():
        for flavour in ("cpu", "tensorrt"):
            cache = work / f"person-{set_name}.calib.json"
            path = prepare(
                src,
                "int8",
                work / set_name,
                calib_images=folder,
                calib_cache=cache,
                flavour=flavour,
            )
            row = {
                "person_AP": ap(path, people),
                "agreement_coco_mini": agree(src, path, photos),
                "agreement_vtest_held_out": agree(src, path, held_out),
            }
            out["person"][f"int8_{flavour}_calib_{set_name}"] = row
            print(f"person int8 {flavour} calibrated on {set_name}:", row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8-cpu.json"))
    parser.add_argument("--work", default="/tmp/ssd_trt-int8-bench")
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    store = ArtifactStore()
    work = Path(args.work)
    calib = {
        "bikes": write_folder(video_frames(store.sample_video(), every=5), work / "calib-bikes"),
        "vtest": write_folder(video_frames(VTEST, every=16), work / "calib-vtest"),
    }
    photo = cv2.imread(
        str(COCO_MINI / "images" / load_annotations(ANNOTATIONS).dataset["images"][0]["file_name"])
    )
    started = time.time()
    result = {
        "machine": machine_info(),
        "ort_threads": 1,
        "speed": speed(store, calib["bikes"], photo, args.iterations),
        "accuracy": accuracy(store, work, calib),
    }
    result["seconds"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
