"""GPU slots: each local GPU job gets GPUs of its own, held for the command's whole life."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ketchup.ops.gpu_slots import acquire, gpu_pool

PRINT_DEVICES = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]


def run_slots(n: int, visible: str, lock_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "KETCHUP_GPU_LOCK_DIR": str(lock_dir)}
    return subprocess.run(
        [sys.executable, "-m", "ketchup.ops.gpu_slots", str(n), "--", *PRINT_DEVICES],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_pool_is_what_the_machine_shows(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,-1")
    assert gpu_pool() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_pool() == []


def test_concurrent_jobs_get_different_gpus_and_wait_for_a_free_one(tmp_path):
    first, fds = acquire(1, ["0", "1", "2"], tmp_path)
    second, more = acquire(2, ["0", "1", "2"], tmp_path)
    assert first == ["0"] and second == ["1", "2"]
    with pytest.raises(TimeoutError, match="no 1 free GPU"):
        acquire(1, ["0", "1", "2"], tmp_path, poll_s=0.01, timeout_s=0.05)
    os.close(fds[0])  # the first job ends: its GPU is free again
    assert acquire(1, ["0", "1", "2"], tmp_path, timeout_s=1)[0] == ["0"]
    with pytest.raises(RuntimeError, match="only 3 visible"):
        acquire(4, ["0", "1", "2"], tmp_path)


def test_the_command_sees_only_its_gpus(tmp_path):
    held, _fds = acquire(1, ["5"], tmp_path)  # another job holds GPU 5
    result = run_slots(1, "5,7", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"
    # a SLURM job: the pool is exactly the job's GPUs, used as they are without locks
    result = run_slots(2, "5,7", tmp_path)
    assert result.stdout.strip() == "5,7", result.stderr


def test_bad_usage_is_explained():
    result = subprocess.run(
        [sys.executable, "-m", "ketchup.ops.gpu_slots", "two", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize("hidden", ["", None], ids=["CUDA_VISIBLE_DEVICES empty", "unset"])
def test_a_job_asking_for_a_gpu_on_a_machine_without_one_stops_with_one_line(tmp_path, hidden):
    """No CUDA device visible (nvidia-smi absent too): one line naming the rule and both ways to
    run it on the CPU, exit status 3, and the command is never started."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=str(tmp_path), KETCHUP_GPU_LOCK_DIR=str(tmp_path))  # no nvidia-smi on it
    if hidden is not None:
        env["CUDA_VISIBLE_DEVICES"] = hidden
    argv = [
        sys.executable,
        "-m",
        "ketchup.ops.gpu_slots",
        "1",
        "--rule",
        "distill",
        "--",
        "touch",
        "x",
    ]
    result = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu_slots: rule distill asks for 1 GPU(s)")
    assert "shows none" in lines[0]
    assert "resources: {distill: {gpu: 0}}" in lines[0]
    assert "--set-resources distill:gpu=0" in lines[0]
    assert not (tmp_path / "x").exists() and result.stdout == ""


def test_a_job_asking_for_more_gpus_than_shown_is_told_how_many_there_are(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "4", "KETCHUP_GPU_LOCK_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "ketchup.ops.gpu_slots", "2", "--rule", "teacher", "--", "true"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1
    assert "shows 1 (CUDA_VISIBLE_DEVICES='4')" in result.stderr
    assert "--set-resources teacher:gpu=1" in result.stderr


def test_data_parallel_runs_as_many_processes_as_gpus_given():
    """The count the job got (`{resources.gpu}`, filled in when it runs) is the number of
    accelerate processes; one GPU (or none) runs the command as it is."""
    from ketchup.ops.gpu_slots import data_parallel

    command = ["python", "-m", "ketchup", "distill", "--seed", "0"]
    assert data_parallel(3, command) == [
        *("accelerate", "launch", "--multi_gpu", "--num_processes", "3", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("-m", "ketchup", "distill", "--seed", "0"),
    ]
    assert data_parallel(1, command) == command and data_parallel(0, command) == command
    with pytest.raises(ValueError, match="python -m MODULE"):
        data_parallel(2, ["./train.sh"])


def test_no_gpu_asked_for_hides_them_all(tmp_path):
    """gpu: 0 (every job of the CPU default): the command sees no GPU, even on a GPU machine."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "KETCHUP_GPU_LOCK_DIR": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketchup.ops.gpu_slots",
            "0",
            "--data-parallel",
            "--",
            *PRINT_DEVICES,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "-1"
