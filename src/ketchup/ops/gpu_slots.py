"""`python -m ketchup.ops.gpu_slots N [--rule RULE] [--data-parallel] -- COMMAND...`: COMMAND on
N GPUs of its own.

Snakemake's `gpu` resource limits how many GPU jobs run at once, but it does not say WHICH GPUs a
job may use, so every local job would see (and crowd) GPU 0. This wrapper takes N devices from the
pool the machine shows (CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`), holding an exclusive
lock file per device for the command's whole life, sets CUDA_VISIBLE_DEVICES to them and execs
COMMAND (the locks pass to it and end with it, however it ends). When the pool has exactly N devices
(a SLURM job: SLURM already set CUDA_VISIBLE_DEVICES to the job's GPUs) they are used as they are.
Lock files live in $KETCHUP_GPU_LOCK_DIR (default: /tmp/ketchup-gpu-locks-<uid>), per machine.
N = 0 hides every GPU from COMMAND (CUDA_VISIBLE_DEVICES=-1): the job asked for none.

The workflow passes the job's own `{resources.gpu}` as N, read when the job runs, so a count set
with `--set-resources` or a profile is the one used. With --data-parallel and N > 1, COMMAND
(`python -m MODULE ARGS...`) runs as N processes under `accelerate launch` (one per GPU; see
ketchup.models.parallel), so a training job uses every GPU it was given.

A job that asks for more GPUs than the machine shows stops at once with one line (exit status 3)
naming the rule (`--rule`, the workflow's rule name) and how to run it on the CPU or on fewer GPUs.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ketchup.ops.workflow_env import detect_gpus


def gpu_pool() -> list[str]:
    """The device ids jobs may use: CUDA_VISIBLE_DEVICES when set, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(detect_gpus())]


def lock_dir() -> Path:
    default = f"/tmp/ketchup-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("KETCHUP_GPU_LOCK_DIR", default))


def acquire(
    n: int,
    pool: Sequence[str],
    directory: Path,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> tuple[list[str], list[int]]:
    """Lock n devices of `pool` (waiting for free ones); returns their ids and the open lock fds."""
    if n > len(pool):
        raise RuntimeError(f"{n} GPU(s) asked for, but only {len(pool)} visible ({pool})")
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        ids, fds = [], []
        for device in pool:
            fd = os.open(directory / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            ids.append(device)
            fds.append(fd)
            if len(ids) == n:
                return ids, fds
        for fd in fds:  # not enough free: let the others go and try again
            os.close(fd)
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no {n} free GPU(s) of {pool} within {timeout_s} s")
        time.sleep(poll_s)


TOO_FEW_GPUS = 3  # exit status of a job that asks for more GPUs than the machine shows


def too_few_gpus(n: int, pool: Sequence[str], rule: str | None) -> str:
    """The one line a job prints when it asks for `n` GPUs and the machine shows only `pool`."""
    name = rule or "<rule>"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    source = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "nvidia-smi -L"
    fix = f"run it on the {len(pool)} shown" if pool else "run it on the CPU"
    return (
        f"gpu_slots: {f'rule {rule}' if rule else 'this job'} asks for {n} GPU(s) "
        f"(resources.{name}.gpu) but this machine shows {len(pool) or 'none'} ({source}); to "
        f"{fix}, set resources: {{{name}: {{gpu: {len(pool)}}}}} in the config or pass "
        f"--set-resources {name}:gpu={len(pool)} to snakemake"
    )


USAGE = (
    "usage: python -m ketchup.ops.gpu_slots N [--rule RULE] [--data-parallel] -- COMMAND [ARGS...]"
)


def data_parallel(n: int, command: Sequence[str]) -> list[str]:
    """COMMAND as N processes under `accelerate launch` when N > 1, else as it is.

    COMMAND must be `python -m MODULE ARGS...` (accelerate runs the module in each process)."""
    command = list(command)
    if n <= 1:
        return command
    if len(command) < 3 or command[1] != "-m":
        raise ValueError(f"--data-parallel needs COMMAND = python -m MODULE ..., got {command}")
    return [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        *command[2:],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rule = None
    if len(args) >= 3 and args[1] == "--rule":
        rule, args = args[2], [args[0], *args[3:]]
    parallel = len(args) > 1 and args[1] == "--data-parallel"
    if parallel:
        del args[1]
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    n, command = int(args[0]), args[2:]
    if parallel:
        try:
            command = data_parallel(n, command)
        except ValueError as e:
            print(f"{USAGE}\n{e}", file=sys.stderr)
            return 2
    pool = gpu_pool()
    if n > len(pool):
        print(too_few_gpus(n, pool, rule), file=sys.stderr, flush=True)
        return TOO_FEW_GPUS
    if n == 0:
        ids, fds = [], []
    elif len(pool) == n:
        ids, fds = pool, []  # exactly the job's GPUs already (SLURM)
    else:
        ids, fds = acquire(n, pool, lock_dir())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(ids) if ids else "-1"}
    if ids:
        processes = f" as {n} processes" if parallel and n > 1 else ""
        print(
            f"gpu_slots: running on GPU(s) {','.join(ids)}{processes}", file=sys.stderr, flush=True
        )
    for fd in fds:
        os.set_inheritable(fd, True)  # the locks live as long as the command
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
