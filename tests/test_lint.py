"""Static hygiene: pyflakes finds no unused imports/variables or undefined names in the project's Python."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_is_clean():
    paths = [str(ROOT / p) for p in ("vltseg_ros", "training", "tests", "bench", "launch", "scripts", "setup.py")]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
