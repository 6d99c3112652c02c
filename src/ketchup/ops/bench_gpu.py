"""`ketchup bench --gpu`: KETCHUP's update (K = 4) at the paper's sizes on one GPU.

Two teacher -> student pairs of the paper, built from their published configs with random weights
(nothing is downloaded): flan-t5-xl -> t5-base and Qwen1.5-4B -> Qwen1.5-0.5B, on 512-token
sources with 64-token rollouts, in the precision the trainer runs with `precision: auto`. For each
pair: the largest batch that fits (doubling until the GPU runs out of memory or an update gets
slow), then the update timed as `ketchup bench` times it (`ketchup.ops.bench`): updates/s, tokens/s,
peak memory, the model FLOP/s against a bfloat16 matmul's FLOP/s measured in the same run, and the
share of each phase. The causal pair also runs `ours gkd` and TRL's DistillationTrainer on the
same models and batch. `--toy` runs the same code on tiny models of the same families (on a CPU
too), which is how it is tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketchup.ops.bench import (
    PHASES,
    PhaseTimer,
    Setup,
    batch_rows,
    cut_to_tokens,
    device_sync,
    embedded_rows_and_tokenizer,
    error_line,
    free_memory,
    ours,
    params_text,
    phase_rows,
    print_phases,
    summary_rows,
    table_cell,
    time_updates,
    trl_update,
)

# The paper's models, from their published configs (random weights: nothing is downloaded). Every
# size-setting hyper-parameter is written out; rope_theta (Qwen) changes no cost and is left at
# transformers' default.
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
QWEN15_4B = {
    "model_type": "qwen2",
    "hidden_size": 2560,
    "intermediate_size": 6912,
    "num_hidden_layers": 40,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
}
QWEN15_05B = dict(
    QWEN15_4B,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    tie_word_embeddings=True,
)
T5_VOCAB = 32128
QWEN_VOCAB = 151936


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair of the paper, as architectures and the vocabulary they share."""

    name: str
    teacher: dict
    student: dict
    vocab: int


@dataclass(frozen=True)
class Scale:
    """The sizes `ketchup bench --gpu` runs at: the pairs, source and rollout lengths, the
    matmul that measures the peak, and where the batch search starts and stops."""

    pairs: dict[str, Pair]
    source: int
    target: int
    matmul_n: int
    first_batch: int
    max_batch: int


PAPER = Scale(
    {
        "t5": Pair("flan-t5-xl -> t5-base", FLAN_T5_XL, T5_BASE, T5_VOCAB),
        "qwen": Pair("Qwen1.5-4B -> Qwen1.5-0.5B", QWEN15_4B, QWEN15_05B, QWEN_VOCAB),
    },
    source=512,
    target=64,
    matmul_n=8192,
    first_batch=8,
    max_batch=4096,
)
_TOY_T5 = {
    "model_type": "t5",
    "d_model": 32,
    "d_ff": 64,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 1,
    "num_decoder_layers": 1,
}
_TOY_QWEN = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
# the same code at toy sizes, to try the mode on a CPU in seconds
TOY = Scale(
    {
        "t5": Pair("toy t5 -> toy t5", dict(_TOY_T5, d_model=48), _TOY_T5, 1200),
        "qwen": Pair("toy qwen2 -> toy qwen2", dict(_TOY_QWEN, hidden_size=48), _TOY_QWEN, 1200),
    },
    source=32,
    target=8,
    matmul_n=256,
    first_batch=2,
    max_batch=4,
)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _elapsed(device, run: Callable[[], Any]) -> float:
    """Seconds `run()` takes on `device`: CUDA events on a GPU (no host-side launch gaps
    counted), the wall clock elsewhere."""
    import torch

    if device.type != "cuda":
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000


