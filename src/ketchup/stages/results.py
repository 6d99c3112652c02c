"""Stages `generate` (a model's test outputs) and `score` (per-example scores, the run's metrics).

`score` writes two files per run (the teacher, or one student system and seed):

    <out>.csv    one row per example: id and every per-example column of the task's metrics
                 (sacreBLEU sufficient statistics, ROUGE F1, answer correctness, slot error
                 rate, words)
    <out>.json   the run (task, student, system, method, k, seed), its metrics on the whole split
                 (recomputed from the CSV), sacreBLEU's signatures and the model's validation score

Tables and figures read only these files, so every number in them traces back to a CSV row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ketchup.config import (
    ConfigError,
    EvaluationConfig,
    TaskConfig,
    parse_section,
    split_system,
)
from ketchup.files import (
    csv_text,
    read_jsonl,
    write_json,
    write_jsonl,
    write_resolved_config,
    write_text,
)
from ketchup.report.results import TEACHER


def _task(args) -> TaskConfig:
    return parse_section(TaskConfig, args.task_json, "task", "task")


def write_split_outputs(
    model_path: str,
    precision: str,
    rows: list[dict[str, Any]],
    task: TaskConfig,
    generation,
    max_source_length: int,
    out: str | Path,
) -> tuple[int, dict[str, str]]:
    """Batched outputs of a model on `rows` (the task's prompt), written as JSONL (id, output)
    in the rows' order; greedy unless `generation.num_beams` > 1. The model is loaded in
    `precision` and computes in it. Returns the count and the precision used (for the resolved
    config)."""
    from ketchup.data.registry import format_prompt, task_prompt
    from ketchup.models.loading import load_model, load_tokenizer, resolve_dtype
    from ketchup.models.parallel import default_device
    from ketchup.models.precision import inference_record
    from ketchup.train.generation import generate

    device = default_device()
    tokenizer = load_tokenizer(model_path)  # first: a directory without one fails at once
    model = load_model(model_path, dtype=resolve_dtype(precision, device), device=device)
    template = task_prompt(task)
    outputs = generate(
        model,
        tokenizer,
        [format_prompt(template, row["source"]) for row in rows],
        generation,
        max_source_length=max_source_length,
        progress=True,
    )
    pairs = zip(rows, outputs, strict=True)
    n = write_jsonl(out, ({"id": row["id"], "output": o} for row, o in pairs))
    return n, inference_record(model)


def generate_outputs(args) -> int:
    """`ketchup generate`: a student's outputs on one split (evaluation.generation)."""
    task = _task(args)
    cfg = parse_section(EvaluationConfig, args.config_json, "evaluation", "evaluation")
    rows = read_jsonl(Path(args.data_dir) / f"{args.split}.jsonl")
    out = Path(args.out)
    n, precision = write_split_outputs(
        args.model, args.precision, rows, task, cfg.generation, cfg.max_source_length, out
    )
    from ketchup.data.registry import resolved_task

    write_resolved_config(
        out.parent,
        f"generate-{args.split}",
        cfg,
        model=args.model,
        task=resolved_task(task),
        precision=precision,
    )
    print(f"generate: {n} outputs for {args.split} from {args.model}")
    return 0


def parse_run(text: str) -> dict[str, Any]:
    """The run a score file belongs to: {"task", "student", "system", "seed"}; the teacher has
    system "teacher" and no student or seed."""
    try:
        run = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--run-json: not valid JSON ({e.msg})") from None
    missing = [key for key in ("task", "student", "system", "seed") if key not in run]
    if missing:
        raise ConfigError(f"--run-json: missing key {missing[0]!r}")
    if run["system"] == TEACHER:
        return {**run, "method": TEACHER, "k": None}
    method, k = split_system(run["system"])
    return {**run, "method": method, "k": k}


def _model_record(model_dir: str | None) -> tuple[Path, dict[str, Any]] | None:
    """The resolved config a training stage wrote beside its model (train-teacher / distill):
    (its path, its contents); None for a model without one (a prompted teacher)."""
    if model_dir is None:
        return None
    for path in sorted(Path(model_dir).glob("*.config.json")):
        data = json.loads(path.read_text())
        if "best_validation_score" in data:
            return path, data
    return None


def validation_record(model_dir: str | None) -> dict[str, Any] | None:
    """The validation score a model was selected with; None without a training record."""
    found = _model_record(model_dir)
    if found is None:
        return None
    path, data = found
    return {
        "score": data["best_validation_score"],
        "step": data.get("best_step"),
        "file": str(path),
    }


def training_record(model_dir: str | None) -> dict[str, Any] | None:
    """What the training log of a model averaged to (distill's `training_summary`), the job
    config it trained with (`config`) and where and with what it ran (`provenance`); None
    without a training record."""
    found = _model_record(model_dir)
    if found is None:
        return None
    _, data = found
    return {key: data.get(key) for key in ("training_summary", "config", "provenance")}


def model_parameters(model_dir: str | None) -> int | None:
    """Parameters stored in a model directory's safetensors files (shared tensors once)."""
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += int(np.prod(f.get_slice(name).get_shape()))
    return total or None


def _outputs_in_order(path: str, examples: list[dict[str, Any]]) -> list[str]:
    """The outputs of `path` in the examples' order; every example must have exactly one."""
    by_id: dict[str, str] = {}
    for row in read_jsonl(path):
        if "id" not in row or "output" not in row:
            raise ConfigError(f"{path}: every line needs 'id' and 'output'")
        by_id[row["id"]] = row["output"]
    missing = [ex["id"] for ex in examples if ex["id"] not in by_id]
    if missing:
        raise ConfigError(
            f"{path}: no output for {len(missing)} of {len(examples)} examples "
            f"(first: {missing[0]!r}); regenerate it"
        )
    return [by_id[ex["id"]] for ex in examples]


def score_outputs(args) -> int:
    """Per-example scores of one run's outputs (CSV) and its metrics on the whole split (JSON)."""
    from ketchup.evaluate.scoring import metric_table, score_examples, signatures, task_metrics

    task = _task(args)
    run = parse_run(args.run_json)
    examples = read_jsonl(Path(args.data_dir) / f"{args.split}.jsonl")
    outputs = _outputs_in_order(args.outputs, examples)
    metrics = task_metrics(task)
    rows = score_examples(metrics, outputs, examples)
    columns = ["id", *dict.fromkeys(c for m in metrics for c in m.columns)]
    out = Path(args.out)
    summary = {
        **run,
        "dataset": task.dataset,
        "split": args.split,
        "n_examples": len(rows),
        "outputs": args.outputs,
        "scores": str(out),
        "metrics": {m.name: m.value(metric_table(m, rows)) for m in metrics},
        "signatures": signatures(metrics),
        "model": args.model,
        "parameters": model_parameters(args.model),
        "validation": validation_record(args.model),
        "training": training_record(args.model),
    }
    write_text(out, csv_text(rows, columns, digits=6))
    write_json(out.with_suffix(".json"), summary)
    shown = ", ".join(f"{m.label} {summary['metrics'][m.name]:.2f}" for m in metrics)
    print(f"score: {run['system']} on {len(rows)} {args.split} examples: {shown}")
    return 0
