"""Stage `distill`: train a student from the teacher with one method (one system, e.g. ketchup_k4).

Word-level methods, from the student's initialisation, on fixed sequences (`students.<s>.train`):
- sft: cross-entropy on the references (the no-distillation row);
- seqkd: cross-entropy on the teacher's greedy outputs (Kim & Rush 2016);
- kl: word-level forward KL(p_T || p_S) on the teacher's greedy outputs, one teacher forward per
  batch under no_grad; this student is also the warm start of every method below (the paper).

On-policy methods, from the kl student of the same seed (`distill.train`), dropout off, on
sequences the student samples each update (batched, KV cache), scored by ONE teacher-forced
teacher pass per batch under no_grad:
- llmr (K = 1), llmr_mean, llmr_minvar (mean / minimum-variance baseline), ketchup_k<K>: REINFORCE
  on the teacher-induced K-step returns (`ketchup.math.objectives.policy_gradient_objective`);
- minillm: MiniLLM's clipped policy gradient on the length-normalised reverse-KL reward-to-go of
  teacher-mixed rollouts, plus its single-step reverse KL (`ketchup.math.objectives`);
- gkd: the generalized JSD on student samples or the teacher's outputs (`distill.gkd.lmbda`);
- js, tvd (f-distill): JS / total variation on one student sample and the teacher's output of
  every source, the halves weighted `distill.f_distill.beta` / 1 - beta.
Rollouts that hit the length cap without EOS are dropped from the loss when
`distill.rollout.drop_truncated` (the policy-gradient losses are then scaled by the finished
share, as LLMR's code).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ketchup.config import (
    TEACHER_FREE_METHODS,
    WARM_STARTED_METHODS,
    ConfigError,
    DistillConfig,
    GenerationConfig,
    StudentConfig,
    TaskConfig,
    method_config_keys,
    parse_section,
    split_system,
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


def training_summary(log: list[dict], last: int = 10) -> dict[str, dict[str, float]]:
    """Means of every numeric statistic of the training log: over all updates ("mean") and the
    last `last` ("last"): the mean return per token, the clipped share, the rollout length, ...
    (what the K-grid table reports beside the scores)."""
    train = [row for row in log if row.get("kind") == "train"]
    keys = [
        key
        for key in dict.fromkeys(k for row in train for k in row)
        if key not in ("kind", "step")
        and all(isinstance(row.get(key, 0.0), (int, float)) for row in train)
    ]

    def means(rows):
        out = {}
        for key in keys:
            values = [float(row[key]) for row in rows if key in row]
            if values:
                out[key] = sum(values) / len(values)
        return out

    return {"updates": len(train), "mean": means(train), "last": means(train[-last:])}


def distill(args) -> int:
    """Train the student as `args.method` says; keep the best checkpoint by validation metric."""
    import torch

    from ketchup.data.registry import resolved_task, task_prompt, task_selection_metric
    from ketchup.models.loading import (
        check_same_vocabulary,
        count_parameters,
        disable_dropout,
        init_model,
        is_seq2seq,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from ketchup.models.parallel import default_device, load_teacher, processes
    from ketchup.models.precision import precision_record
    from ketchup.train.loop import cross_entropy_loss, fit, generation_evaluator
    from ketchup.train.losses import Models, kl_loss, onpolicy_loss

    method, k = split_system(args.method)
    task = parse_section(TaskConfig, args.task_json, "task", "task")
    student_cfg = parse_section(StudentConfig, args.student_json, "student", "student")
    cfg = parse_section(DistillConfig, args.config_json, "distill", "distill")
    generation = parse_section(GenerationConfig, args.generation_json, "generation", "generation")
    warm_started = method in WARM_STARTED_METHODS
    if warm_started and not args.warm_start:
        raise ConfigError(f"distill: method {method!r} needs --warm-start (the kl student)")
    train_cfg = dataclasses.replace(
        cfg.train if warm_started else student_cfg.train, seed=args.seed
    )
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_rows = read_jsonl(data_dir / "validation.jsonl")
    if method != "sft":  # every method but sft reads the teacher's outputs or the teacher
        train_rows = [
            dict(row, imitate=t)
            for row, t in zip(
                train_rows, _targets(method, train_rows, args.teacher_outputs), strict=True
            )
        ]
    template, metric = task_prompt(task), task_selection_metric(task)
    device = default_device()

    tokenizer = load_tokenizer(args.tokenizer)
    torch.manual_seed(args.seed)  # the initial weights depend on the seed too
    if warm_started:
        student = disable_dropout(load_model(args.warm_start, dtype="float32", device=device))
    else:
        student = init_model(student_cfg.model, tokenizer, where="student.model").to(device)
    teacher = None
    if method not in TEACHER_FREE_METHODS:
        check_same_vocabulary(load_tokenizer(args.teacher), tokenizer, args.teacher, "student")
        teacher_dtype = resolve_dtype(args.teacher_precision, device)
        teacher = load_teacher(args.teacher, teacher_dtype, cfg.teacher_placement, processes())
    max_source_length = (
        cfg.rollout.max_source_length if warm_started else train_cfg.max_source_length
    )
    models = Models(student, teacher, tokenizer, template, max_source_length)
    print(
        f"distill {args.method}: student {count_parameters(student):,} parameters, seed "
        f"{args.seed}, metric {metric}"
        + (f", warm start {args.warm_start}" if warm_started else "")
    )

    if warm_started:
        loss_fn = onpolicy_loss(models, method, k, cfg)
    elif method == "kl":
        loss_fn = kl_loss(models, train_cfg.max_target_length)
    else:
        loss_fn = cross_entropy_loss(
            tokenizer,
            template,
            train_cfg,
            device,
            is_seq2seq(student),
            target_key="target" if method == "sft" else "imitate",
        )
    evaluate = generation_evaluator(
        tokenizer, val_rows, template, metric, generation, train_cfg.max_source_length
    )
    # what this job's training reads, as run (the seed is the job's)
    job_config = {key: to_dict(getattr(cfg, key)) for key in method_config_keys(method)}
    job_config["train"] = to_dict(train_cfg)
    state = fit(
        student,
        tokenizer,
        train_rows=train_rows,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=train_cfg,
        out_dir=out_dir,
        fingerprint={
            "system": args.method,
            "student": to_dict(student_cfg),
            "config": job_config,
            "task": to_dict(task),
            "warm_start": args.warm_start,
        },
        evaluate_initial=warm_started,
        precision=student_cfg.model.precision,
        keep_checkpoints=args.keep_checkpoints,
        empty_loss_hint=(
            f"raise config key 'distill.rollout.max_new_tokens' (now {cfg.rollout.max_new_tokens})"
            " or set distill.rollout.drop_truncated: false"
            if warm_started
            else None
        ),
    )
    if not processes().is_main:
        return 0
    write_resolved_config(
        out_dir / "model",
        "distill",
        job_config,
        system=args.method,
        method=method,
        k=k,
        seed=args.seed,
        student=to_dict(student_cfg),
        task=resolved_task(task),
        teacher=args.teacher,
        warm_start=args.warm_start,
        best_step=state.best_step,
        best_validation_score=state.best_score,
        metric=metric,
        training_summary=training_summary(read_jsonl(out_dir / "log.jsonl")),
        precision=precision_record(student, student_cfg.model.precision, teacher),
    )
    print(
        f"distill {args.method}: best validation {metric} {state.best_score:.2f} at step "
        f"{state.best_step}"
    )
    return 0
