"""Seeded mutation fuzzing of every file the package reads back: a crash or hang names its
case (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PERSON

FUZZ_CHILD = Path(__file__).with_name("fuzz_child.py")


def run_fuzz(kind: str, original: Path, tmp_path: Path, cases: int = 200, budget: float = 240):
    """A seeded mutation loop in a child process: a segfault or hang fails the test, naming
    the case, instead of taking pytest down with it."""
    proc = subprocess.run(
        [sys.executable, str(FUZZ_CHILD), kind, str(original), str(tmp_path)]
        + [str(cases), str(budget)],
        capture_output=True,
        text=True,
        timeout=budget + 120,
    )
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0, f"rc {proc.returncode} at {last}: {proc.stdout[-3000:]}"
    counts = json.loads(last[0].removeprefix("RESULT "))
    print(kind, counts)  # shown with -s: how many cases loaded and how many were refused
    assert sum(counts.values()) == cases, counts  # all cases ran within the budget
    return counts


@pytest.fixture(scope="module")
def person_raw_onnx(exported) -> Path:
    return exported(PERSON, "none")


def test_fuzz_onnx(person_raw_onnx, tmp_path):
    counts = run_fuzz("onnx", person_raw_onnx, tmp_path)
    assert counts["error"] > 0  # most mutations break the protobuf and must say so


def test_fuzz_engine_sidecar(person_raw_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs pip install 'ssd-trt[rtx]' (CI has it)")
    from ssd_trt.precision.engine import BuildOptions, build_engine
    from ssd_trt.precision.trt_compat import load_trt

    engine = tmp_path / "built" / "p.engine"
    engine.parent.mkdir()
    options = BuildOptions(compute_capability="sm89")
    build_engine(person_raw_onnx, engine, options, trt_api=load_trt("rtx"))
    counts = run_fuzz("sidecar", Path(f"{engine}.json"), tmp_path)
    assert counts["error"] > 0 and counts["ok"] > 0


def test_fuzz_calibration_cache(person_raw_onnx, calib_dir, tmp_path):
    from ssd_trt.store import ArtifactStore, Calibration

    store = ArtifactStore(tmp_path / "cache")
    calibration = Calibration(images=str(calib_dir), count=8, batch=8)
    store.prepared(person_raw_onnx, "int8", calibration, out_dir=tmp_path / "prepared")
    (cache,) = (tmp_path / "prepared").glob("*.calib.json")
    counts = run_fuzz("calib", cache, tmp_path)
    assert counts["refused"] > 0  # mutations that break the JSON are refused, never a crash
