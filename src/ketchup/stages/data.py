"""Stages `prepare-data` and `train-tokenizer`."""

from __future__ import annotations

from pathlib import Path

from ketchup.config import SPLITS, TaskConfig, TokenizerConfig, parse_section
from ketchup.files import atomic_path, read_jsonl, write_jsonl, write_resolved_config


def prepare_data(args) -> int:
    """Load (or generate) a task and write one JSONL file per split."""
    from ketchup.data.registry import load_task, resolved_task

    task = parse_section(TaskConfig, args.config_json, "task", f"tasks.{args.task}")
    splits = load_task(args.task, task)
    out_dir = Path(args.out_dir)
    counts = {split: write_jsonl(out_dir / f"{split}.jsonl", splits[split]) for split in SPLITS}
    write_resolved_config(
        out_dir, "prepare-data", resolved_task(task), task_name=args.task, counts=counts
    )
    print(f"prepare-data: task {args.task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def train_tokenizer_stage(args) -> int:
    """Train the BPE tokenizer of from-scratch models on the training sources and targets."""
    from ketchup.data.tokenizer import train_tokenizer

    cfg = parse_section(TokenizerConfig, args.config_json, "tokenizer", "tokenizer")
    train = read_jsonl(Path(args.data_dir) / "train.jsonl")
    texts = [text for row in train for text in (row["source"], row["target"])]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    with atomic_path(args.out_dir, directory=True) as tmp:
        tokenizer.save_pretrained(tmp)
        write_resolved_config(tmp, "train-tokenizer", cfg, data_dir=str(args.data_dir))
    print(f"train-tokenizer: {len(tokenizer)} tokens from {len(train)} training examples")
    return 0
