"""The processes of a job and torch's engines over them: DDP, FSDP2, the teacher's placement.

A verb started by `accelerate launch --multi_gpu --num_processes N` (or `torchrun
--nproc_per_node N`) sees RANK / WORLD_SIZE / LOCAL_RANK in its environment; a plain start is one
process and the model is used as it is. With N processes each takes every N-th row of the global
batch and the trainer drives the student through an :class:`Engine` (`train.parallel`):

- `ddp`: torch's DistributedDataParallel. Every process holds the whole student and its optimizer
  state; the backward pass averages the gradients over the processes (DDP's bucketed all-reduce,
  overlapped with the backward). The loss function calls the student through the engine for its
  gradient pass (:attr:`Engine.student`), and the module itself for rollouts and evaluation.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`). The student is sharded per transformer
  block (the model's `_no_split_modules`) and at the root, so parameters, gradients and AdamW's
  state are split over the processes; a block's weights are gathered for its forward and
  backward only. `generate` is registered as a forward method (the root's weights are gathered
  for it) and runs with `synced_gpus`, so every process takes the same number of decoding steps
  (each step gathers each block: a collective). Evaluation runs on every process (the main one's
  score is used); checkpoints and `save_pretrained` directories hold the full, unsharded state.

Either way the gradients are the mean over the processes of each process's loss gradient: the
same update as one process on the whole batch when every process's loss is a mean over the same
number of tokens (the tests check it), up to that weighting otherwise.

The teacher (`distill.teacher_placement`): `replicate` (a copy per process), `shard` (FSDP2 over
the job's processes, no optimizer: its teacher-forced pass, one per update on every process, is
the only place it runs) or `spread` (one process, its layers spread over the job's GPUs with
`device_map="auto"`).

Only the main process logs and writes files; the others wait for it at :func:`barrier`.
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


def default_device() -> Any:
    """This process's CUDA device when there is one (the job sees only its own), else the CPU.

    Under `accelerate launch` / `torchrun` each process takes the GPU of its LOCAL_RANK.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", processes().local_rank)


def shard(items: Sequence[T], procs: Processes) -> list[T]:
    """This process's share of a global batch: every world-th item from its rank."""
    return list(items[procs.rank :: procs.world])


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


def gather_objects(value: T, procs: Processes) -> list[T]:
    """Every process's `value`, in rank order, on every process ([value] when alone)."""
    if not procs.distributed:
        return [value]
    import torch.distributed as dist

    box: list[Any] = [None] * procs.world
    dist.all_gather_object(box, value)
    return box


def barrier(procs: Processes) -> None:
    """Wait until every process gets here (after the main process wrote a file, say)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()


PARALLEL_MODES = ("ddp", "fsdp")
TEACHER_PLACEMENTS = ("replicate", "shard", "spread")


def shard_model(model: Any) -> Any:
    """Shard `model` in place with FSDP2 over the job's processes: each transformer block (the
    classes in the model's `_no_split_modules`) and then the root, which keeps the embeddings and
    the head; `generate` gathers the root's weights like a forward does. Returns the model."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no transformer block (_no_split_modules): FSDP would "
            "gather the whole model at once; use train.parallel: ddp"
        )
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    register_fsdp_forward_method(model, "generate")
    return model


def load_teacher(name_or_path: str, dtype: Any, placement: str, procs: Processes) -> Any:
    """The no-grad teacher of a training job, placed as `distill.teacher_placement` says.

    replicate: on this process's device; shard: then sharded with FSDP2 over the job's processes
    (alone: as replicate); spread: its layers over the visible GPUs (`device_map="auto"`), for a
    one-process job (with one GPU or none: as replicate, nothing to spread over)."""
    import torch

    from ketchup.models.loading import load_model

    if placement not in TEACHER_PLACEMENTS:
        raise ValueError(f"teacher placement must be one of {TEACHER_PLACEMENTS}: {placement!r}")
    if placement == "spread":
        if procs.distributed:
            raise ValueError(
                "distill.teacher_placement: spread serves a one-process job holding several GPUs; "
                f"this job runs as {procs.world} processes (the workflow starts a distill job "
                "with spread as one process: rerun it through the workflow)"
            )
        if torch.cuda.device_count() > 1:
            return load_model(name_or_path, dtype=dtype, device_map="auto")
    teacher = load_model(name_or_path, dtype=dtype, device=default_device())
    if placement == "shard" and procs.distributed:
        shard_model(teacher)
    return teacher


def is_sharded(model: Any) -> bool:
    """Whether `model` is sharded by FSDP2 (its forward and generate are then collectives)."""
    if model is None or not _distributed_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _distributed_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


class _ThroughEngine:
    """The student as a loss function sees it under DDP: its attributes are the model's own
    (config, device, `generate`, the forward's signature); a call with gradients runs through the
    DDP engine, whose hooks average the gradients in the backward pass, and a call without them
    (a rollout's decoding steps) through the model itself, so that no process waits for another."""

    def __init__(self, engine: Any):
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if torch.is_grad_enabled():
            return self._engine(*args, **kwargs)
        return self._engine.module(*args, **kwargs)


class Engine:
    """The student under one of torch's engines (`mode`: ddp or fsdp; alone: the model as is).

    `module` is the model (sharded in place under fsdp); `student` is what the loss function
    calls. The state-dict methods give and take full, unsharded states: collectives under fsdp,
    so every process calls them; the main process writes what they return.
    """

    def __init__(self, model: Any, mode: str, procs: Processes):
        if mode not in PARALLEL_MODES:
            raise ValueError(f"train.parallel must be one of {PARALLEL_MODES}, got {mode!r}")
        self.module, self.procs = model, procs
        self.mode = mode if procs.distributed else "alone"
        self._ddp = None
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = next(model.parameters()).device.type == "cuda"
            # no buffer broadcast: it is a collective in every forward, and only the gradient
            # pass is in step on every process (the models here keep no running statistics)
            self._ddp = DistributedDataParallel(
                model, device_ids=[procs.local_rank] if on_gpu else None, broadcast_buffers=False
            )
        elif self.mode == "fsdp":
            shard_model(model)

    @property
    def student(self) -> Any:
        return _ThroughEngine(self._ddp) if self._ddp is not None else self.module

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"

    def state_dict(self) -> dict[str, Any]:
        """The full model state (on the CPU under fsdp, where only the main process gets it)."""
        if not self.sharded:
            return self.module.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.module, options=options)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.sharded:
            self.module.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state_dict(self, optimizer: Any) -> dict[str, Any]:
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.module, optimizer, options=options)

    def load_optimizer_state_dict(self, optimizer: Any, state: dict[str, Any]) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            self.module, optimizer, state, options=StateDictOptions(full_state_dict=True)
        )

    def save_pretrained(self, tokenizer: Any, out_dir: Any) -> None:
        """The model as one ordinary `save_pretrained` directory, written by the main process
        (every process calls this: under fsdp the full state is gathered first)."""
        from ketchup.models.loading import save_model

        state = self.state_dict() if self.sharded else None
        if self.procs.is_main:
            save_model(self.module, tokenizer, out_dir, state_dict=state)
