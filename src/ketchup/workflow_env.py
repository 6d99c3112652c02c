"""What the Snakefile needs from the machine: the GPU count, and how jobs find this checkout's code.

Kept in the package (not in workflow/rules/common.smk) because it reads and sets environment
variables, which is machine code worth unit tests, not workflow logic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def detect_gpus() -> int:
    """GPUs this machine shows to jobs: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # "-1" and "" are the usual ways to hide every GPU
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def run_this_checkout(workflow_dir: str) -> None:
    """Make jobs run `python -m ketchup` from this checkout with the Python that runs Snakemake.

    Snakemake's environment passes to its jobs, so this works without an activated venv; with
    --software-deployment-method conda the rule environment's python comes first on PATH and
    imports the package from src/ (the conda environment does not install it).
    """
    src = os.path.join(workflow_dir, "src")
    pythonpath = [src, *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
