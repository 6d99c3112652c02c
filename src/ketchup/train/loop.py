"""The supervised training loop: teacher fine-tuning now, SFT and word-level distillation later.

What it guarantees:
- batches are a function of (seed, step) only, and the checkpoint holds model, optimizer, scheduler
  and every RNG state, so a run killed and resumed ends exactly where an uninterrupted run ends;
- the best model by validation metric (the paper's protocol) is kept in `<out>/best` and published
  to `<out>/model` only at the end, atomically; then `<out>/checkpoint` and `<out>/best` are
  removed (unless `keep_checkpoints`): a finished job keeps its model and its log only;
- a NaN or infinite loss stops the run naming the step, before any checkpoint is overwritten;
- a run none of whose updates had a token in its loss (every on-policy rollout cut by the length
  cap and dropped, say) stops at its first evaluation with an error, instead of publishing the
  unchanged model as if it had trained;
- one log line per update (loss, learning rate, gradient norm, tokens/s) and per evaluation in
  `<out>/log.jsonl`, which a resumed run truncates to its checkpoint's step first;
- the forward passes run under autocast in the model's compute dtype (`precision`, see
  `ketchup.models.precision`: bfloat16 on a capable GPU with `auto`), weights and optimizer state
  stay float32, and float16 adds a gradient scaler whose state the checkpoint keeps;
- under `accelerate launch` / `torchrun` with N processes, each process takes its share of the
  same global batch and the student runs under torch's DDP or FSDP2 (`train.parallel`, see
  `ketchup.models.parallel`): the gradients are averaged in the backward pass, the same updates as
  one process up to how the per-process token means are weighted. Only the main process logs and
  writes (and, under DDP, evaluates); the checkpoint holds the full model and optimizer state
  whatever the engine, and every process's RNG state, so a resumed run continues each process's
  own sampling stream.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ketchup.config import ConfigError, TrainConfig
from ketchup.files import CorruptFileError, atomic_path
from ketchup.models import parallel as distributed
from ketchup.train import loggers
from ketchup.train.signals import DivergedError, Preempted, sigterm_flag

STATE_FILE = "trainer_state.pt"


@dataclass
class TrainState:
    step: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    evals_since_best: int = 0
    updates_with_tokens: int = 0  # updates whose loss had at least one target token


class NoTrainingSignal(ConfigError):
    """Every update so far had an empty loss: the model never changed."""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of update `step`'s batch: epoch-wise permutations seeded by (seed, epoch).

    A pure function of its arguments, so a resumed run sees the batches an uninterrupted one does.
    """
    if n <= 0:
        raise ValueError("training set is empty")
    start = step * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator)
        take = min(batch_size - len(indices), n - offset)
        indices += order[offset : offset + take].tolist()
    return indices


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the configured rate, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoint:
    """`<out>/checkpoint`: what a resumed run needs, written atomically; tied to its config."""

    def __init__(self, out_dir: Path, fingerprint: dict[str, Any]):
        self.dir = out_dir / "checkpoint"
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))

    def save(self, engine, optimizer, scheduler, state: TrainState, scaler=None) -> None:
        """Every process calls this (the full state is gathered under FSDP); the main one writes."""
        model_state = engine.state_dict()
        optimizer_state = engine.optimizer_state_dict(optimizer)
        rng = distributed.gather_objects(_rng_state(), engine.procs)
        if not engine.procs.is_main:
            return
        with atomic_path(self.dir, directory=True) as tmp:
            torch.save(
                {
                    "model": model_state,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng[0],
                    "rng_per_process": rng,
                    "state": asdict(state),
                    "fingerprint": self.fingerprint,
                },
                tmp / STATE_FILE,
            )

    def load(self, engine, optimizer, scheduler, scaler=None) -> TrainState | None:
        """Restore a checkpoint written under the same config; None if there is none. Every
        process reads it and takes its own RNG state (the main one's when the number of
        processes changed)."""
        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated file: name it and what to delete
            raise CorruptFileError(
                f"{path}: cannot be read ({type(e).__name__}); delete {self.dir} to train "
                "this job from the start"
            ) from e
        if saved.get("fingerprint") != self.fingerprint:
            print(f"{self.dir}: written under another config; training from the start")
            return None
        engine.load_state_dict(saved["model"])
        engine.load_optimizer_state_dict(optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
        per_process = saved.get("rng_per_process") or [saved["rng"]]
        procs = engine.procs
        _set_rng_state(per_process[procs.rank] if len(per_process) == procs.world else saved["rng"])
        # a checkpoint from before updates_with_tokens was counted: take its updates as real
        state = TrainState(**{"updates_with_tokens": saved["state"]["step"], **saved["state"]})
        print(f"resuming from {self.dir} at step {state.step}")
        return state


class StepLog:
    """`<out>/log.jsonl`, one JSON object per update or evaluation (main process only)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True, mirrors: Sequence = ()):
        self.path, self.enabled, self.mirrors = path, enabled, list(mirrors)
        if not enabled:
            return
        kept = []
        if resume_step > 0 and path.is_file():
            # drop what was logged after the checkpoint: those updates are redone (a line cut
            # short by a kill is one of them: the checkpoint is written after its step's lines)
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    continue
                if step <= resume_step:
                    kept.append(line + "\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(kept))

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for mirror in self.mirrors:  # TensorBoard / wandb when KETCHUP_LOGGERS asks for them
            mirror(row)


def fit(
    model,
    tokenizer,
    *,
    train_rows: Sequence[dict[str, Any]],
    loss_fn: Callable[[Any, Sequence[dict[str, Any]]], tuple[torch.Tensor, int]],
    evaluate: Callable[[Any], float],
    cfg: TrainConfig,
    out_dir: str | Path,
    fingerprint: dict[str, Any],
    progress: bool = True,
    evaluate_initial: bool = False,
    precision: Any = "float32",
    keep_checkpoints: bool = False,
    empty_loss_hint: str | None = None,
) -> TrainState:
    """Train `model` with AdamW on `loss_fn` and keep the best checkpoint by `evaluate`.

    loss_fn(model, rows) -> (mean loss over the batch's target tokens, number of target tokens),
    or (loss, tokens, stats) with a dict of floats to log beside the loss (rollout length, mean
    return, ...).
    evaluate(model) -> validation score, higher is better; run every `cfg.eval_every` updates and
    after the last one. `evaluate_initial` also scores the model before the first update (a warm
    start), logged at step 0 as the reference the training curves start from; it is not a
    candidate for the best checkpoint.
    `precision` (a setting such as "auto" or "bfloat16", or a torch dtype) is the compute dtype of
    `loss_fn` and `evaluate`, both run under its autocast (see `ketchup.models.precision`).
    candidate for the best checkpoint. Once `<out_dir>/model` is written, the checkpoint and the
    best-so-far copy are removed unless `keep_checkpoints`.
    When no update up to an evaluation had a target token, NoTrainingSignal is raised with the
    share of rollouts that hit the length cap (the `finished_share` statistic, when loss_fn
    reports it) and `empty_loss_hint`, what to change.
    """
    from ketchup.models.precision import MixedPrecision
    from ketchup.train.progress import ProgressBar

    out_dir = Path(out_dir)
    procs = distributed.processes()
    # every process its own sampling / dropout stream; the main one's is a single process's
    torch.manual_seed(cfg.seed + 1_000_003 * procs.rank)
    random.seed(cfg.seed + 1_000_003 * procs.rank)
    engine = distributed.Engine(model, cfg.parallel, procs)  # before the optimizer: FSDP shards
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, cfg.steps)
    amp = MixedPrecision.for_model(model, precision)
    scaler = amp.grad_scaler()
    if scaler is not None and engine.sharded:
        raise ConfigError(
            "train.parallel: fsdp trains in float32 or bfloat16; float16's gradient scaler is "
            "not sharded: set the model's precision to bfloat16, or train.parallel: ddp"
        )
    checkpoint = Checkpoint(out_dir, fingerprint)
    state = checkpoint.load(engine, optimizer, scheduler, scaler) or TrainState()
    log = StepLog(
        out_dir / "log.jsonl",
        state.step,
        enabled=procs.is_main,
        mirrors=loggers.mirrors(out_dir, fingerprint) if procs.is_main else (),
    )
    best_dir = out_dir / "best"
    finished_shares: list[float] = []

    def validate(model) -> float:
        """The main process evaluates (every process, in step, under FSDP: its generation is a
        collective); every process gets the main one's score."""
        model.eval()
        with amp.autocast():
            value = float(evaluate(model)) if procs.is_main or engine.sharded else None
        model.train()
        return distributed.broadcast_from_main(value, procs)

    if evaluate_initial and state.step == 0:
        log.write(kind="eval", step=0, score=validate(model), best=False)
    bar = ProgressBar(
        total=cfg.steps, initial=state.step, disable=not (progress and procs.is_main), desc="train"
    )
    model.train()
    # the bar is closed however the loop ends, so an error is printed on a line of its own
    with sigterm_flag() as sigterm, bar:
        while state.step < cfg.steps:
            started = time.perf_counter()
            indices = batch_indices(len(train_rows), cfg.batch_size, cfg.seed, state.step)
            rows = [train_rows[i] for i in distributed.shard(indices, procs)]
            with amp.autocast():  # the backward pass follows the forward's dtypes
                loss, n_tokens, *extra = loss_fn(engine.student, rows)
            stats = extra[0] if extra else {}
            if "finished_share" in stats:
                finished_shares.append(float(stats["finished_share"]))
            # every process sees the same mean loss, so a NaN anywhere stops them all at this step
            # (and a SIGTERM to any process stops them all after this update)
            loss_sum, n_tokens, stop = distributed.sum_over_processes(
                [loss.item(), n_tokens, float(sigterm["set"])], procs, loss.device
            )
            mean_loss = loss_sum / procs.world
            if not math.isfinite(mean_loss):
                raise DivergedError(
                    f"loss is {mean_loss} at step {state.step + 1}; the last good checkpoint "
                    f"(step {state.step}) is kept in {checkpoint.dir}"
                )
            optimizer.zero_grad(set_to_none=True)
            # DDP's hooks all-reduce, FSDP's reduce-scatter the gradients during this pass
            (loss if scaler is None else scaler.scale(loss)).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is None:
                optimizer.step()
            else:  # skips the step when a gradient overflowed, and lowers the scale
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            state.step += 1
            state.updates_with_tokens += int(n_tokens > 0)
            elapsed = time.perf_counter() - started
            log.write(
                kind="train",
                step=state.step,
                loss=mean_loss,
                lr=scheduler.get_last_lr()[0],
                grad_norm=float(grad_norm),
                tokens_per_s=n_tokens / max(elapsed, 1e-9),
                **stats,
            )
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}")

            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                if state.updates_with_tokens == 0:
                    raise NoTrainingSignal(
                        _empty_loss_message(state.step, finished_shares, empty_loss_hint)
                    )
                score = validate(model)
                improved = score > state.best_score
                if improved:
                    state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
                    engine.save_pretrained(tokenizer, best_dir)
                else:
                    state.evals_since_best += 1
                log.write(kind="eval", step=state.step, score=score, best=improved)
                bar.set_postfix(loss=f"{mean_loss:.3f}", val=f"{score:.2f}")
                checkpoint.save(engine, optimizer, scheduler, state, scaler)
                distributed.barrier(procs)
                if cfg.patience and state.evals_since_best >= cfg.patience:
                    print(
                        f"early stop at step {state.step}: no improvement in {cfg.patience} evals"
                    )
                    break
            if stop:
                checkpoint.save(engine, optimizer, scheduler, state, scaler)
                distributed.barrier(procs)
                raise Preempted(
                    f"stopped by SIGTERM after step {state.step}; its checkpoint is saved in "
                    f"{checkpoint.dir}: rerun the job to resume from it"
                )

    if procs.is_main:
        with atomic_path(out_dir / "model", directory=True) as tmp:
            shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
        if not keep_checkpoints:
            # model/ is whole now; a rerun of a finished job trains afresh (its config changed,
            # or it was forced), so neither the optimizer state nor the best copy is needed.
            # The checkpoint goes first: killed in between, best/ alone resumes nothing.
            shutil.rmtree(checkpoint.dir, ignore_errors=True)
            shutil.rmtree(best_dir, ignore_errors=True)
    distributed.barrier(procs)
    return state


def _empty_loss_message(steps: int, finished_shares: list[float], hint: str | None) -> str:
    message = (
        f"none of the {steps} updates so far had a token in its loss, so none changed the model"
    )
    if finished_shares:
        truncated = 1 - sum(finished_shares) / len(finished_shares)
        message += (
            f": {truncated:.0%} of the rollouts hit the length cap without EOS and were dropped"
        )
    return f"{message}; {hint}" if hint else message


def generation_evaluator(
    tokenizer,
    rows: Sequence[dict[str, Any]],
    template: str,
    metric: str,
    generation,
    max_source_length: int,
) -> Callable[[Any], float]:
    """`evaluate` for :func:`fit`: greedy outputs on `rows`, scored with the task metric."""
    from ketchup.data.registry import format_prompt
    from ketchup.evaluate.metrics import validation_score
    from ketchup.train.generation import generate

    prompts = [format_prompt(template, row["source"]) for row in rows]

    def evaluate(model) -> float:
        outputs = generate(
            model, tokenizer, prompts, generation, max_source_length=max_source_length
        )
        return validation_score(metric, outputs, rows)

    return evaluate


def cross_entropy_loss(
    tokenizer, template: str, cfg: TrainConfig, device, seq2seq: bool, target_key: str
) -> Callable[[Any, Sequence[dict[str, Any]]], tuple[torch.Tensor, int]]:
    """`loss_fn` for :func:`fit`: token cross-entropy of `row[target_key]` given the prompt.

    Teacher fine-tuning and SFT imitate the references (`target`), SeqKD the teacher's outputs.
    """
    from ketchup.data.batching import encode_pairs
    from ketchup.data.registry import format_prompt

    def loss_fn(model, rows):
        batch = encode_pairs(
            tokenizer,
            [format_prompt(template, row["source"]) for row in rows],
            [row[target_key] for row in rows],
            cfg.max_source_length,
            cfg.max_target_length,
            seq2seq,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        return model(**batch).loss, int((batch["labels"] != -100).sum())

    return loss_fn