def matmul_peak(device, dtype, n: int = 8192, repeats: int = 20) -> float:
    """Achieved FLOP/s of a square `n` x `n` matrix multiply in `dtype`: the reference the
    update's model FLOP/s are compared with."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(repeats):
            torch.matmul(a, b)

    run()  # warm-up
    return 2 * n**3 * repeats / _elapsed(device, run)


def pass_flops(model, source: int, target: int) -> float:
    """Model FLOPs of one teacher-forced pass of one example over a `source`-token prompt and
    `target` tokens, as torch's FLOP counter counts them on a real pass: every matrix product
    with a weight (an encoder-decoder's encoder over the prompt, its decoder over the target with
    cross-attention's keys and values over the prompt; a decoder-only model over both), the LM
    head on the target tokens only. Attention's own two products (scores, weighted values) are
    left out: fused attention kernels are not counted on every device, and they are a few
    percent of the work at these lengths."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ketchup.models.loading import is_seq2seq

    device = next(model.parameters()).device
    ids = torch.full((1, source + target), 3, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if is_seq2seq(model):
            model(input_ids=ids[:, :source], decoder_input_ids=ids[:, source:])
        else:
            model(input_ids=ids, logits_to_keep=target)
    counts = counter.get_flop_counts()["Global"]
    return float(sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm")))


def update_flops(setup: Setup, batch: int) -> float:
    """Model FLOPs of one on-policy update: the teacher's pass, and the student's rollout (the
    prompt once, then one token at a time with the KV cache: one pass's worth), teacher-forced
    forward and backward (twice a forward)."""
    source, target = setup.max_source_length, setup.max_new_tokens
    student = pass_flops(setup.student, source, target)
    return batch * (pass_flops(setup.teacher, source, target) + 4 * student)


def paper_setup(device, pair: Pair, source: int, target: int) -> Setup:
    """`pair` built from its architectures with random weights on `device`, in the precision the
    trainer runs with `precision: auto` (the teacher in bfloat16 on a capable GPU; the student's
    weights in float32 under a bfloat16 autocast), and prompts of `source` tokens."""
    import torch

    from ketchup.config import ModelConfig
    from ketchup.models.loading import build_model, disable_dropout, resolve_dtype

    rows, tokenizer = embedded_rows_and_tokenizer(256)
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(pair.vocab - len(tokenizer))])
    # Several records joined make a text far longer than `source` tokens; each prompt starts at
    # another record (the order rotated) and is cut to `source` tokens once, here.
    texts = [" ".join(r["source"] for r in rows[i:] + rows[:i]) for i in range(len(rows))]
    prompts = [{"source": s} for s in cut_to_tokens(tokenizer, texts, source)]
    dtype = resolve_dtype("auto", device)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = build_model(ModelConfig(None, pair.teacher, "auto"), tokenizer, dtype=dtype)
        student = build_model(ModelConfig(None, pair.student, "auto"), tokenizer, dtype="float32")
    teacher.eval()
    student = disable_dropout(student).train()
    compute = None if dtype == torch.float32 else dtype
    return Setup(tokenizer, student, teacher, prompts, device, target, source, compute)


def largest_batch(
    run: Callable[[int], float], first: int, limit: int, seconds: float
) -> tuple[int, str]:
    """The largest of `first`, 2 `first`, 4 `first`, ... up to `limit` for which `run(batch)`
    (one update, returning its seconds) does not run out of GPU memory. The doubling stops early
    once an update takes `seconds` (the next one would take about twice that). Returns the batch
    and why the search stopped."""
    import torch

    best, batch, why = None, first, f"the search's limit, {limit}"
    while batch <= limit:
        try:
            spent = run(batch)
        except torch.cuda.OutOfMemoryError:
            why = f"out of GPU memory at {batch}"
            spent = None
        if spent is None:
            free_memory()
            break
        best = batch
        if spent >= seconds:
            why = f"an update took {spent:.1f} s (the time limit is {seconds:g} s)"
            break
        batch *= 2
    if best is None:
        raise RuntimeError(f"no batch fits: {why}")
    return best, why


def _one_update(setup: Setup, system: str) -> Callable[[int], float]:
    def run(batch: int) -> float:
        update = ours(setup, system, batch, None)
        sync = device_sync(setup.device)
        sync()
        start = time.perf_counter()
        update(batch_rows(setup.rows, 0, batch))
        sync()
        return time.perf_counter() - start

    return run


def _sizes(model) -> tuple[int, int]:
    """(parameters, the encoder's share: 0 for a decoder-only model), as plan counts them."""
    from ketchup.models.loading import count_parameters, is_seq2seq

    encoder = count_parameters(model.get_encoder()) if is_seq2seq(model) else 0
    return count_parameters(model), encoder


def bench_pair(args, scale: Scale, key: str, device, peak_flops: float):
    """One pair: the batch search, then ours (and, for a causal pair, ours gkd and TRL's
    DistillationTrainer at the same batch) timed; the summary and phase rows."""
    from ketchup.models.loading import is_seq2seq

    pair = scale.pairs[key]
    setup = paper_setup(device, pair, scale.source, scale.target)
    system = "ketchup_k4"
    if args.batch_size:
        batch, why = args.batch_size, "given by --batch-size"
    else:
        limit = args.max_batch or scale.max_batch
        batch, why = largest_batch(
            _one_update(setup, system), scale.first_batch, limit, args.batch_seconds
        )
    free_memory(setup)
    name = f"ours {system}"
    timers = {name: PhaseTimer(device_sync(device))}
    configs = {name: ours(setup, system, batch, timers[name])}
    notes = [f"batch {batch}: {why}"]
    if not is_seq2seq(setup.student) and not args.no_trl:
        configs["ours gkd"] = ours(setup, "gkd", batch, None)
        try:  # TRL's trainer failing here leaves ours measured
            out = Path(args.out).parent / "trl"
            configs["trl distillation"] = trl_update(setup, "distillation", batch, out)
        except Exception as err:
            notes.append(f"trl distillation left out: {error_line(err)}")
    tolerate = {"trl distillation"}
    timings = time_updates(setup, configs, timers, args.repeats, batch, tolerate)
    notes += [f"{config}: {why}" for config, why in timings.failed.items()]
    trl = "trl distillation" if "trl distillation" in configs else None
    rows = summary_rows(timings, {"vs_trl_distillation": lambda name: trl})
    flops = update_flops(setup, batch)
    for row in rows:
        achieved = flops / row["update_s_median"]
        row.update(
            pair=pair.name,
            key=key,
            batch=batch,
            source_tokens=scale.source,
            target_tokens=scale.target,
            teacher_parameters=_sizes(setup.teacher),
            student_parameters=_sizes(setup.student),
            peak_memory_gib=timings.peak_gib.get(row["config"]),
            model_flops_per_update=flops,
            model_tflops=achieved / 1e12,
            matmul_peak_share=100 * achieved / peak_flops,
        )
    phases = [dict(row, pair=pair.name) for row in phase_rows(timings, timers)]
    sizes = (
        f"teacher {params_text(setup.teacher)} / student {params_text(setup.student)} parameters, "
        f"{scale.source}-token sources, {scale.target}-token rollouts"
    )
    del configs, setup
    free_memory()
    return rows, phases, notes, sizes


GPU_COLUMNS = (
    "pair",
    "config",
    "batch",
    "update_s_min",
    "update_s_median",
    "update_s_max",
    "updates_per_s",
    "examples_per_s",
    "tokens_per_s",
    "peak_memory_gib",
    "model_flops_per_update",
    "model_tflops",
    "matmul_peak_share",
    "vs_trl_distillation",
)


def run_gpu_bench(args) -> int:
    import torch

    from ketchup.config import ConfigError
    from ketchup.files import csv_text, write_text
    from ketchup.models.loading import resolve_dtype

    cuda = torch.cuda.is_available()
    if not cuda and not args.toy:  # a bad request, not a bug: one line from the CLI
        raise ConfigError("--gpu needs a CUDA device and torch sees none here")
    scale = TOY if args.toy else PAPER
    keys = args.pairs.split(",")
    unknown = sorted(set(keys) - set(scale.pairs))
    if unknown:
        raise ConfigError(f"--pairs: unknown {', '.join(unknown)}; choose from t5, qwen")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = resolve_dtype("auto", device)
    card = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = matmul_peak(device, dtype, scale.matmul_n)
    autocast = "no autocast" if dtype == torch.float32 else f"{_dtype_name(dtype)} autocast"
    print(
        f"{card}: {_dtype_name(dtype)} matmul peak {peak / 1e12:.1f} TFLOP/s "
        f"({scale.matmul_n} x {scale.matmul_n}, timed with "
        f"{'CUDA events' if cuda else 'the wall clock'}); one update per repeat, "
        f"{args.repeats} repeats after a warm-up; teacher in {_dtype_name(dtype)}, student "
        f"weights in float32 under {autocast}"
    )
    out = Path(args.out).with_name("gpu.csv")
    rows, phases = [], []
    for key in keys:
        pair_rows, pair_phases, notes, sizes = bench_pair(args, scale, key, device, peak)
        rows += pair_rows
        phases += pair_phases
        print(f"\n{scale.pairs[key].name} (random weights; {sizes}); " + "; ".join(notes) + "\n")
        print_gpu_rows(pair_rows)
        print_phases(pair_phases)
        # written after every pair: a run cut short keeps what it measured
        write_text(out, csv_text(rows, GPU_COLUMNS, digits=4))
        phase_columns = ["pair", "system", *PHASES, "other"]
        write_text(out.with_name("gpu_phases.csv"), csv_text(phases, phase_columns, 2))
    print(f"\nwritten: {out} and {out.with_name('gpu_phases.csv')}")
    calibration = write_plan_calibration(out.with_name("gpu_calibration.json"), rows, card, dtype)
    if calibration:
        print(f"written: {calibration} (for `ketchup plan --calibration {calibration}`)")
    return 0


def plan_update_flops(teacher, student, batch: int, source: int, target: int) -> float:
    """One on-policy update's FLOPs as `ketchup plan` counts them (`plan.ModelSize`s): per
    rollout the student's generation pass, the teacher's pass and the student's training pass."""
    return batch * (
        student.forward_flops(source, target)
        + teacher.forward_flops(source, target)
        + student.train_flops(source, target)
    )


def write_plan_calibration(path: Path, rows: list[dict], card: str, dtype) -> Path | None:
    """The file `ketchup plan --calibration` reads: KETCHUP's update on the T5 pair, its FLOPs
    counted as plan counts them (`plan_update_flops`), over its median time."""
    from ketchup.ops.plan import ModelSize, write_calibration

    row = next((r for r in rows if r["config"] == "ours ketchup_k4" and r["key"] == "t5"), None)
    if row is None:
        return None
    teacher, student = (ModelSize(*row[f"{k}_parameters"], "built") for k in ("teacher", "student"))
    source, target = row["source_tokens"], row["target_tokens"]
    flops = plan_update_flops(teacher, student, row["batch"], source, target)
    return write_calibration(
        path,
        flops / row["update_s_median"],
        device=card,
        dtype=_dtype_name(dtype),
        workload=f"KETCHUP K=4 update, {row['pair']}, batch {row['batch']}, {source}-token "
        f"sources, {target}-token rollouts, FLOPs counted as ketchup plan counts them",
    )


def print_gpu_rows(rows: list[dict]) -> None:
    print(
        "| config | batch | update s (min / median / max) | updates/s | examples/s | tokens/s | "
        "peak GiB | model TFLOP/s | % of matmul peak | x TRL Distillation (examples/s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['batch']} | {r['update_s_min']:.3f} / "
            f"{r['update_s_median']:.3f} / {r['update_s_max']:.3f} | {r['updates_per_s']:.3f} | "
            f"{r['examples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{table_cell(r['peak_memory_gib'], '.1f')} | {r['model_tflops']:.1f} | "
            f"{r['matmul_peak_share']:.1f} | {table_cell(r['vs_trl_distillation'], '.2f')} |"
        )
