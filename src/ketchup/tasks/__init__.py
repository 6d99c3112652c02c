"""Tasks: the embedded restaurant task and the paper's datasets, in one example format.

`load_task(name, task)` returns {"train": [...], "validation": [...], "test": [...]}, each example

    {"id": str, "source": str, "target": str, "references": [target, ...], "meta": {...}}

`references` is never empty and starts with `target`; `meta` is JSON-serialisable (the record of
an embedded example, {"answer": gold number} for gsm8k). `task_prompt` and `task_metric` give the
config's prompt / metric or the dataset's defaults, and `format_prompt` fills a template.

Importing this package is cheap: `datasets` and the generators load only when a task is loaded.
"""

from __future__ import annotations

from ketchup.tasks.registry import (
    DATASETS,
    DatasetSpec,
    TaskDataError,
    dataset_spec,
    extract_answer,
    format_prompt,
    load_task,
    resolved_task,
    task_kind,
    task_metric,
    task_prompt,
    task_selection_metric,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "TaskDataError",
    "dataset_spec",
    "extract_answer",
    "format_prompt",
    "load_task",
    "resolved_task",
    "task_kind",
    "task_metric",
    "task_prompt",
    "task_selection_metric",
]
