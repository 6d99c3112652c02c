"""Data parallelism for the trainers: several processes, one model replica each.

A verb started by `accelerate launch --multi_gpu --num_processes N` (or `torchrun
--nproc_per_node N`) sees RANK / WORLD_SIZE / LOCAL_RANK in its environment; a plain start is one
process and everything here is a no-op. With N processes, each takes every N-th row of the global
batch, gradients are averaged across processes after the backward pass (one all-reduce of the
flattened gradients: what DDP does, without wrapping the model, so generation and teacher-forced
passes call the model as they always do), and only the main process evaluates, logs and writes
files while the others wait for it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


@functools.cache
def processes() -> Processes:
    """This process's place among those of the job; joins the process group on first call."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(0, 1, 0)
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank)


def shard(items: Sequence[T], procs: Processes) -> list[T]:
    """This process's share of a global batch: every world-th item from its rank."""
    return list(items[procs.rank :: procs.world])


def average_gradients(parameters: Sequence[Any], procs: Processes) -> None:
    """Replace each gradient by its mean over the processes (in place; one all-reduce)."""
    if not procs.distributed:
        return
    import torch
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= procs.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def sum_over_processes(
    values: Sequence[float], procs: Processes, device: Any = None
) -> list[float]:
    """Element-wise sum of a few numbers over the processes (the numbers themselves when alone)."""
    if not procs.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(value: T, procs: Processes) -> T:
    """The main process's `value`, on every process."""
    if not procs.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(procs: Processes) -> None:
    """Wait until every process gets here (after the main process wrote a file, say)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()
