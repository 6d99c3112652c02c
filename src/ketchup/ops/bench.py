"""`ketchup bench`: one distillation update, timed side by side with TRL and the paper's loop shape.

What one run measures, on the same models, prompts, batch and lengths, with every configuration
timed once per repeat in turn (so a noisy machine slows them alike; the ratios are what count):
- `ours ketchup_k<K>` (and `ours llmr` for K = 1, `ours gkd`): the workflow's own on-policy update
  (`train.losses.onpolicy_loss`: batched KV-cached rollouts, one no-grad teacher pass, vectorised
  returns, the loss) then backward, gradient clipping and the AdamW step;
- `paper-loop ketchup_k<K>`: the released KETCHUP code's loop shape rebuilt with our components,
  one sequence per forward pass with gradient accumulation over 8 sequences;
- `trl gkd` and `trl distillation`: TRL's GKDTrainer and DistillationTrainer (the one TRL now
  recommends for on-policy distillation), each its training_step and its optimizer step, at our
  settings (see `trl_update`): always on-policy, the same generalised JSD (beta 0.5), sampling
  from the full distribution at temperature 1 for the same number of new tokens. TRL's trainers
  are built for causal LMs, so every model here is a decoder-only GPT-2 built from a config
  (random weights, nothing downloaded).
Random weights seldom emit EOS, so every rollout runs to the length cap: equal work per rollout.

Also: the share of `ours` update time spent in each phase (rollout, teacher pass, student forward,
rewards and returns, the rest of the loss, backward, optimizer); with `--gpu` the same update at
the paper's sizes (`run_gpu_bench`); and with `--study DIR` the wall time, job time and peak
memory of a finished study from Snakemake's `benchmark:` files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("rollout", "teacher", "student_forward", "returns", "loss", "backward", "optimizer")
# The generalised JSD's mixture weight in every GKD-style update here (ours, TRL's two trainers):
# the same meaning in all three (0 forward KL, 1 reverse KL), but GKDConfig defaults to 0.5 and
# DistillationConfig to 1.0, so it is always set.
BETA = 0.5


class PhaseTimer:
    """Exclusive wall time per phase: a phase nested in another is not counted twice."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.totals, self._stack = sync, dict.fromkeys(PHASES, 0.0), []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            self.sync()
            _, start, nested = self._stack.pop()
            spent = time.perf_counter() - start
            self.totals[name] += spent - nested
            if self._stack:
                self._stack[-1][2] += spent

    def wrap(self, owner: Any, attribute: str, name: str | Callable[..., str]):
        """Patch `owner.attribute` so its calls count as phase `name` (or name(*args, **kwargs))."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)
        return lambda: setattr(owner, attribute, original)


@contextlib.contextmanager
def timed_phases(timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Count the production code's rollout, teacher pass, forward, returns and loss as phases."""
    from ketchup.math import objectives
    from ketchup.train import generation, losses

    restore = [
        timer.wrap(generation, "generate_ids", "rollout"),
        timer.wrap(
            losses.Models,
            "logits",
            lambda self, model, *a, grad, **k: "student_forward" if grad else "teacher",
        ),
        *(
            timer.wrap(objectives, name, "returns")
            for name in (
                "taken_q_and_values",
                "kstep_returns_from_values",
                "kstep_rewards_from_values",
            )
        ),
        *(
            timer.wrap(objectives, name, "loss")
            for name in (
                "policy_gradient_objective",
                "minillm_objective",
                "fdistill_objective",
                "gkd_objective",
            )
        ),
    ]
    try:
        yield timer
    finally:
        for undo in reversed(restore):
            undo()


@dataclass
class Setup:
    tokenizer: Any
    student: Any
    teacher: Any
    rows: list[dict[str, Any]]
    device: Any
    max_new_tokens: int
    max_source_length: int = 64
    # the student's autocast dtype (weights stay float32), as the trainer's `precision` runs it;
    # None: plain float32
    compute_dtype: Any = None


