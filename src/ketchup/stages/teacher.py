"""Stages `train-teacher` (mode: finetune) and `teacher-outputs` (greedy outputs per split)."""

from __future__ import annotations

from pathlib import Path

from ketchup.config import ConfigError, TaskConfig, TeacherConfig, parse_section, to_dict
from ketchup.files import read_jsonl, write_jsonl, write_resolved_config


def _task(args) -> TaskConfig:
    return parse_section(TaskConfig, args.task_json, "task", "task")


def train_teacher(args) -> int:
    """Fine-tune the teacher on the task's references; keep the best by validation metric."""
    import torch

    from ketchup.batching import encode_pairs
    from ketchup.generation import generate
    from ketchup.metrics import validation_score
    from ketchup.models import build_model, count_parameters, is_seq2seq, load_model, load_tokenizer
    from ketchup.tasks import format_prompt, task_metric, task_prompt
    from ketchup.training import fit

    task = _task(args)
    cfg = parse_section(TeacherConfig, args.config_json, "teacher", "teacher")
    if cfg.mode != "finetune":
        raise ConfigError("config key 'teacher.mode': 'prompted' has nothing to train")
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_rows = read_jsonl(data_dir / "validation.jsonl")
    template, metric = task_prompt(task), task_metric(task)

    tokenizer = load_tokenizer(args.tokenizer)
    if cfg.model.from_scratch:
        model = build_model(cfg.model, tokenizer, where="teacher.model")
    else:
        model = load_model(cfg.model.name_or_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    seq2seq = is_seq2seq(model)
    print(f"train-teacher: {count_parameters(model):,} parameters on {device}, metric {metric}")

    def loss_fn(model, rows):
        batch = encode_pairs(
            tokenizer,
            [format_prompt(template, row["source"]) for row in rows],
            [row["target"] for row in rows],
            cfg.train.max_source_length,
            cfg.train.max_target_length,
            seq2seq,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        return model(**batch).loss, int((batch["labels"] != -100).sum())

    val_prompts = [format_prompt(template, row["source"]) for row in val_rows]

    def evaluate(model) -> float:
        outputs = generate(
            model,
            tokenizer,
            val_prompts,
            cfg.generation,
            max_source_length=cfg.train.max_source_length,
        )
        return validation_score(metric, outputs, val_rows)

    state = fit(
        model,
        tokenizer,
        train_rows=train_rows,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=cfg.train,
        out_dir=out_dir,
        fingerprint={"teacher": to_dict(cfg), "task": to_dict(task)},
    )
    write_resolved_config(
        out_dir / "model",
        "train-teacher",
        cfg,
        task=to_dict(task),
        tokenizer=args.tokenizer,
        best_step=state.best_step,
        best_validation_score=state.best_score,
        metric=metric,
    )
    print(
        f"train-teacher: best validation {metric} {state.best_score:.2f} at step {state.best_step}"
    )
    return 0


def teacher_outputs(args) -> int:
    """Greedy teacher outputs for one split, batched, in the split's order."""
    import torch

    from ketchup.generation import generate
    from ketchup.models import load_model, load_tokenizer, resolve_dtype
    from ketchup.tasks import format_prompt, task_prompt

    task = _task(args)
    cfg = parse_section(TeacherConfig, args.config_json, "teacher", "teacher")
    rows = read_jsonl(Path(args.data_dir) / f"{args.split}.jsonl")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(
        args.teacher, dtype=resolve_dtype(cfg.model.precision, device), device=device
    )
    tokenizer = load_tokenizer(args.teacher)
    template = task_prompt(task)
    outputs = generate(
        model,
        tokenizer,
        [format_prompt(template, row["source"]) for row in rows],
        cfg.generation,
        max_source_length=cfg.train.max_source_length,
        progress=True,
    )
    out = Path(args.out)
    write_jsonl(out, ({"id": row["id"], "output": o} for row, o in zip(rows, outputs, strict=True)))
    write_resolved_config(out.parent, f"teacher-outputs-{args.split}", cfg, teacher=args.teacher)
    print(f"teacher-outputs: {len(outputs)} outputs for {args.split}")
    return 0
