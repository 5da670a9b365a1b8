"""Every benchmark script runs: at least ``--help``, and the host benchmark's bookkeeping part
(which crashed when the pipeline began to call ``warm_up``) on a few frames."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Every script reads video through OpenCV.
pytestmark = [pytest.mark.fast, pytest.mark.needs("cv2", "video")]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_answers_help(script):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("queued", [False, True])
def test_host_benchmark_bookkeeping_runs(queued):
    host = _load("multi_stream_host")
    row = host.bookkeeping(host._NullDetector(queued), 3, 20, np.zeros((8, 8, 3), np.uint8))
    assert row["streams"] == 3 and row["frames"] == 60
