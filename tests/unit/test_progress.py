"""Progress lines: the outermost bar of a job writes which job, which phase and step N of M to
the descriptor KETCHUP_PROGRESS_FD names, at most every KETCHUP_PROGRESS_SECONDS; nothing without
the variable, and a closed descriptor turns the lines off instead of failing the job."""

from __future__ import annotations

import os
import time

import pytest

from ketchup.train import progress


@pytest.fixture
def channel(monkeypatch):
    """A pipe standing in for Snakemake's stderr; yields a function that reads what was sent."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    monkeypatch.setenv(progress.FD_VARIABLE, str(write_end))
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")
    monkeypatch.setitem(progress._job, "name", "ketchup distill results/t/students/s/llmr/seed0")

    def sent() -> list[str]:
        try:
            return os.read(read_end, 1 << 16).decode().splitlines()
        except BlockingIOError:
            return []

    yield sent
    os.close(read_end)
    os.close(write_end)


def test_the_outer_bar_says_which_job_and_step_and_a_nested_one_stays_quiet(channel):
    with progress.ProgressBar(total=4, desc="train") as bar:
        bar.update(1)
        with progress.ProgressBar(total=8, desc="generate") as inner:  # validation, in the log
            inner.update(8)
        bar.set_postfix(loss="0.312", refresh=False)
        bar.update(1)
    lines = channel()
    assert len(lines) == 2, lines
    assert lines[0].startswith("ketchup distill results/t/students/s/llmr/seed0: train 1/4 (25%)")
    assert lines[1].startswith("ketchup distill results/t/students/s/llmr/seed0: train 2/4 (50%)")
    assert ", loss=0.312;" in lines[1] and "elapsed, about " in lines[1]


def test_lines_are_spaced_by_the_interval(channel, monkeypatch):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "3600")
    # the last line two hours ago (not at monotonic time 0, which on a machine up for less than
    # an hour is less than an hour ago)
    monkeypatch.setitem(progress._job, "last", time.monotonic() - 7200.0)
    with progress.ProgressBar(total=5, desc="train") as bar:
        bar.update(5)  # five updates, one line: the next is due in an hour
        bar.update(0)
    assert len(channel()) == 1


def test_without_the_variable_or_with_a_closed_descriptor_nothing_is_written(monkeypatch):
    monkeypatch.delenv(progress.FD_VARIABLE, raising=False)
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "0")
    with progress.ProgressBar(total=2, desc="train") as bar:
        bar.update(2)
    monkeypatch.setenv(progress.FD_VARIABLE, str(2**20))  # not open: as under accelerate
    with progress.ProgressBar(total=2, desc="train") as bar:
        bar.update(1)  # no error: the job goes on
    assert progress.FD_VARIABLE not in os.environ  # and the process stops trying


def test_durations_read_like_a_clock():
    line = progress.progress_line("generate", 30, 120, "", 90.0, 30)
    assert line.endswith("generate 30/120 (25%); 1m30s elapsed, about 4m30s left")
