"""How a training job stops early, cleanly: SIGTERM (SLURM's preemption or time-limit signal,
`kill`) becomes a flag that the training loop reads after each update, so it can save a
checkpoint before it exits; a loss that turns NaN stops the job with the last good checkpoint kept.
No torch here: the CLI imports it for every verb."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the job stopped, its last good checkpoint kept."""


class Preempted(RuntimeError):
    """SIGTERM (SLURM's preemption or time-limit signal, or `kill`) stopped training after an
    update, whose checkpoint was saved first: a rerun resumes from it."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


@contextlib.contextmanager
def sigterm_flag() -> Iterator[dict[str, bool]]:
    """A flag that SIGTERM sets (instead of killing the process) while the block runs."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