def device_sync(device) -> Callable[[], None]:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _autocast(setup: Setup):
    import torch

    if setup.compute_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(setup.device.type, dtype=setup.compute_dtype)


def embedded_rows_and_tokenizer(n_train: int):
    """Training rows of the embedded task and a 1,000-token BPE tokenizer trained on them."""
    from ketchup.config import TaskConfig, parse_section
    from ketchup.data.registry import load_task
    from ketchup.data.tokenizer import train_tokenizer

    task = {"dataset": "embedded", "embedded": {"n_train": n_train, "n_validation": 4, "n_test": 4}}
    rows = load_task("bench", parse_section(TaskConfig, task, "task", "task"))["train"]
    return rows, train_tokenizer([t for r in rows for t in (r["source"], r["target"])], 1000)


def cut_to_tokens(tokenizer, texts: Sequence[str], max_length: int) -> list[str]:
    """Each text cut to the `max_length` tokens (special tokens counted) our rollouts see after
    their truncation, as text: for a trainer that tokenizes prompt text without truncating it
    (TRL's DistillationTrainer), so that it sees the same ids. Raises ValueError if the cut text
    does not encode to them (a tokenizer whose decoding does not round-trip)."""
    from ketchup.data.batching import encode_prompt_ids

    ids = encode_prompt_ids(tokenizer, texts, max_length)
    cut = tokenizer.batch_decode(ids, skip_special_tokens=True)
    again = encode_prompt_ids(tokenizer, cut, max_length + 1)
    for text, before, after in zip(cut, ids, again, strict=True):
        if before != after:
            raise ValueError(f"cut_to_tokens: {text[:60]!r}... does not encode to its own ids")
    return cut


def build_setup(args) -> Setup:
    """Tokenizer trained on the embedded task; GPT-2 student and teacher from configs."""
    import torch

    from ketchup.config import ModelConfig
    from ketchup.models.loading import build_model, disable_dropout
    from ketchup.models.parallel import default_device

    rows, tokenizer = embedded_rows_and_tokenizer(512)
    device = torch.device(args.device) if args.device else default_device()

    def gpt2(width: int, layers: int):
        arch = {
            "model_type": "gpt2",
            "n_embd": width,
            "n_layer": layers,
            "n_head": 4,
            "n_positions": 256,
        }
        return build_model(ModelConfig(None, arch, "float32"), tokenizer, device=device)

    torch.manual_seed(0)
    teacher = gpt2(args.teacher_width, args.teacher_layers).eval()
    student = disable_dropout(gpt2(args.student_width, args.student_layers))  # as distill does
    rows = [dict(r, imitate=r["target"]) for r in rows]
    return Setup(tokenizer, student, teacher, rows, device, args.max_new_tokens)


def _distill_config(max_new_tokens: int, max_source_length: int = 64):
    """The on-policy settings: sampling from the full distribution at temperature 1, GKD always
    on-policy (as TRL's trainers are run beside it), every rollout kept, no clipping; the rest
    the schema's defaults."""
    from ketchup.config import DistillConfig, parse_section

    rollout = {
        "top_k": 0,
        "max_new_tokens": max_new_tokens,
        "drop_truncated": False,
        "max_source_length": max_source_length,
    }
    section = {
        "rollout": rollout,
        "policy_gradient": {"clip": None},
        "gkd": {"lmbda": 1.0, "temperature": 1.0, "top_k": 0, "beta": BETA},
    }
    return parse_section(DistillConfig, section, "distill", "distill")


def _production_loss(setup: Setup, system: str):
    """The distill stage's own on-policy loss for `system` (rollouts, teacher pass, objective)."""
    from ketchup.config import split_system
    from ketchup.train.losses import Models, onpolicy_loss

    method, k = split_system(system)
    length = setup.max_source_length
    models = Models(setup.student, setup.teacher, setup.tokenizer, "{source}", length)
    return onpolicy_loss(models, method, k, _distill_config(setup.max_new_tokens, length))


