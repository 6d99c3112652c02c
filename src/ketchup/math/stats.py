"""Seeded resampling statistics over examples: percentile-bootstrap 95% confidence intervals and a
paired permutation test. Pure numpy: no files, no models.

A statistic is any function of a set of example rows (a corpus BLEU recomputed from per-example
sufficient statistics, a mean, a win rate), so the same resamples serve every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_BOOTSTRAP = 2000
N_PERMUTATIONS = 2000
SEED = 0
LEVEL = 0.95
METHOD = f"percentile bootstrap over examples, {N_BOOTSTRAP} resamples, seed {SEED}"
TEST_METHOD = (
    f"paired permutation test over examples (outputs swapped per example), {N_PERMUTATIONS} "
    f"permutations, seed {SEED}, two-sided"
)

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


# A statistic of example rows: given row indices (with repeats), one number.
Statistic = Callable[[np.ndarray], float]


def bootstrap_ci(
    statistic: Statistic,
    n: int,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """(value on all n examples, low, high) of `statistic` under resampling of the examples."""
    if n == 0:
        return NAN, NAN, NAN
    value = statistic(np.arange(n))
    stats = np.array([statistic(idx) for idx in _resamples(n, n_boot, seed)])
    return (float(value), *_interval(stats, level))


# A statistic of two systems' example rows: given a per-example swap mask, one number.
PairedStatistic = Callable[[np.ndarray], float]


def permutation_test(
    difference: PairedStatistic, n: int, *, n_perm: int = N_PERMUTATIONS, seed: int = SEED
) -> tuple[float, float]:
    """(observed difference, two-sided p-value) of a paired permutation test.

    `difference(swap)` is the statistic of system A minus that of system B after the two systems'
    outputs are exchanged on the examples where `swap` is True. Under the null hypothesis (the
    systems are exchangeable on each example) every swap is equally likely; the p-value is the
    share of random swaps whose |difference| reaches the observed one, counting the observed
    labelling itself (so it is never 0).
    """
    if n == 0:
        return NAN, NAN
    observed = difference(np.zeros(n, dtype=bool))
    swaps = np.random.default_rng(seed).random((n_perm, n)) < 0.5
    tol = 1e-9 * max(1.0, abs(observed))
    extreme = sum(abs(difference(swap)) >= abs(observed) - tol for swap in swaps)
    return float(observed), float((1 + extreme) / (1 + n_perm))
