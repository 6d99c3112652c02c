"""The Hugging Face Hub: pinned references (`id@revision`) and one-line errors when it fails.

A model is passed between the workflow's jobs as one string, its `name_or_path`; a hub model
pinned with `revision:` travels as `id@revision` (the notation of huggingface_hub's `hf://`
paths), which :func:`split_reference` takes apart again. Hub ids cannot contain "@".

A hub load that fails (most often: no network, or HF_HUB_OFFLINE=1 and nothing cached) ends the
job with one line naming the model or dataset and the way around it (a local copy), not the
library's traceback.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# what the hub libraries raise when they cannot reach the hub, by name (their modules differ
# between versions)
_UNREACHABLE = (
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectionError",
    "ConnectTimeout",
    "ConnectError",
    "couldn't connect",
    "Couldn't reach",
    "Name or service not known",
)


class HubError(RuntimeError):
    """A model or dataset that could not be loaded from the hub; the message says how else."""


def reference(name: str, revision: str | None) -> str:
    """`name`, or `name@revision` when a revision is pinned."""
    return f"{name}@{revision}" if revision else name


def split_reference(text: str) -> tuple[str, str | None]:
    """'org/model@v1.0' -> ('org/model', 'v1.0'); 'org/model' -> ('org/model', None)."""
    name, sep, revision = text.partition("@")
    return (name, revision) if sep and name and revision else (text, None)


def offline_setting() -> str | None:
    """The variable that switches the hub off here (HF_HUB_OFFLINE=1, ...), or None."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return variable
    return None


def is_hub_failure(err: BaseException) -> bool:
    """Whether a failed `from_pretrained` / `load_dataset` failed at the hub (network, missing
    repository or file, offline mode), not in the model's own code."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or module in ("huggingface_hub", "requests", "httpx")


def _chain(err: BaseException) -> str:
    """Every exception's type and message down the cause chain, for recognising the kind."""
    parts = []
    while err is not None and len(parts) < 10:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return " | ".join(parts)


def why(err: BaseException) -> str:
    """A short reason: offline, unreachable, or the error's first line."""
    variable = offline_setting()
    if variable:
        return f"the hub is switched off here ({variable}=1) and it is not in the local cache"
    if any(marker in _chain(err) for marker in _UNREACHABLE):
        return "the hub cannot be reached (no network?) and it is not in the local cache"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first[:200]}"


def model_error(what: str, name: str, revision: str | None, err: BaseException) -> HubError:
    """One line: which model could not be loaded, why, and how to use a local copy instead."""
    pinned = f" at revision {revision}" if revision else ""
    return HubError(
        f"{what} {name!r}{pinned}: not a local directory, and loading it from the Hugging Face "
        f"Hub failed: {why(err)}. Download it where the hub is reachable (hf download {name}"
        f"{f' --revision {revision}' if revision else ''} --local-dir DIR), then set its "
        "name_or_path to DIR"
    )


def dataset_error(
    task_name: str, hub_id: str, config: str | None, split: str, err: BaseException
) -> HubError:
    """One line: which dataset split could not be loaded, why, and the `files:` way around."""
    return HubError(
        f"dataset {hub_id} ({config or 'default'}) split {split} of task {task_name!r}: loading "
        f"it from the Hugging Face Hub failed: {why(err)}. Save its splits as JSONL / CSV / "
        "Parquet files where the hub is reachable and set "
        f"tasks.{task_name}.files (train, validation, test)"
    )