def ours(setup: Setup, system: str, batch: int, timer: PhaseTimer | None):
    """The workflow's update for `system` on `batch` rollouts, as a function of the rows that
    returns (examples, tokens)."""
    import torch

    loss_fn = _production_loss(setup, system)
    optimizer = torch.optim.AdamW(setup.student.parameters(), lr=1e-5)
    phase = timer.phase if timer else (lambda name: contextlib.nullcontext())

    def update(rows):
        with _autocast(setup):  # the backward pass follows the forward's dtypes
            loss, n_tokens, _ = loss_fn(setup.student, rows[:batch])
        with phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(setup.student.parameters(), 1.0)
            optimizer.step()
        return batch, n_tokens

    return update


def paper_loop(setup: Setup, system: str, accumulation: int = 8):
    """One sequence per forward pass, gradients accumulated over `accumulation` sequences (or
    the batch's rows, if fewer)."""
    import torch

    loss_fn = _production_loss(setup, system)
    optimizer = torch.optim.AdamW(setup.student.parameters(), lr=1e-5)

    def update(rows):
        optimizer.zero_grad(set_to_none=True)
        tokens, rows = 0, rows[:accumulation]
        for row in rows:
            with _autocast(setup):
                loss, n_tokens, _ = loss_fn(setup.student, [row])
            (loss / len(rows)).backward()
            tokens += n_tokens
        torch.nn.utils.clip_grad_norm_(setup.student.parameters(), 1.0)
        optimizer.step()
        return len(rows), tokens

    return update


# TRL's on-policy distillation trainers: (module, config class, trainer class, this trainer's
# name for the rollout length, its own settings). GKD's lmbda 1: always on-policy, the only mode
# DistillationTrainer has.
TRL_TRAINERS = {
    "gkd": ("trl.experimental.gkd", "GKDConfig", "GKDTrainer", "max_new_tokens", {"lmbda": 1.0}),
    "distillation": (
        "trl",
        "DistillationConfig",
        "DistillationTrainer",
        "max_completion_length",
        {"top_k": 0, "top_p": 1.0},
    ),
}


