"""Short progress lines on Snakemake's terminal, while a job's own output goes to its log.

The workflow starts a long job's verb as `KETCHUP_PROGRESS_FD=3 3>&2 python -m ketchup VERB ...
> LOG 2>&1` (`launcher` in workflow/rules/common.smk): file descriptor 3 is Snakemake's stderr,
duplicated before the redirect. Every progress bar of the verb still draws into the log; the
outermost one also writes, at most every KETCHUP_PROGRESS_SECONDS (default 30) seconds, one line
to descriptor 3:

    ketchup distill results/restaurants/students/t5-tiny/ketchup_k4/seed0: train 40/100 (40%),
    loss=0.312, val=41.20; 1m12s elapsed, about 1m48s left

(on one line). Without the variable nothing is written; a descriptor that is not open (a worker
started by `accelerate launch` does not inherit it) turns the lines off for the process.
"""

from __future__ import annotations

import os
import time

from tqdm.auto import tqdm

FD_VARIABLE = "KETCHUP_PROGRESS_FD"
SECONDS_VARIABLE = "KETCHUP_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0

_job = {"name": "ketchup", "last": time.monotonic()}
_open: list[ProgressBar] = []


def set_job(name: str) -> None:
    """Name the job in its progress lines (the CLI: verb and output path)."""
    _job["name"] = name


def _interval() -> float:
    try:
        return float(os.environ.get(SECONDS_VARIABLE, DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def progress_line(
    desc: str, n: int, total: int | None, postfix: str, elapsed: float, done_here: int
) -> str:
    """'ketchup <job>: <desc> n/total (p%), <postfix>; <elapsed> elapsed, about <left> left'."""
    line = f"{_job['name']}: {desc} {n}"
    if total:
        line += f"/{total} ({100 * n / total:.0f}%)"
    if postfix:
        line += f", {postfix}"
    line += f"; {_duration(elapsed)} elapsed"
    if total and done_here > 0 and n < total:
        line += f", about {_duration(elapsed / done_here * (total - n))} left"
    return line


def _write(line: str) -> None:
    fd = os.environ.get(FD_VARIABLE)
    if not fd:
        return
    try:
        os.write(int(fd), (line + "\n").encode())
    except (OSError, ValueError):
        os.environ.pop(FD_VARIABLE, None)  # not open here: no more lines from this process


class ProgressBar(tqdm):
    """tqdm (into the job's log) whose updates, for the outermost open bar, also feed the
    progress line; a bar opened inside another (validation inside training) stays in the log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._outer = not _open
        self._started = self.n
        _open.append(self)

    def update(self, n: float | None = 1):
        displayed = super().update(n)
        now = time.monotonic()
        if self._outer and not self.disable and now - _job["last"] >= _interval():
            _job["last"] = now
            elapsed = self.format_dict["elapsed"]
            _write(
                progress_line(
                    self.desc,
                    self.n,
                    self.total,
                    self.postfix or "",
                    elapsed,
                    self.n - self._started,
                )
            )
        return displayed

    def close(self):
        if self in _open:
            _open.remove(self)
        super().close()
