"""Each dataset a task can name, with the metric it is scored by unless the config says otherwise,
and the metrics a task of each metric reports. Plain data, no imports of the package: the config's
validation reads it, and the registry (which reads the config's dataclasses) builds on it.
"""

from __future__ import annotations

__all__ = ["DATASET_METRICS", "REPORTED_METRICS"]

DATASET_METRICS: dict[str, str] = {
    "embedded": "bleu",
    "arithmetic": "accuracy",
    "xsum": "rouge",
    "europarl_en_nl": "bleu",
    "gsm8k": "accuracy",
    "dailydialog": "bleu",
    "dart": "bleu",
    "file": "bleu",  # the user's own files
}

# A task's metric -> the scores it reports (the first selects checkpoints and K by default).
REPORTED_METRICS: dict[str, tuple[str, ...]] = {
    "bleu": ("bleu", "chrf"),
    "rouge": ("rouge1", "rouge2", "rougeL"),
    "accuracy": ("accuracy",),
}


def first_reported(metric: str) -> str:
    """The score a task metric selects by (its first reported one: rouge -> rouge1); a score
    that is no family (chrf, rouge2, ...) stands for itself."""
    return REPORTED_METRICS.get(metric, (metric,))[0]
