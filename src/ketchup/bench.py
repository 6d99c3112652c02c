"""`ketchup bench`: one distillation update, timed side by side with TRL and the paper's loop shape.

What one run measures, on the same models, prompts, batch and lengths, with every configuration
timed once per repeat in turn (so a noisy machine slows them alike; the ratios are what count):
- `ours ketchup_k<K>` (and `ours llmr` for K = 1, `ours gkd`): the workflow's own on-policy update
  (`stages.distill.onpolicy_loss`: batched KV-cached rollouts, one no-grad teacher pass, vectorised
  returns, the loss) then backward, gradient clipping and the AdamW step;
- `paper-loop ketchup_k<K>`: the released KETCHUP code's loop shape rebuilt with our components,
  one sequence per forward pass with gradient accumulation over 8 sequences;
- `trl gkd`: TRL's GKDTrainer.training_step (lmbda 1: always on-policy, beta 0.5) and its
  optimizer step, generation matched (sampling from the full distribution, temperature 1, the
  same number of new tokens). TRL's trainers are built for causal LMs, so every model here is a
  decoder-only GPT-2 built from a config (random weights, nothing downloaded).
Random weights seldom emit EOS, so every rollout runs to the length cap: equal work per rollout.

Also: the share of `ours` update time spent in each phase (rollout, teacher pass, student forward,
rewards and returns, the rest of the loss, backward, optimizer), and with `--study DIR` the wall
time, job time and peak memory of a finished study from Snakemake's `benchmark:` files.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("rollout", "teacher", "student_forward", "returns", "loss", "backward", "optimizer")


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
    from ketchup import generation
    from ketchup.math import objectives
    from ketchup.stages import distill

    restore = [
        timer.wrap(generation, "generate_ids", "rollout"),
        timer.wrap(
            distill.Models,
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


def _sync(device) -> Callable[[], None]:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _embedded_rows_and_tokenizer(n_train: int):
    """Training rows of the embedded task and a 1,000-token BPE tokenizer trained on them."""
    from ketchup.config import TaskConfig, parse_section
    from ketchup.tasks import load_task
    from ketchup.tokenizer import train_tokenizer

    task = {"dataset": "embedded", "embedded": {"n_train": n_train, "n_validation": 4, "n_test": 4}}
    rows = load_task("bench", parse_section(TaskConfig, task, "task", "task"))["train"]
    return rows, train_tokenizer([t for r in rows for t in (r["source"], r["target"])], 1000)


def build_setup(args) -> Setup:
    """Tokenizer trained on the embedded task; GPT-2 student and teacher from configs."""
    import torch

    from ketchup.config import ModelConfig
    from ketchup.models import build_model, default_device, disable_dropout

    rows, tokenizer = _embedded_rows_and_tokenizer(512)
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
    on-policy (as TRL's GKD is run beside it: lmbda 1), every rollout kept, no clipping; the rest
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
        "gkd": {"lmbda": 1.0, "temperature": 1.0, "top_k": 0},
    }
    return parse_section(DistillConfig, section, "distill", "distill")


def _production_loss(setup: Setup, system: str):
    """The distill stage's own on-policy loss for `system` (rollouts, teacher pass, objective)."""
    from ketchup.config import split_system
    from ketchup.stages.distill import Models, onpolicy_loss

    method, k = split_system(system)
    models = Models(setup.student, setup.teacher, setup.tokenizer, "{source}", 64)
    return onpolicy_loss(models, method, k, _distill_config(setup.max_new_tokens))


def ours(setup: Setup, system: str, batch: int, timer: PhaseTimer | None):
    """The workflow's update for `system` on `batch` rollouts, as a function of the rows that
    returns (examples, tokens)."""
    import torch

    loss_fn = _production_loss(setup, system)
    optimizer = torch.optim.AdamW(setup.student.parameters(), lr=1e-5)
    phase = timer.phase if timer else (lambda name: contextlib.nullcontext())

    def update(rows):
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
    """One sequence per forward pass, gradients accumulated over `accumulation` sequences."""
    import torch

    loss_fn = _production_loss(setup, system)
    optimizer = torch.optim.AdamW(setup.student.parameters(), lr=1e-5)

    def update(rows):
        optimizer.zero_grad(set_to_none=True)
        tokens = 0
        for row in rows[:accumulation]:
            loss, n_tokens, _ = loss_fn(setup.student, [row])
            (loss / accumulation).backward()
            tokens += n_tokens
        torch.nn.utils.clip_grad_norm_(setup.student.parameters(), 1.0)
        optimizer.step()
        return accumulation, tokens

    return update


