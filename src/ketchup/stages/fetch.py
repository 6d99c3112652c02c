"""Stage `fetch`: download a hub model or a task's hub dataset into the local hub cache.

The workflow runs it as a local rule, on the machine that submits the jobs, before any job that
reads the model or dataset; those jobs run with the hub offline (HF_HUB_OFFLINE and friends), so
a compute node without a network reads everything from the cache. The cache is Hugging Face's
(HF_HOME, ~/.cache/huggingface by default): on a cluster it must be a directory the compute
nodes see too.

A local model directory, or a task whose data are local files (`files:`), needs nothing: the
record says so and nothing is downloaded. Each job writes one JSON record of what it resolved.
"""

from __future__ import annotations

import os
from pathlib import Path

from ketchup.config import ConfigError, TaskConfig, parse_section
from ketchup.files import write_json

# What a model needs to load: configs, tokenizer files and safetensors weights (a repository
# often holds the same weights in several formats; only one is fetched).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
LEGACY_WEIGHTS = ["*.bin"]  # for a repository without safetensors


def fetch_model(name_or_path: str, revision: str | None) -> dict:
    """Download a hub model's files at `revision` (None: the default branch); a local directory
    is left alone."""
    from ketchup.models.loading import _resolve_source

    source, local, pinned = _resolve_source(name_or_path, "model")
    revision = revision or pinned  # `id@revision` pins one too
    if local:
        return {"model": name_or_path, "source": "local", "path": os.path.abspath(source)}
    from huggingface_hub import snapshot_download

    def download(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
        except Exception as e:  # the hub's errors come in many types; one line names it
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                f"model {source!r} (revision {revision or 'main'}) cannot be fetched from the "
                f"hub: {reason}"
            ) from e

    path = download(MODEL_FILES)
    if not any(path.glob("*.safetensors")):
        path = download(MODEL_FILES + LEGACY_WEIGHTS)
    # the cache keeps each revision as snapshots/<commit>
    return {
        "model": name_or_path,
        "source": "hub",
        "revision": revision,
        "commit": path.name,
        "path": str(path),
    }


def fetch_dataset(task_name: str, task: TaskConfig) -> dict:
    """Load a task's hub dataset once with the network, as prepare-data will load it offline (the
    datasets cache keeps it); a task with local `files` is left alone."""
    from ketchup.data.registry import dataset_spec, load_task

    spec = dataset_spec(task.dataset)
    record = {"task": task_name, "dataset": task.dataset}
    if task.files is not None or spec.hub_id is None:
        files = task.files and sorted({task.files.train, task.files.validation, task.files.test})
        return {**record, "source": "local", "files": files}
    splits = load_task(task_name, task)
    return {
        **record,
        "source": "hub",
        "hub_id": spec.hub_id,
        "hub_config": spec.hub_config,
        "examples": {split: len(rows) for split, rows in splits.items()},
    }


def fetch(args) -> int:
    """`ketchup fetch`: one model (--model) or one task's dataset (--task), then its record."""
    if args.model is not None:
        record = fetch_model(args.model, args.revision)
        what = f"model {args.model}"
    else:
        if args.task_json is None:
            raise ConfigError("fetch: --task needs --task-json (the task's config section)")
        task = parse_section(TaskConfig, args.task_json, "task", f"tasks.{args.task}")
        record = fetch_dataset(args.task, task)
        what = f"dataset of task {args.task}"
    write_json(args.out, record)
    done = "local, nothing to fetch" if record["source"] == "local" else "fetched"
    print(f"fetch: {what}: {done}")
    return 0