def trl_update(setup: Setup, kind: str, batch: int, out_dir: Path):
    """TRL's `kind` trainer ("gkd" or "distillation"): its training_step on our prompts, then its
    optimizer's step, at the settings of ours: always on-policy, beta `BETA`, temperature 1 for
    sampling and loss, `setup.max_new_tokens` new tokens, learning rate 1e-5, gradient norm
    clipped at 1, the student's precision (TRL's default is a bfloat16 autocast), and no gradient
    checkpointing (both configs default to it, and GKD then generates without the KV cache)."""
    import importlib
    import warnings

    import torch

    warnings.filterwarnings("ignore", module="trl")
    module, config_class, trainer_class, length_key, own = TRL_TRAINERS[kind]
    trl = importlib.import_module(module)  # an ImportError when TRL cannot be imported
    from datasets import Dataset

    from ketchup.data.batching import encode_sources

    with warnings.catch_warnings():  # transformers renames gradient_checkpointing in v6
        warnings.simplefilter("ignore", FutureWarning)
        args = getattr(trl, config_class)(
            output_dir=str(out_dir),
            beta=BETA,
            temperature=1.0,
            per_device_train_batch_size=batch,
            learning_rate=1e-5,
            max_grad_norm=1.0,
            gradient_checkpointing=False,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=setup.device.type == "cpu",
            bf16=setup.compute_dtype == torch.bfloat16,
            fp16=setup.compute_dtype == torch.float16,
            **{length_key: setup.max_new_tokens},
            **own,
        )
    prompt = "-" if kind == "distillation" else [{"role": "user", "content": "-"}]
    dummy = Dataset.from_list([{"prompt" if kind == "distillation" else "messages": prompt}])
    # copies: the trainer wraps and patches the models it is given (accelerate's prepare)
    trainer = getattr(trl, trainer_class)(
        model=copy.deepcopy(setup.student),
        teacher_model=copy.deepcopy(setup.teacher),
        args=args,
        train_dataset=dummy,
        processing_class=setup.tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, bypassed here
    model = trainer.model
    model.train()
    length = setup.max_source_length

    def gkd_inputs(sources):
        prompts = encode_sources(setup.tokenizer, sources, length, padding_side="left")
        ids = prompts["input_ids"].to(setup.device)
        mask = prompts["attention_mask"].to(setup.device)
        inputs = {"prompts": ids, "prompt_attention_mask": mask, "input_ids": ids}
        return {**inputs, "attention_mask": mask, "labels": ids}

    def distillation_inputs(sources):
        return [{"prompt": text} for text in cut_to_tokens(setup.tokenizer, sources, length)]

    def new_tokens(inputs) -> int:
        if kind == "gkd":  # training_step put the rollouts in `inputs`, prompts masked
            return int((inputs["labels"] != -100).sum())
        return int(trainer._buffered_inputs[0]["completion_mask"].sum())

    make_inputs = gkd_inputs if kind == "gkd" else distillation_inputs

    def update(rows):
        inputs = make_inputs([r["source"] for r in rows[:batch]])
        trainer.training_step(model, inputs, None)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return batch, new_tokens(inputs)

    return update


@dataclass
class Timings:
    """What `time_updates` measured: per configuration the seconds of each timed update, the
    (examples, tokens) of one update, the peak GPU memory (GiB) and why it stopped, if it did."""

    seconds: dict[str, list[float]]
    work: dict[str, tuple[int, int]]
    peak_gib: dict[str, float]
    failed: dict[str, str]


def batch_rows(rows: Sequence[dict], repeat: int, batch: int) -> list[dict]:
    """Repeat `repeat`'s `batch` rows: a window moving through `rows`, wrapping around."""
    return [rows[(repeat * batch + i) % len(rows)] for i in range(batch)]


def time_updates(
    setup: Setup,
    configs: dict[str, Callable],
    timers: dict[str, PhaseTimer],
    repeats: int,
    batch: int,
    tolerate: Collection[str] = (),
) -> Timings:
    """Every configuration once per repeat, in turn, from the same student weights and the same
    RNG seed; repeat 0 warms up. A configuration that runs out of GPU memory is dropped, named,
    and so is one in `tolerate` (another library's trainer) that raises any error."""
    import torch
    from tqdm.auto import tqdm

    sync = device_sync(setup.device)
    cuda = setup.device.type == "cuda"
    timings = Timings({name: [] for name in configs}, {}, {}, {})
    student_state = {k: v.clone() for k, v in setup.student.state_dict().items()}
    for repeat in tqdm(range(repeats + 1), desc="repeats"):
        rows = batch_rows(setup.rows, repeat, batch)
        for name, update in configs.items():
            if name in timings.failed:
                continue
            setup.student.load_state_dict(student_state)  # every config from the same weights
            torch.manual_seed(repeat)
            timer = timers.get(name)
            if cuda:
                torch.cuda.reset_peak_memory_stats(setup.device)
            sync()
            start = time.perf_counter()
            try:
                with timed_phases(timer) if timer else contextlib.nullcontext():
                    timings.work[name] = update(rows)
                sync()
            except torch.cuda.OutOfMemoryError:
                timings.failed[name] = f"out of GPU memory at batch {batch}"
            except Exception as err:
                if name not in tolerate:
                    raise
                timings.failed[name] = error_line(err)
            if name in timings.failed:
                free_memory(setup)
                continue
            if repeat:
                timings.seconds[name].append(time.perf_counter() - start)
            elif timer:
                timer.totals = dict.fromkeys(PHASES, 0.0)  # the warm-up does not count
            if cuda:
                peak = torch.cuda.max_memory_allocated(setup.device) / 2**30
                timings.peak_gib[name] = max(peak, timings.peak_gib.get(name, 0.0))
    return timings


def error_line(err: BaseException) -> str:
    """'TypeError: the first line of its message' (at most 200 characters)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def free_memory(setup: Setup | None = None) -> None:
    """Drop the student's gradients and return cached GPU memory (after an out-of-memory error,
    once the exception that held the failed update's tensors is gone)."""
    import gc

    import torch

    if setup is not None:
        for p in setup.student.parameters():
            p.grad = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def table_cell(value: Any, spec: str) -> str:
    """A printed table's cell: empty where a figure does not apply."""
    return "" if value is None else format(value, spec)


def summary_rows(timings: Timings, ratios: dict[str, Callable[[str], str | None]]) -> list[dict]:
    """One row per configuration that ran: min / median / max update seconds, updates/s,
    examples/s, tokens/s, and for each `ratios` column its examples/s against the configuration
    `ratios[column](name)` names (None where the ratio does not apply: an empty cell)."""
    rows = []
    for name, seconds in timings.seconds.items():
        if name in timings.failed:
            continue
        median = statistics.median(seconds)
        examples, tokens = timings.work[name]
        rows.append(
            {
                "config": name,
                "update_s_min": min(seconds),
                "update_s_median": median,
                "update_s_max": max(seconds),
                "updates_per_s": 1 / median,
                "examples_per_s": examples / median,
                "tokens_per_s": tokens / median,
            }
        )
    speed = {r["config"]: r["examples_per_s"] for r in rows}
    for row in rows:
        for column, reference in ratios.items():
            row[column] = _ratio(row["examples_per_s"], speed.get(reference(row["config"]) or ""))
    return rows


def phase_rows(timings: Timings, timers: dict[str, PhaseTimer]) -> list[dict]:
    """Per timed configuration the share (%) of its update time in each phase, and the rest."""
    rows = []
    for name, timer in timers.items():
        if name in timings.failed:
            continue
        total = sum(timings.seconds[name])
        shares = {p: 100 * timer.totals[p] / total for p in PHASES}
        shares["other"] = 100 - sum(shares.values())
        rows.append({"system": name.split()[-1], **shares})
    return rows


def print_phases(rows: list[dict]) -> None:
    print("\nshare of our update's time per phase (%):\n")
    print("| system | " + " | ".join((*PHASES, "other")) + " |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    for r in rows:
        print(f"| {r['system']} | " + " | ".join(f"{r[p]:.1f}" for p in (*PHASES, "other")) + " |")


def run_update_bench(args) -> int:
    setup = build_setup(args)
    sync = device_sync(setup.device)
    batch = args.batch_size or 16
    ks = [int(k) for k in args.ks.split(",")]
    systems = [f"ketchup_k{k}" if k > 1 else "llmr" for k in ks]
    timers = {f"ours {s}": PhaseTimer(sync) for s in systems}
    configs: dict[str, Callable] = {}
    for system in systems:
        configs[f"ours {system}"] = ours(setup, system, batch, timers[f"ours {system}"])
    configs["ours gkd"] = ours(setup, "gkd", batch, None)
    for system in systems:
        configs[f"paper-loop {system}"] = paper_loop(setup, system)
    if not args.no_trl:
        for kind in TRL_TRAINERS:
            configs[f"trl {kind}"] = trl_update(setup, kind, batch, Path(args.out).parent / "trl")
    timings = time_updates(setup, configs, timers, args.repeats, batch)

    def paper(name: str) -> str | None:
        kind, system = name.split()
        return f"paper-loop {system}" if kind == "ours" else None

    ratios = {f"vs_trl_{kind}": (lambda name, k=kind: f"trl {k}") for kind in TRL_TRAINERS}
    rows = summary_rows(timings, {**ratios, "vs_paper_loop": paper})
    phases = phase_rows(timings, timers)
    return report(args, rows, phases, setup, batch)


def report(args, rows, phases, setup, batch) -> int:
    import resource

    from ketchup.files import csv_text, write_text

    out = Path(args.out)
    write_text(out, csv_text(rows, list(rows[0]), digits=4))
    write_text(out.with_name(out.stem + "_phases.csv"), csv_text(phases, list(phases[0]), 2))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\none update, {args.repeats} repeats, device {setup.device}, batch {batch}, "
        f"{setup.max_new_tokens} new tokens per rollout, student {params_text(setup.student)} / "
        f"teacher {params_text(setup.teacher)} parameters (GPT-2); process peak RSS {peak:.0f} MB\n"
    )
    print(
        "| config | update s (min / median / max) | updates/s | examples/s | tokens/s | "
        "x TRL GKD (examples/s) | x TRL Distillation (examples/s) | x paper loop (examples/s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratios = (table_cell(r[c], ".2f") for c in ("vs_trl_gkd", "vs_trl_distillation"))
        print(
            f"| {r['config']} | {r['update_s_min']:.3f} / {r['update_s_median']:.3f} / "
            f"{r['update_s_max']:.3f} | {r['updates_per_s']:.2f} | {r['examples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {' | '.join(ratios)} | "
            f"{table_cell(r['vs_paper_loop'], '.2f')} |"
        )
    print_phases(phases)
    print(f"\nwritten: {out} and {out.with_name(out.stem + '_phases.csv')}")
    return 0


def params_text(model) -> str:
    from ketchup.models.loading import count_parameters

    return f"{count_parameters(model):,}"


# the workflow's rules, longest first where one name starts another; a benchmark file is
# benchmarks/<rule>.tsv or benchmarks/<rule>_<wildcards>.tsv, where a wildcard may hold slashes
# (score_<student>/<system>/seed<s>.tsv); a task's under results/<task>/, the study's under results/
RULES = (
    "prepare_data",
    "tokenizer",
    "teacher_outputs",
    "teacher",
    "distill",
    "grad_variance",
    "generate",
    "score",
    "tables",
    "figures",
    "judge",
)


def study_summary(results: Path) -> int:
    """Wall time, job time and peak memory of a finished study, from its benchmark files."""
    files = sorted(p for p in results.rglob("*.tsv") if "benchmarks" in p.parent.parts)
    if not files:
        raise FileNotFoundError(f"{results}: no benchmarks/*.tsv (run the study first)")
    by_rule: dict[str, list[float]] = {}
    starts, ends, peak = [], [], 0.0
    for path in files:
        with path.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        seconds = float(row["s"])
        # the file's name below its benchmarks folder: its first part names the rule
        name = path.relative_to(results).as_posix().split("benchmarks/", 1)[1]
        rule = next((r for r in RULES if name == f"{r}.tsv" or name.startswith(f"{r}_")), name)
        by_rule.setdefault(rule, []).append(seconds)
        ends.append(path.stat().st_mtime)
        starts.append(ends[-1] - seconds)
        if row["max_rss"] not in ("", "NA", "-"):
            peak = max(peak, float(row["max_rss"]))
    wall = max(ends) - min(starts)
    total = sum(sum(v) for v in by_rule.values())
    print(
        f"{results}: {len(files)} jobs, {total / 60:.1f} job-minutes, wall {wall / 60:.1f} min "
        f"(first job start to last job end), peak job memory {peak:.0f} MB (max_rss)"
    )
    for rule, seconds in sorted(by_rule.items(), key=lambda kv: -sum(kv[1])):
        print(
            f"  {rule:16s} {len(seconds):4d} jobs  {sum(seconds) / 60:7.1f} job-min  "
            f"longest {max(seconds) / 60:5.1f} min"
        )
    return 0
