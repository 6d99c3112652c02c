"""Seeded statistics over examples and seeds: percentile-bootstrap 95% confidence intervals over
examples, a seed-aware interval (a t-interval over seeds with the shared test examples' variance
added) with its minimal detectable effect, a paired permutation test over examples and an exact
sign-flip test over seeds. Pure numpy and scipy: no files, no models.

A statistic is any function of a set of example rows (a corpus BLEU recomputed from per-example
sufficient statistics, a mean, a win rate), so the same resamples serve every metric.
"""

from __future__ import annotations

import math
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


# A statistic of several seeds on one set of example rows: given example indices (with repeats),
# the statistic of every seed on those same examples, (n_seeds,).
PerSeedStatistic = Callable[[np.ndarray], np.ndarray]
SEED_AWARE_METHOD = (
    "t-interval over seeds, the per-seed values' variance / n plus the variance of their mean "
    f"under a bootstrap of the test examples shared by every seed ({N_BOOTSTRAP} resamples, seed "
    f"{SEED}), Welch-Satterthwaite degrees of freedom; with one seed the {METHOD}"
)
SEED_TEST_METHOD = "exact sign-flip test over seeds (the per-seed differences), two-sided"
POWER = 0.8
MDE_METHOD = (
    f"minimal detectable effect: the true difference this many seeds detect with probability "
    f"{POWER:g} in a two-sided test at level {1 - LEVEL:g}, (t(1 - a/2) + t({POWER:g})) x the "
    "interval's standard error, its degrees of freedom"
)


def seed_aware_ci(
    per_seed: PerSeedStatistic,
    n_seeds: int,
    n_examples: int,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, float]:
    """A confidence interval of the mean over training seeds of a statistic of one test set that
    every seed is scored on: {value, low, high, se, df, mde}.

    Model: seed s's statistic is d_s = mu + u_s + e_s, with u_s the training seed's effect
    (independent, variance sigma_u^2) and e_s the test examples' sampling error, correlated
    between seeds because all of them are scored on the same examples. The estimate is
    d = mean_s d_s and

        Var(d) = sigma_u^2 / n + Var(mean_s e_s).

    The sample variance s^2 of the d_s over n estimates sigma_u^2 / n plus the seed-specific part
    of the example error; V_ex, the variance of mean_s d_s over bootstrap resamples of the test
    examples, one resample shared by every seed (Koehn 2004's paired bootstrap, applied to all
    seeds at once), estimates Var(mean_s e_s). The standard error

        SE^2 = s^2 / n + V_ex

    counts the seed-specific part of the example error twice, so it errs wide, never narrow. The
    interval is d +- t_{(1+level)/2, df} SE with the Welch-Satterthwaite degrees of freedom
    (Satterthwaite 1946; Welch 1947), V_ex taken as known (thousands of resamples of hundreds of
    examples):

        df = SE^4 / ((s^2 / n)^2 / (n - 1)),

    which is n - 1 where the seeds' spread dominates (the t-interval on the per-seed values: it
    reaches past their observed range, as an interval from three seeds must) and grows without
    bound where the shared examples dominate. Seed spread and shared examples are the two regimes
    a seeded simulation of its coverage checks (tests/unit/test_stats.py).

    With one seed the seeds' spread is unknown: the interval is the percentile bootstrap over
    examples (it covers the choice of test examples only), ``df`` is inf and ``mde`` is NaN (no
    number of test examples tells what one seed can detect).

    ``mde`` is the minimal detectable effect at POWER (two-sided, level 1 - ``level``):
    (t_{(1+level)/2, df} + t_{POWER, df}) SE, the true difference that this many seeds would
    find with probability POWER (Cohen 1988, with the t quantiles of the interval).
    """
    from scipy import stats as scipy_stats

    nan = {k: NAN for k in ("value", "low", "high", "se", "df", "mde")}
    if n_seeds == 0 or n_examples == 0:
        return nan
    values = np.asarray(per_seed(np.arange(n_examples)), dtype=float)
    value = float(values.mean())
    means = np.array([np.mean(per_seed(idx)) for idx in _resamples(n_examples, n_boot, seed)])
    v_examples = float(means.var(ddof=1)) if n_boot > 1 else 0.0
    if n_seeds == 1:
        low, high = _interval(means, level)
        se, df = v_examples**0.5, math.inf
    else:
        v_seeds = float(values.var(ddof=1)) / n_seeds
        se = (v_seeds + v_examples) ** 0.5
        df = (v_seeds + v_examples) ** 2 / (v_seeds**2 / (n_seeds - 1)) if v_seeds > 0 else math.inf
        half = float(scipy_stats.t.ppf((1 + level) / 2, df)) * se
        low, high = value - half, value + half
    mde = float(scipy_stats.t.ppf((1 + level) / 2, df) + scipy_stats.t.ppf(POWER, df)) * se
    if n_seeds == 1:
        mde = NAN
    return {"value": value, "low": low, "high": high, "se": se, "df": df, "mde": mde}


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
