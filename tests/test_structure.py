"""The package's shape: no import circles, each floor imports only floors below it, no prints
in library code. Read from the source with ast (tools/import_graph.py), nothing imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ssd_trt"

# Floors, lowest first; a module may import its own floor and the floors below.
FLOORS = [
    {
        "errors",
        "fsutil",
        "progress",
        "nms",
        "preprocess",
        "detections",
        "contract",
        "sources",
        "source_names",
        "annotate",
        "tracking",
        "batching",
        "detection_batch",
        "colour",
        "device_frames",
    },
    {"postprocess"},
    {"model"},
    {"precision"},
    {"store"},
    {"runtime"},
    {"detector"},
    {"video"},
    {"scale"},
    {"quality"},
    {"cli"},
]


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module} is on no floor; add it to FLOORS")


def test_no_import_cycles_and_no_upward_imports():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "import_graph.py"), str(PACKAGE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout  # exits 1 when there is a cycle
    assert "cycles: 0" in proc.stdout
    upward = []
    for line in proc.stdout.splitlines():
        if " -> " not in line or not line.startswith("ssd_trt."):
            continue
        module, deps = line.split(" -> ")
        for dep in deps.split(", "):
            if dep.startswith("ssd_trt.") and floor_of(dep) > floor_of(module):
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_library_code_never_prints():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "cli":
            continue  # the CLI prints results; everything else logs
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_nothing_reads_outside_the_repository():
    """A user's clone has no ../shared: tests, benchmarks, tools and the package read only what
    the repository ships (tests/data) or what the registries serve."""
    needles = ("../shared", '"shared" / "data"', "shared/data", "SSD_TRT_SHARED")
    offenders = []
    for folder in ("src", "tests", "benchmarks", "tools", ".ci"):
        for path in (REPO / folder).rglob("*"):
            if not path.is_file() or path.suffix not in {".py", ".sh", ""}:
                continue
            if path == Path(__file__):
                continue
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert offenders == []
