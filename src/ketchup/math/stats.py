"""Seeded resampling statistics over examples and seeds: percentile-bootstrap 95% confidence
intervals (over examples, or hierarchically over seeds and examples), a paired permutation test
over examples and an exact sign-flip test over seeds. Pure numpy: no files, no models.

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


# A statistic of several seeds' example rows: given the resampled seeds (k,) and, per resampled
# seed, its resampled example indices (k, n), one number.
SeedStatistic = Callable[[np.ndarray, np.ndarray], float]
HIERARCHICAL_METHOD = (
    f"hierarchical bootstrap (seeds resampled, then test examples within each), {N_BOOTSTRAP} "
    f"resamples, seed {SEED}"
)
SEED_TEST_METHOD = "exact sign-flip test over seeds (the per-seed differences), two-sided"


def hierarchical_bootstrap_ci(
    statistic: SeedStatistic,
    n_seeds: int,
    n_examples: int,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """(value, low, high) of `statistic` under a two-level resampling: seeds with replacement,
    then, for each drawn seed, the test examples with replacement (Davison & Hinkley 1997, the
    hierarchical bootstrap), so the interval covers the training seed's randomness as well as the
    choice of test examples. With one seed it is the bootstrap over examples."""
    if n_seeds == 0 or n_examples == 0:
        return NAN, NAN, NAN
    value = statistic(np.arange(n_seeds), np.tile(np.arange(n_examples), (n_seeds, 1)))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        examples = rng.integers(0, n_examples, (n_seeds, n_examples))
        stats.append(statistic(seeds, examples))
    return (float(value), *_interval(np.asarray(stats), level))


def sign_flip_test(differences: Sequence[float]) -> tuple[float, float]:
    """(mean difference, two-sided p-value) of the exact paired sign-flip test over seeds.

    Under the null hypothesis each seed's difference is as likely to have either sign; the
    p-value is the share of the 2^n sign patterns whose |mean| reaches the observed one (the
    observed pattern and its mirror included), so with n seeds it is never below 2 / 2^n
    (0.25 for three seeds).
    """
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n == 0:
        return NAN, NAN
    if n > 20:
        raise ValueError(f"sign_flip_test enumerates 2^n patterns; n = {n} is too many")
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) of +-1
    observed = abs(d.mean())
    tol = 1e-9 * max(1.0, observed)
    extreme = np.abs((signs * d).mean(axis=1)) >= observed - tol
    return float(d.mean()), float(extreme.mean())
