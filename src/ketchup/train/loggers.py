"""Optional mirrors of the training log: TensorBoard and Weights & Biases.

`<out>/log.jsonl` is always the record (the figures read it). Set KETCHUP_LOGGERS to a comma list
to mirror every row there too, for watching a run live:
- `tensorboard`: event files under `<out>/tensorboard/` (needs `pip install tensorboard`);
- `wandb`: a run in project $WANDB_PROJECT (default "ketchup") named after the output directory
  (needs `pip install wandb` and a login, or WANDB_MODE=offline).
Scalars are named `<kind>/<field>` (train/loss, eval/score, ...) at the row's update step. After a
resume, the redone updates are logged again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

from ketchup.config import ConfigError

Mirror = Callable[[dict[str, Any]], None]
ENV = "KETCHUP_LOGGERS"


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    kind = row.get("kind", "log")
    return {
        f"{kind}/{key}": float(value)
        for key, value in row.items()
        if key not in ("kind", "step") and isinstance(value, Real) and not isinstance(value, bool)
    }


def _tensorboard(out_dir: Path, config: dict[str, Any]) -> Mirror:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"{ENV} asks for tensorboard, which is not installed: pip install tensorboard"
        ) from None
    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(row: dict[str, Any]) -> None:
        for name, value in _scalars(row).items():
            writer.add_scalar(name, value, row["step"])
        writer.flush()

    return log


def _wandb(out_dir: Path, config: dict[str, Any]) -> Mirror:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            f"{ENV} asks for wandb, which is not installed: pip install wandb"
        ) from None
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "ketchup"),
        name=str(out_dir),
        dir=str(out_dir),
        config=config,
    )

    def log(row: dict[str, Any]) -> None:
        run.log(_scalars(row), step=row["step"])

    return log


_MIRRORS = {"tensorboard": _tensorboard, "wandb": _wandb}


def mirrors(out_dir: Path, config: dict[str, Any]) -> list[Mirror]:
    """The mirrors KETCHUP_LOGGERS asks for (none when unset), each ready to take log rows."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in _MIRRORS]
    if unknown:
        raise ConfigError(
            f"{ENV}: unknown logger {unknown[0]!r}; known: {', '.join(sorted(_MIRRORS))}"
        )
    return [_MIRRORS[name](Path(out_dir), config) for name in names]
