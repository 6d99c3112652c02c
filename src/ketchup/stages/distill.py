"""Stage `distill`: train a student from the teacher with one method.

Built so far: the word-level methods that start from the student's initialisation,
- sft: cross-entropy on the references (the no-distillation row);
- seqkd: cross-entropy on the teacher's greedy outputs (Kim & Rush 2016);
- kl: word-level forward KL(p_T || p_S) on the teacher's greedy outputs, one teacher forward per
  batch under no_grad; this student is also the warm start of the RL methods (the paper's protocol).
The RL family (llmr*, ketchup, gkd, minillm) and f-distill's js / tvd come with the distillation
issue; `ketchup.config.BUILT_METHODS` lists what runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ketchup.config import (
    BUILT_METHODS,
    ConfigError,
    DistillConfig,
    GenerationConfig,
    StudentConfig,
    TaskConfig,
    parse_section,
    to_dict,
)
from ketchup.files import read_jsonl, write_resolved_config


def _targets(method: str, train_rows: list[dict], teacher_outputs: str | None) -> list[str]:
    """What the student imitates: references (sft) or the teacher's outputs, in train order."""
    if method == "sft":
        return [row["target"] for row in train_rows]
    if teacher_outputs is None:
        raise ConfigError(f"distill: method {method!r} needs --teacher-outputs")
    by_id = {row["id"]: row["output"] for row in read_jsonl(teacher_outputs)}
    missing = [row["id"] for row in train_rows if row["id"] not in by_id]
    if missing:
        raise ConfigError(
            f"{teacher_outputs}: no teacher output for {len(missing)} ids, e.g. {missing[0]}"
        )
    return [by_id[row["id"]] for row in train_rows]


def distill(args) -> int:
    """Train the student with `args.method`; keep the best checkpoint by validation metric."""
    import torch

    from ketchup.batching import (
        encode_sources,
        encode_target_ids,
        pad_batch,
        pad_token_id,
        token_logits,
    )
    from ketchup.divergences import forward_kl
    from ketchup.models import (
        check_same_vocabulary,
        count_parameters,
        default_device,
        init_model,
        is_seq2seq,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from ketchup.tasks import format_prompt, task_metric, task_prompt
    from ketchup.training import cross_entropy_loss, fit, generation_evaluator

    task = parse_section(TaskConfig, args.task_json, "task", "task")
    student_cfg = parse_section(StudentConfig, args.student_json, "student", "student")
    cfg = parse_section(DistillConfig, args.config_json, "distill", "distill")
    if args.method not in BUILT_METHODS:
        raise ConfigError(
            f"distill: method {args.method!r} is not built yet; built: "
            + ", ".join(sorted(BUILT_METHODS))
        )
    train_cfg = dataclasses.replace(student_cfg.train, seed=args.seed)
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_rows = read_jsonl(data_dir / "validation.jsonl")
    targets = _targets(args.method, train_rows, args.teacher_outputs)
    template, metric = task_prompt(task), task_metric(task)
    device = default_device()

    tokenizer = load_tokenizer(args.tokenizer)
    torch.manual_seed(args.seed)  # the initial weights depend on the seed too
    student = init_model(student_cfg.model, tokenizer, where="student.model").to(device)
    seq2seq = is_seq2seq(student)
    teacher = None
    if args.method == "kl":
        check_same_vocabulary(load_tokenizer(args.teacher), tokenizer, args.teacher, "student")
        teacher = load_model(args.teacher, dtype=resolve_dtype("auto", device), device=device)
        teacher.eval()
    vocab = len(tokenizer)  # some model families pad their logits past the vocabulary
    print(
        f"distill {args.method}: student {count_parameters(student):,} parameters, seed "
        f"{args.seed}, metric {metric}"
    )

    def kl_loss(model, rows):
        """Word-level KL(p_T || p_S) on the teacher's outputs: one no-grad teacher pass."""
        sources = encode_sources(
            tokenizer,
            [format_prompt(template, row["source"]) for row in rows],
            train_cfg.max_source_length,
            padding_side="right",
        )
        ids, mask = pad_batch(
            encode_target_ids(
                tokenizer, [row["imitate"] for row in rows], train_cfg.max_target_length
            ),
            pad_token_id(tokenizer),
            padding_side="right",
        )
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            teacher_logits = token_logits(teacher, sources, ids, mask)[..., :vocab]
        student_logits = token_logits(model, sources, ids, mask)[..., :vocab]
        return forward_kl(student_logits, teacher_logits, mask), int(mask.sum())

    imitation_rows = [dict(row, imitate=t) for row, t in zip(train_rows, targets, strict=True)]
    generation = parse_section(GenerationConfig, args.generation_json, "generation", "generation")
    loss_fn = (
        kl_loss
        if teacher is not None
        else cross_entropy_loss(
            tokenizer, template, train_cfg, device, seq2seq, target_key="imitate"
        )
    )
    evaluate = generation_evaluator(
        tokenizer, val_rows, template, metric, generation, train_cfg.max_source_length
    )

    state = fit(
        student,
        tokenizer,
        train_rows=imitation_rows,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=train_cfg,
        out_dir=out_dir,
        fingerprint={
            "method": args.method,
            "student": to_dict(student_cfg),
            "distill": to_dict(cfg),
            "task": to_dict(task),
            "seed": args.seed,
        },
    )
    write_resolved_config(
        out_dir / "model",
        "distill",
        cfg,
        method=args.method,
        k=args.k,
        seed=args.seed,
        student=to_dict(student_cfg),
        task=to_dict(task),
        teacher=args.teacher,
        best_step=state.best_step,
        best_validation_score=state.best_score,
        metric=metric,
    )
    print(
        f"distill {args.method}: best validation {metric} {state.best_score:.2f} at step "
        f"{state.best_step}"
    )
    return 0
