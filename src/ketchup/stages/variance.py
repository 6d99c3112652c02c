"""Stage `grad-variance`: the variance, signal and direction of the gradient each policy-gradient
system would apply, on rollout sets shared by all of them (KETCHUP's Theorem 1, measured).

From the first seed's KL warm start (the point every on-policy run starts from), M rollout sets of
one rollout per source are drawn for the first N validation sources, with the trainer's sampler
(`distill.rollout`), so one set is one training batch. On each set, every system among llmr,
llmr_mean, llmr_minvar and ketchup_k<K> of the study computes the gradient of its training loss
(`ketchup.math.objectives.policy_gradient_objective` with the config's weight, normalisation,
clip, baseline and sequence end, times the finished share as the trainer applies it), and
`ketchup.math.variance` turns the M gradients of each system into the table: variance, the
debiased squared norm of the mean gradient, their ratio (inverse SNR), the cosine to LLMR's mean
gradient, the mean return per token, each with a bootstrap interval over rollout sets. Each
statistic is given twice: for the update as applied (`applied_*`: after the trainer's clip of the
gradient norm at `distill.train.grad_clip`, with `clip_binds`, the share of rollout sets on which
the clip binds) and for the raw gradient before it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ketchup.config import DistillConfig, TaskConfig, parse_section, split_system, to_dict
from ketchup.files import read_jsonl, write_resolved_config, write_text
from ketchup.report.studies import measured_systems

BASELINES = {"llmr": "none", "llmr_mean": "mean", "llmr_minvar": "minvar", "ketchup": "none"}
REFERENCE = "llmr"


def grad_variance(args) -> int:
    """Draw M rollout sets from the student once; per system, record its gradient on each."""
    import numpy as np
    import torch

    from ketchup.config import GenerationConfig
    from ketchup.data.batching import encode_sources, token_logits, token_logits_and_next
    from ketchup.data.registry import format_prompt, resolved_task, task_prompt
    from ketchup.math.objectives import (
        Reinforce,
        bootstraps_at_cut,
        policy_gradient_objective,
    )
    from ketchup.math.policy_gradient import Sampler
    from ketchup.math.variance import (
        GradientSets,
        clip_factors,
        clipped_gram,
        gradient_statistics,
    )
    from ketchup.models.loading import (
        check_same_vocabulary,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from ketchup.models.parallel import default_device
    from ketchup.models.precision import MixedPrecision, own_dtype, precision_record
    from ketchup.train.generation import generate_ids
    from ketchup.train.progress import ProgressBar

    task = parse_section(TaskConfig, args.task_json, "task", "task")
    cfg = parse_section(DistillConfig, args.config_json, "distill", "distill")
    rollout, var = cfg.rollout, cfg.variance
    rows = read_jsonl(Path(args.data_dir) / "validation.jsonl")[: var.sources]
    device = default_device()

    tokenizer = load_tokenizer(args.student)
    check_same_vocabulary(load_tokenizer(args.teacher), tokenizer, args.teacher, args.student)
    # as the trainer runs them: float32 student weights under its autocast, the teacher in its dtype
    student = load_model(args.student, dtype="float32", device=device)
    teacher_dtype = resolve_dtype(args.teacher_precision, device)
    teacher = load_model(args.teacher, dtype=teacher_dtype, device=device)
    mixed = MixedPrecision.for_model(student, args.precision)
    student.eval()  # dropout off, as the on-policy trainer has it
    params = [p for p in student.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    vocab = len(tokenizer)  # some model families pad their logits past the vocabulary

    template = task_prompt(task)
    prompts = [format_prompt(template, row["source"]) for row in rows]
    batch = encode_sources(tokenizer, prompts, rollout.max_source_length, padding_side="left")
    batch = {k: v.to(device) for k, v in batch.items()}
    generation = GenerationConfig(rollout.max_new_tokens, len(prompts), 1)
    sampler = Sampler(rollout.greedy, rollout.top_k, rollout.temperature)
    sampling = {"do_sample": False}
    if not rollout.greedy:
        sampling = {"do_sample": True, "top_k": rollout.top_k or None}
        sampling["temperature"] = rollout.temperature
    settings = Reinforce(**to_dict(cfg.policy_gradient))
    systems = measured_systems(cfg, REFERENCE)
    sets = GradientSets(systems, var.rollout_sets, n_params, var.sketch_dim, seed=var.seed)
    return_mean = np.zeros((len(systems), var.rollout_sets))
    norms = np.zeros((len(systems), var.rollout_sets))  # |g|, exact (before any sketch)
    finished_share = []

    for m in ProgressBar(range(var.rollout_sets), desc="rollout sets"):
        with mixed.autocast():
            sample = generate_ids(
                student,
                tokenizer,
                prompts,
                generation,
                max_source_length=rollout.max_source_length,
                seed=var.seed * 100_003 + m,
                **sampling,
            )
        mask = sample.mask
        if rollout.drop_truncated:
            mask = mask * sample.finished[:, None].long()
        share = float(sample.finished.float().mean())
        finished_share.append(share)
        with torch.no_grad(), own_dtype(teacher):
            if rollout.drop_truncated:
                teacher_logits = token_logits(teacher, batch, sample.tokens, mask)[..., :vocab]
            else:  # kept rows cut by the cap bootstrap from the teacher's V at the cut
                teacher_logits, after = token_logits_and_next(teacher, batch, sample.tokens, mask)
                teacher_logits, after = teacher_logits[..., :vocab], after[..., :vocab]
        with mixed.autocast():
            student_logits = token_logits(student, batch, sample.tokens, mask)[..., :vocab]
        for i, system in enumerate(systems):
            method, k = split_system(system)
            sequence_end = cfg.sequence_end if method == "ketchup" else "equations"
            cut = None
            if bootstraps_at_cut(rollout.drop_truncated, sequence_end):
                cut = (after, sample.finished)
            loss, stats = policy_gradient_objective(
                student_logits,
                teacher_logits,
                sample.tokens,
                mask,
                k=k,
                value=cfg.value,
                baseline=BASELINES[method],
                sampler=sampler,
                sequence_end=sequence_end,
                settings=settings,
                cut=cut,
            )
            if rollout.drop_truncated:  # the trainer's scaling by the finished share
                loss = loss * share
            grads = torch.autograd.grad(
                loss, params, retain_graph=i < len(systems) - 1, allow_unused=True
            )
            flat = [
                torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                for g, p in zip(grads, params, strict=True)
            ]
            gradient = torch.cat(flat)
            norms[i, m] = float(gradient.norm())
            sets.add(system, m, gradient)
            return_mean[i, m] = stats["return_mean"]

    gram = sets.gram()
    factors = clip_factors(norms, cfg.train.grad_clip)
    binds = (factors < 1.0).astype(float)
    applied = gradient_statistics(
        clipped_gram(gram, factors), systems, REFERENCE, extra={"clip_binds": binds}, seed=var.seed
    )
    raw = gradient_statistics(
        gram, systems, REFERENCE, extra={"return_mean": return_mean}, seed=var.seed
    )
    table = []
    for row_applied, row_raw in zip(applied, raw, strict=True):
        method, k = split_system(row_raw["system"])
        row = {"system": row_raw["system"], "k": k, "baseline": BASELINES[method]}
        row |= {"n_rollout_sets": row_raw["n_rollout_sets"], "grad_clip": cfg.train.grad_clip}
        row |= {
            (key if key.startswith("clip_binds") else f"applied_{key}"): value
            for key, value in row_applied.items()
            if key not in ("system", "n_rollout_sets")
        }
        row |= {key: value for key, value in row_raw.items() if key not in row}
        table.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    write_text(args.out, buffer.getvalue())
    write_resolved_config(
        Path(args.out).parent,
        "grad-variance",
        cfg,
        task=resolved_task(task),
        teacher=args.teacher,
        student=args.student,
        parameters=n_params,
        sketch_dim=sets.sketch_dim,
        precision=precision_record(student, args.precision, teacher),
        sources=len(rows),
        finished_share=sum(finished_share) / len(finished_share),
    )
    print(f"the update as applied (gradient norm clipped at {cfg.train.grad_clip:g}); raw in ()")
    for row in table:
        resolved = row["applied_resolved"]
        flag = "" if resolved else "  (mean gradient not resolved: raise rollout_sets)"
        print(
            f"{row['system']:>14}  variance {row['applied_variance']:.4g} "
            f"({row['variance']:.4g})  |mu|^2 {row['applied_mean_grad_sq_norm']:.4g} "
            f"[{row['applied_mean_grad_sq_norm_low']:.3g}, "
            f"{row['applied_mean_grad_sq_norm_high']:.3g}]  inverse SNR "
            f"{row['applied_inverse_snr']:.3g} ({row['inverse_snr']:.3g})  cosine "
            f"{row['applied_cosine_to_reference']:.3f}  clip binds {row['clip_binds']:.0%}  "
            f"return/token {row['return_mean']:.3g}{flag}"
        )
    return 0
