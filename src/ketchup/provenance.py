"""Where and with what a job ran: the code's commit, the package versions, the processor or GPU,
the thread counts. Every stage records it in its resolved config (`files.write_resolved_config`),
and the tables stage lists what a study's models were trained with, since floating-point kernels
differ across CPUs and a single seed's scores move with them."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "sacrebleu", "numpy", "snakemake")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]  # the checkout, for an editable install
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(name: str) -> str | None:
    """The installed version of distribution `name`; None when it is not installed (ketchup
    itself run from a source checkout on PYTHONPATH, as on a machine without a build backend)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _static() -> dict[str, Any]:
    versions = {name: version_of(name) for name in PACKAGES}
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "ketchup": version_of("ketchup"),
        "git_commit": commit,
        "git_dirty": None if commit is None or dirty is None else bool(dirty),
        "python": platform.python_version(),
        "packages": versions,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def machine_record() -> dict[str, Any]:
    """This process's provenance (the static part is computed once). The device and thread
    count come from torch when the stage has imported it (a stage without a model never does)."""
    torch = sys.modules.get("torch")
    gpu = threads = None
    if torch is not None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        threads = torch.get_num_threads()
    return {
        **_static(),
        "gpu": gpu,
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def describe(record: dict[str, Any]) -> str:
    """One line: device, threads, torch and transformers versions, commit."""
    device = record.get("gpu") or record.get("cpu") or "?"
    packages = record.get("packages") or {}
    commit = (record.get("git_commit") or "no git")[:10]
    if record.get("git_dirty"):
        commit += "+changes"
    return (
        f"{device}, {record.get('torch_threads')} torch threads, torch "
        f"{packages.get('torch')}, transformers {packages.get('transformers')}, commit {commit}"
    )
