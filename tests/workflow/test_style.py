"""Style gates that CI enforces through the test command: ruff on Python, snakefmt on rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff(args):
    result = _run(sys.executable, "-m", "ruff", *args, "src", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt():
    snakefmt = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    result = _run(snakefmt, "--check", "Snakefile", "workflow/rules")
    assert result.returncode == 0, result.stdout + result.stderr
