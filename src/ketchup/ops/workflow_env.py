"""What the Snakefile needs from the machine: the GPU count, how jobs find this checkout's code,
and whether the lock an earlier run left is stale.

Kept in the package (not in workflow/rules/common.smk) because it reads and sets environment
variables, which is machine code worth unit tests, not workflow logic.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
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


# Snakemake locks the working directory for the length of a run (.snakemake/locks/N.*.lock) and
# removes the locks when it ends; a run killed with SIGKILL (or by a power loss, or the OOM
# killer) leaves them behind, and every later run is refused until `snakemake --unlock`. The
# workflow records which process holds the locks, so that the next run can tell a stale lock from
# a live one. The record lives in the lock directory, which Snakemake deletes with its locks.
OWNER_FILE = "ketchup-owner.json"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return start is None or _process_start(pid) in (None, start)


def record_lock_owner(snakemake_dir: str = ".snakemake") -> None:
    """Called when a run starts (after Snakemake took its locks): this process holds them."""
    lock_dir = os.path.join(snakemake_dir, "locks")
    if not os.path.isdir(lock_dir):
        return
    pid = os.getpid()
    owner = {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}
    tmp = os.path.join(lock_dir, f".{OWNER_FILE}.{pid}")
    with open(tmp, "w") as f:
        json.dump(owner, f)
    os.replace(tmp, os.path.join(lock_dir, OWNER_FILE))


def remove_stale_lock(snakemake_dir: str = ".snakemake") -> str | None:
    """Remove Snakemake's locks if the run that holds them is dead; say what was removed.

    Only a lock whose owner was recorded on this machine and is no longer running is removed: a
    live run's lock, one taken by a run of another machine (a shared file system), or one without
    an owner record (a run that did not get as far as starting) is left to Snakemake, which
    refuses to run and names `--unlock`.
    """
    lock_dir = os.path.join(snakemake_dir, "locks")
    try:
        with open(os.path.join(lock_dir, OWNER_FILE)) as f:
            owner = json.load(f)
        host, pid, start = owner["host"], int(owner["pid"]), owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or _alive(pid, start):
        return None
    shutil.rmtree(lock_dir, ignore_errors=True)
    return (
        f"removed the lock of an earlier Snakemake run in this directory (pid {pid} on {host}, no "
        "longer running: killed?); its unfinished jobs run again, resuming from their checkpoints"
    )