def trl_gkd(setup: Setup, batch: int, out_dir: Path):
    """TRL's GKDTrainer: its training_step on our prompts, then its optimizer's step."""
    import warnings

    import torch
    from datasets import Dataset

    warnings.filterwarnings("ignore", module="trl")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from ketchup.batching import encode_sources

    args = GKDConfig(
        output_dir=str(out_dir),
        lmbda=1.0,
        beta=0.5,
        temperature=1.0,
        max_new_tokens=setup.max_new_tokens,
        per_device_train_batch_size=batch,
        learning_rate=1e-5,
        max_grad_norm=1.0,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=setup.device.type == "cpu",
        bf16=False,  # TRL's default autocasts to bfloat16; ours runs in float32 here
    )
    dummy = Dataset.from_list([{"messages": [{"role": "user", "content": "-"}]}])
    # copies: the trainer wraps and patches the models it is given (accelerate's prepare)
    trainer = GKDTrainer(
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

    def update(rows):
        prompts = encode_sources(
            setup.tokenizer, [r["source"] for r in rows[:batch]], 64, padding_side="left"
        )
        ids = prompts["input_ids"].to(setup.device)
        mask = prompts["attention_mask"].to(setup.device)
        inputs = {
            "prompts": ids,
            "prompt_attention_mask": mask,
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids,
        }
        trainer.training_step(model, inputs)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return batch, int((inputs["labels"] != -100).sum())

    return update


def run_update_bench(args) -> int:
    import torch

    setup = build_setup(args)
    sync = _sync(setup.device)
    ks = [int(k) for k in args.ks.split(",")]
    systems = [f"ketchup_k{k}" if k > 1 else "llmr" for k in ks]
    timers = {s: PhaseTimer(sync) for s in systems}
    configs: dict[str, Callable] = {}
    for system in systems:
        configs[f"ours {system}"] = ours(setup, system, args.batch_size, timers[system])
    configs["ours gkd"] = ours(setup, "gkd", args.batch_size, None)
    for system in systems:
        configs[f"paper-loop {system}"] = paper_loop(setup, system)
    if not args.no_trl:
        configs["trl gkd"] = trl_gkd(setup, args.batch_size, Path(args.out).parent / "trl")
    times: dict[str, list[float]] = {name: [] for name in configs}
    work: dict[str, tuple[int, int]] = {}
    student_state = {k: v.clone() for k, v in setup.student.state_dict().items()}
    from tqdm.auto import tqdm

    for repeat in tqdm(range(args.repeats + 1), desc="repeats"):  # repeat 0 warms up
        rows = setup.rows[(repeat * args.batch_size) % 256 :][: args.batch_size]
        for name, update in configs.items():
            setup.student.load_state_dict(student_state)  # every config from the same weights
            torch.manual_seed(repeat)
            system = name.split()[-1]
            timer = timers.get(system) if name.startswith("ours") else None
            phases = timed_phases(timer) if timer else contextlib.nullcontext()
            sync()
            start = time.perf_counter()
            with phases:
                work[name] = update(rows)
            sync()
            if repeat:
                times[name].append(time.perf_counter() - start)
            elif timer:
                timer.totals = dict.fromkeys(PHASES, 0.0)  # the warm-up does not count
    return report(args, configs, times, work, timers, setup)


def report(args, configs, times, work, timers, setup) -> int:
    import resource

    from ketchup.files import csv_text, write_text

    rows = []
    trl = statistics.median(times["trl gkd"]) if "trl gkd" in times else None
    for name in configs:
        median = statistics.median(times[name])
        examples, tokens = work[name]
        system = name.split()[-1]
        paper = times.get(f"paper-loop {system}")
        rows.append(
            {
                "config": name,
                "update_s_min": min(times[name]),
                "update_s_median": median,
                "update_s_max": max(times[name]),
                "updates_per_s": 1 / median,
                "examples_per_s": examples / median,
                "tokens_per_s": tokens / median,
                "vs_trl": (trl / median) * (examples / work["trl gkd"][0]) if trl else float("nan"),
                "vs_paper_loop": (
                    (examples / median)
                    / (work[f"paper-loop {system}"][0] / statistics.median(paper))
                    if paper and not name.startswith("paper")
                    else float("nan")
                ),
            }
        )
    columns = list(rows[0])
    out = Path(args.out)
    write_text(out, csv_text(rows, columns, digits=4))
    phase_rows = []
    for system, timer in timers.items():
        total = sum(times[f"ours {system}"])
        shares = {p: 100 * timer.totals[p] / total for p in PHASES}
        shares["other"] = 100 - sum(shares.values())
        phase_rows.append({"system": system, **shares})
    write_text(
        out.with_name(out.stem + "_phases.csv"), csv_text(phase_rows, list(phase_rows[0]), 2)
    )

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\none update, {args.repeats} repeats, device {setup.device}, batch {args.batch_size}, "
        f"{setup.max_new_tokens} new tokens per rollout, student {_params(setup.student)} / "
        f"teacher {_params(setup.teacher)} parameters (GPT-2); process peak RSS {peak:.0f} MB\n"
    )
    print(
        "| config | update s (min / median / max) | updates/s | examples/s | tokens/s | "
        "x TRL (examples/s) | x paper loop (examples/s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['update_s_min']:.3f} / {r['update_s_median']:.3f} / "
            f"{r['update_s_max']:.3f} | {r['updates_per_s']:.2f} | {r['examples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['vs_trl']:.2f} | {r['vs_paper_loop']:.2f} |"
        )
    print("\nshare of our update's time per phase (%):\n")
    print("| system | " + " | ".join((*PHASES, "other")) + " |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    for r in phase_rows:
        print(f"| {r['system']} | " + " | ".join(f"{r[p]:.1f}" for p in (*PHASES, "other")) + " |")
    print(f"\nwritten: {out} and {out.with_name(out.stem + '_phases.csv')}")
    return 0


def _params(model) -> str:
    from ketchup.models import count_parameters

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


# The paper's models, from their published configs (random weights: nothing is downloaded).
FLAN_T5_XL = {
    "model_type": "t5",
    "d_model": 2048,
    "d_ff": 5120,
    "d_kv": 64,
    "num_heads": 32,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
T5_BASE = {
    "model_type": "t5",
    "d_model": 768,
    "d_ff": 3072,
    "d_kv": 64,
    "num_heads": 12,
    "num_layers": 12,
    "num_decoder_layers": 12,
}
T5_VOCAB = 32128


def matmul_peak(device, dtype, n: int = 8192, repeats: int = 10) -> float:
    """Achieved FLOP/s of a square matrix multiply: the reference the update is compared with."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync = _sync(device)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _forward_flops(model, source: int, target: int) -> float:
    """2 x parameters x tokens for one teacher-forced pass (attention scores left out)."""
    from ketchup.models import count_parameters

    encoder = count_parameters(model.get_encoder())
    return 2 * (encoder * source + (count_parameters(model) - encoder) * target)


def paper_scale_update(
    device,
    teacher_arch: dict,
    student_arch: dict,
    *,
    source: int,
    target: int,
    batch: int,
    repeats: int,
    k: int = 4,
    vocab: int = T5_VOCAB,
    matmul_n: int = 8192,
) -> dict[str, float]:
    """KETCHUP's update at the paper's scale, in the precision the workflow's trainer uses on the
    device (`auto`: the teacher in bfloat16 on a capable GPU, the student in float32 under a
    bfloat16 autocast), `source`-token prompts, `target`-token rollouts. Returns updates/s,
    tokens/s, peak memory, achieved and matmul-peak FLOP/s."""
    import torch

    from ketchup.config import ModelConfig
    from ketchup.models import build_model, disable_dropout, resolve_dtype
    from ketchup.precision import MixedPrecision
    from ketchup.stages.distill import Models, onpolicy_loss

    rows, tokenizer = _embedded_rows_and_tokenizer(256)
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(vocab - len(tokenizer))])
    # prompts of `source` tokens at least (cut to `source`): several records joined
    text = " ".join(r["source"] for r in rows)
    prompts = [{"source": text[i * 97 :], "target": ""} for i in range(batch)]
    dtype = resolve_dtype("auto", device)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = build_model(ModelConfig(None, teacher_arch, "auto"), tokenizer, dtype=dtype)
        student = build_model(ModelConfig(None, student_arch, "auto"), tokenizer, dtype="float32")
    teacher.eval()
    student = disable_dropout(student).train()
    cfg = _distill_config(target, source)
    loss_fn = onpolicy_loss(
        Models(student, teacher, tokenizer, "{source}", source), "ketchup", k, cfg
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    amp = MixedPrecision.for_model(student, "auto")
    sync = _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, tokens = [], 0
    for repeat in range(repeats + 1):
        sync()
        start = time.perf_counter()
        with amp.autocast():
            loss, n_tokens, _ = loss_fn(student, prompts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        sync()
        if repeat:  # the first update warms up
            times.append(time.perf_counter() - start)
            tokens += n_tokens
    median = statistics.median(times)
    student_pass = _forward_flops(student, source, target)
    # teacher pass; student: rollout (encoder once, decoder per token with the KV cache), forward,
    # backward (twice the forward): four passes
    flops = batch * (_forward_flops(teacher, source, target) + 4 * student_pass)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    return {
        "updates_per_s": 1 / median,
        "update_s_min": min(times),
        "update_s_median": median,
        "update_s_max": max(times),
        "tokens_per_s": tokens / sum(times),
        "peak_memory_gib": peak,
        "achieved_tflops": flops / median / 1e12,
        "matmul_peak_tflops": matmul_peak(device, dtype, matmul_n) / 1e12,
    }


def run_gpu_bench(args) -> int:
    import torch

    from ketchup.config import ConfigError
    from ketchup.models import resolve_dtype
    from ketchup.plan import write_calibration

    if not torch.cuda.is_available():  # a bad request, not a bug: one line from the CLI
        raise ConfigError("--gpu needs a CUDA device and torch sees none here")
    device = torch.device("cuda")
    result = paper_scale_update(
        device,
        FLAN_T5_XL,
        T5_BASE,
        source=512,
        target=64,
        batch=args.batch_size,
        repeats=args.repeats,
    )
    name = torch.cuda.get_device_name(device)
    dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
    print(
        f"{name}: KETCHUP (K=4) update, teacher flan-t5-xl / student t5-base architectures "
        f"(random weights, {dtype}), batch {args.batch_size}, 512-token sources, "
        f"64-token rollouts, {args.repeats} repeats"
    )
    for key, value in result.items():
        print(f"  {key:20s} {value:.3f}")
    share = result["achieved_tflops"] / result["matmul_peak_tflops"]
    print(f"  model FLOP/s are {100 * share:.1f}% of the measured matmul peak")
    calibration = write_calibration(
        Path(args.out).with_name("gpu_calibration.json"),
        result["achieved_tflops"] * 1e12,
        device=name,
        dtype=dtype,
        workload=f"KETCHUP K=4 update, flan-t5-xl / t5-base, batch {args.batch_size}, 512-token "
        "sources, 64-token rollouts, FLOPs counted as ketchup plan counts them",
        matmul_peak_flops_per_s=result["matmul_peak_tflops"] * 1e12,
    )
    print(f"written: {calibration} (for `ketchup plan --calibration {calibration}`)")
    return 0


def bench_main(args) -> int:
    if args.study:
        return study_summary(Path(args.study))
    if args.gpu:
        return run_gpu_bench(args)
    return run_update_bench(args)
