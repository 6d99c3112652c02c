"""The machine facts the Snakefile reads: GPU count and the jobs' Python."""

from __future__ import annotations

import json
import os
import socket
import sys

from ketchup.ops.workflow_env import (
    detect_gpus,
    record_lock_owner,
    remove_stale_lock,
    run_this_checkout,
)


def test_cuda_visible_devices_decides_the_gpu_count(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert detect_gpus() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus() == 0


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == 0


def test_nvidia_smi_listing_is_counted(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: a)'\necho 'GPU 1: NVIDIA H100 (UUID: b)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == 2


def test_jobs_run_this_checkout_with_this_python(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("PATH", "/usr/bin")
    run_this_checkout(str(tmp_path))
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "src"), "/elsewhere"]
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def _lock(tmp_path, owner=None):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/x\n")
    if owner is not None:
        (locks / "ketchup-owner.json").write_text(json.dumps(owner))
    return locks


def test_a_dead_runs_lock_is_removed(tmp_path):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = _lock(tmp_path, {"host": socket.gethostname(), "pid": dead.pid, "start": "1"})
    message = remove_stale_lock(str(tmp_path / ".snakemake"))
    assert f"pid {dead.pid}" in message and not locks.exists()


def test_a_live_run_keeps_its_lock_and_records_itself(tmp_path):
    locks = _lock(tmp_path)
    record_lock_owner(str(tmp_path / ".snakemake"))
    owner = json.loads((locks / "ketchup-owner.json").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert remove_stale_lock(str(tmp_path / ".snakemake")) is None
    assert (locks / "0.output.lock").exists()


def test_a_reused_pid_is_a_dead_owner(tmp_path):
    # the pid runs (this process) but started at another time: the owner is gone
    locks = _lock(tmp_path, {"host": socket.gethostname(), "pid": os.getpid(), "start": "-1"})
    assert remove_stale_lock(str(tmp_path / ".snakemake")) is not None
    assert not locks.exists()


def test_locks_of_another_machine_or_without_owner_are_left_to_snakemake(tmp_path):
    locks = _lock(tmp_path / "a", {"host": "elsewhere", "pid": 1 << 22, "start": None})
    assert remove_stale_lock(str(tmp_path / "a" / ".snakemake")) is None and locks.exists()
    locks = _lock(tmp_path / "b")
    assert remove_stale_lock(str(tmp_path / "b" / ".snakemake")) is None and locks.exists()
    assert remove_stale_lock(str(tmp_path / "none")) is None
