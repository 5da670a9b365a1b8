"""Repository housekeeping: .gitignore covers the README's outputs, CI cleans up after itself."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import REPO

pytestmark = pytest.mark.fast


def test_gitignore_covers_the_readme_outputs():
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    names = ["annotated.mp4", "detections.jsonl"]
    proc = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.split() == names


def test_ci_removes_its_venv_on_every_exit():
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"""trap 'rm -rf "\$work"' EXIT""", script)
    assert 'venv="$work/venv"' in script
