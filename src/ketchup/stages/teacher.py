"""Stages `train-teacher` (mode: finetune) and `teacher-outputs` (greedy outputs per split)."""

from __future__ import annotations

from pathlib import Path

from ketchup.config import ConfigError, TaskConfig, TeacherConfig, parse_section, to_dict
from ketchup.files import read_jsonl, write_resolved_config


def _task(args) -> TaskConfig:
    return parse_section(TaskConfig, args.task_json, "task", "task")


def train_teacher(args) -> int:
    """Fine-tune the teacher on the task's references; keep the best by validation metric."""
    import torch

    from ketchup.data.registry import resolved_task, task_prompt, task_selection_metric
    from ketchup.models.loading import (
        count_parameters,
        init_model,
        is_seq2seq,
        load_tokenizer,
    )
    from ketchup.models.parallel import default_device, processes
    from ketchup.models.precision import MixedPrecision
    from ketchup.train.loop import cross_entropy_loss, fit, generation_evaluator

    task = _task(args)
    cfg = parse_section(TeacherConfig, args.config_json, "teacher", "teacher")
    if cfg.mode != "finetune":
        raise ConfigError("config key 'teacher.mode': 'prompted' has nothing to train")
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_rows = read_jsonl(data_dir / "validation.jsonl")
    template, metric = task_prompt(task), task_selection_metric(task)

    tokenizer = load_tokenizer(args.tokenizer)
    device = default_device()
    torch.manual_seed(cfg.train.seed)  # the initial weights too: a rerun gives the same teacher
    model = init_model(cfg.model, tokenizer, where="teacher.model").to(device)
    print(f"train-teacher: {count_parameters(model):,} parameters on {device}, metric {metric}")
    loss_fn = cross_entropy_loss(
        tokenizer, template, cfg.train, device, is_seq2seq(model), target_key="target"
    )
    evaluate = generation_evaluator(
        tokenizer, val_rows, template, metric, cfg.generation, cfg.train.max_source_length
    )

    state = fit(
        model,
        tokenizer,
        train_rows=train_rows,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=cfg.train,
        out_dir=out_dir,
        fingerprint={"teacher": to_dict(cfg), "task": to_dict(task)},
        precision=cfg.model.precision,
        keep_checkpoints=args.keep_checkpoints,
    )
    if not processes().is_main:
        return 0
    write_resolved_config(
        out_dir / "model",
        "train-teacher",
        cfg,
        task=resolved_task(task),
        tokenizer=args.tokenizer,
        best_step=state.best_step,
        best_validation_score=state.best_score,
        metric=metric,
        precision=MixedPrecision.for_model(model, cfg.model.precision).record(model),
    )
    print(
        f"train-teacher: best validation {metric} {state.best_score:.2f} at step {state.best_step}"
    )
    return 0


def teacher_outputs(args) -> int:
    """Greedy teacher outputs for one split, batched, in the split's order."""
    from ketchup.data.registry import resolved_task
    from ketchup.stages.results import write_split_outputs

    task = _task(args)
    cfg = parse_section(TeacherConfig, args.config_json, "teacher", "teacher")
    rows = read_jsonl(Path(args.data_dir) / f"{args.split}.jsonl")
    out = Path(args.out)
    n, precision = write_split_outputs(
        args.teacher,
        cfg.model.precision,
        rows,
        task,
        cfg.generation,
        cfg.outputs_source_length(),
        out,
    )
    write_resolved_config(
        out.parent,
        f"teacher-outputs-{args.split}",
        cfg,
        teacher=args.teacher,
        precision=precision,
        task=resolved_task(task),
    )
    print(f"teacher-outputs: {n} outputs for {args.split}")
    return 0
