"""The training loop's pieces that make resumption exact: batch order, schedule, log truncation."""

from __future__ import annotations

import json

import pytest
import torch

from ketchup.train.loop import StepLog, batch_indices, linear_schedule


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, bs = 10, 4
    first_epoch = sum((batch_indices(n, bs, seed=3, step=s) for s in range(2)), [])
    assert len(set(first_epoch)) == 8
    # steps 0..4 draw 20 indices = two epochs; each index appears exactly twice
    two_epochs = sum((batch_indices(n, bs, seed=3, step=s) for s in range(5)), [])
    assert sorted(two_epochs) == sorted(list(range(n)) * 2)
    assert batch_indices(n, bs, 3, 7) == batch_indices(n, bs, 3, 7)
    assert batch_indices(n, bs, 3, 0) != batch_indices(n, bs, 4, 0)
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, bs, 0, 0)


def test_batch_larger_than_the_data_wraps_into_the_next_epoch():
    assert sorted(batch_indices(3, 6, seed=0, step=0)) == [0, 0, 1, 1, 2, 2]


def test_linear_schedule_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=2, total_steps=6)
    rates = []
    for _ in range(6):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_resumed_log_drops_entries_after_the_checkpoint(tmp_path):
    path = tmp_path / "log.jsonl"
    log = StepLog(path, resume_step=0)
    for step in range(1, 6):
        log.write(kind="train", step=step, loss=1.0 / step)
    with path.open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut short by SIGKILL
    StepLog(path, resume_step=3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    StepLog(path, resume_step=0)
    assert path.read_text() == ""
