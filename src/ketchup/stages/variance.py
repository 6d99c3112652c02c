"""Stage `grad-variance`: the K-step estimator's gradient variance and bias on shared rollouts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ketchup.config import DistillConfig, TaskConfig, parse_section
from ketchup.files import read_jsonl, write_resolved_config, write_text


def grad_variance(args) -> int:
    """Draw M rollout sets from the student once; per K, record the policy gradient on each."""
    import torch
    from tqdm.auto import tqdm

    from ketchup.batching import encode_sources, token_logits
    from ketchup.config import GenerationConfig
    from ketchup.generation import generate_ids
    from ketchup.math.policy_gradient import (
        policy_gradient_loss,
    )
    from ketchup.math.returns import (
        kstep_returns_from_values,
        taken_q_and_values,
    )
    from ketchup.math.variance import GradientMoments
    from ketchup.models import (
        check_same_vocabulary,
        default_device,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from ketchup.tasks import format_prompt, resolved_task, task_prompt

    task = parse_section(TaskConfig, args.task_json, "task", "task")
    cfg = parse_section(DistillConfig, args.config_json, "distill", "distill")
    rollout, var = cfg.rollout, cfg.variance
    rows = read_jsonl(Path(args.data_dir) / "validation.jsonl")[: var.sources]
    device = default_device()

    tokenizer = load_tokenizer(args.student)
    check_same_vocabulary(load_tokenizer(args.teacher), tokenizer, args.teacher, args.student)
    student = load_model(args.student, device=device)
    teacher = load_model(args.teacher, dtype=resolve_dtype("auto", device), device=device)
    student.eval()  # dropout off: the variance measured is the rollouts', not dropout's
    params = [p for p in student.parameters() if p.requires_grad]
    vocab = len(tokenizer)  # some model families pad their logits past the vocabulary

    template = task_prompt(task)
    prompts = [format_prompt(template, row["source"]) for row in rows]
    batch = encode_sources(tokenizer, prompts, rollout.max_source_length, padding_side="left")
    batch = {k: v.to(device) for k, v in batch.items()}
    generation = GenerationConfig(rollout.max_new_tokens, len(prompts), 1)
    ks = sorted({1, *cfg.ks})
    moments = GradientMoments()
    finished_share = []

    for m in tqdm(range(var.rollout_sets), desc="rollout sets"):
        sample = generate_ids(
            student,
            tokenizer,
            prompts,
            generation,
            max_source_length=rollout.max_source_length,
            do_sample=True,
            top_k=rollout.top_k or None,
            temperature=rollout.temperature,
            seed=var.seed * 100_003 + m,
        )
        mask = sample.mask
        if rollout.drop_truncated:
            mask = mask * sample.finished[:, None].long()
        finished_share.append(float(sample.finished.float().mean()))
        with torch.no_grad():
            teacher_logits = token_logits(teacher, batch, sample.tokens, mask)[..., :vocab]
            q_taken, values = taken_q_and_values(teacher_logits, sample.tokens, mask, cfg.value)
        student_logits = token_logits(student, batch, sample.tokens, mask)[..., :vocab]
        safe_tokens = torch.where(mask.bool(), sample.tokens, 0)
        logprobs = student_logits.float().log_softmax(-1).gather(-1, safe_tokens[..., None])[..., 0]
        for i, k in enumerate(ks):
            returns = kstep_returns_from_values(q_taken, values, mask, k)
            loss = policy_gradient_loss(logprobs, returns, mask)
            grads = torch.autograd.grad(loss, params, retain_graph=i < len(ks) - 1)
            moments.add(k, torch.cat([g.reshape(-1) for g in grads]))

    table = moments.table(reference=1)
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
        parameters=sum(p.numel() for p in params),
        finished_share=sum(finished_share) / len(finished_share),
    )
    for row in table:
        print(
            f"K={row['k']:>3}  variance {row['variance']:.4g}"
            f"  relative {row['relative_variance']:.3f}  bias {row['bias_norm']:.4g}"
            f"  cosine {row['cosine_to_reference']:.3f}"
        )
    return 0
