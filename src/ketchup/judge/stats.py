"""Seeded percentile-bootstrap 95% confidence intervals over examples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOTSTRAP = 2000
SEED = 0
LEVEL = 0.95
METHOD = f"percentile bootstrap over examples, {N_BOOTSTRAP} resamples, seed {SEED}"

NAN = float("nan")


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(lo), float(hi)


def mean_ci(
    values: Sequence[float], *, n_boot: int = N_BOOTSTRAP, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float, float]:
    """(mean, low, high); NaNs for no values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return NAN, NAN, NAN
    means = x[_resamples(x.size, n_boot, seed)].mean(axis=1)
    return (float(x.mean()), *_interval(means, level))


def rate_cis(
    outcomes: Sequence[str],
    labels: Sequence[str] = ("win", "tie", "loss"),
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, tuple[float, float, float]]:
    """label -> (rate, low, high), the same resamples for every label; NaNs for no outcomes."""
    if len(outcomes) == 0:
        return {label: (NAN, NAN, NAN) for label in labels}
    idx = _resamples(len(outcomes), n_boot, seed)
    result = {}
    for label in labels:
        x = np.asarray([o == label for o in outcomes], dtype=float)
        result[label] = (float(x.mean()), *_interval(x[idx].mean(axis=1), level))
    return result
