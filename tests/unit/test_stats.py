"""Bootstrap intervals, the paired permutation test over examples, the hierarchical bootstrap over
seeds and examples and the sign-flip test over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from ketchup.math.stats import (
    N_PERMUTATIONS,
    bootstrap_ci,
    hierarchical_bootstrap_ci,
    permutation_test,
    sign_flip_test,
)


def test_bootstrap_interval_of_a_mean_brackets_it_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        x = rng.normal(10.0, 2.0, size=n)
        value, lo, hi = bootstrap_ci(lambda idx, x=x: float(x[idx].mean()), n)
        assert value == pytest.approx(x.mean()) and lo < value < hi
        # the textbook interval: mean +- 1.96 sd / sqrt(n), within 25%
        assert hi - lo == pytest.approx(2 * 1.96 * x.std() / np.sqrt(n), rel=0.25)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3
    assert all(np.isnan(v) for v in bootstrap_ci(lambda idx: 0.0, 0))


def _difference(a: np.ndarray, b: np.ndarray):
    def difference(swap: np.ndarray) -> float:
        return float(np.where(swap, b, a).mean() - np.where(swap, a, b).mean())

    return difference


def test_permutation_test_tells_a_real_difference_from_none():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=300)
    observed, p = permutation_test(_difference(a + 0.5, a), 300)
    assert observed == pytest.approx(0.5) and p == pytest.approx(1 / (N_PERMUTATIONS + 1))
    # identical systems: every swap gives the observed 0, p = 1
    assert permutation_test(_difference(a, a), 300)[1] == 1.0
    # two draws of the same distribution: p is not small (under H0 p is uniform; this seed ~0.5)
    b = rng.normal(0.0, 1.0, size=300)
    p_null = permutation_test(_difference(a, b), 300)[1]
    assert 0.05 < p_null <= 1.0
    # symmetric in the two systems
    assert permutation_test(_difference(b, a), 300)[1] == pytest.approx(p_null)


def test_permutation_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(2)
    ps = []
    for _ in range(40):
        a, b = rng.normal(size=(2, 60))
        ps.append(permutation_test(_difference(a, b), 60, n_perm=200)[1])
    # about 5% of null p-values fall under 0.05; 40 draws: allow up to 6
    assert sum(p < 0.05 for p in ps) <= 6
    assert 0.3 < float(np.mean(ps)) < 0.7


def _seed_means(x: np.ndarray):
    """statistic: mean over the drawn seeds of each seed's mean over its drawn examples."""

    def statistic(seeds: np.ndarray, examples: np.ndarray) -> float:
        return float(np.mean([x[s][e].mean() for s, e in zip(seeds, examples, strict=True)]))

    return statistic


def test_hierarchical_interval_covers_the_seed_spread_the_example_one_misses():
    """Three seeds whose offsets differ by far more than the example noise: the example-level
    interval of the seed mean is narrow, the hierarchical one is as wide as the seeds say."""
    rng = np.random.default_rng(3)
    offsets = np.array([-2.0, 0.5, 3.0])
    x = offsets[:, None] + rng.normal(0.0, 1.0, size=(3, 400))
    value, lo, hi = hierarchical_bootstrap_ci(_seed_means(x), 3, 400)
    assert value == pytest.approx(x.mean())
    _, elo, ehi = bootstrap_ci(lambda idx: float(x[:, idx].mean()), 400)
    assert ehi - elo < 0.4 and hi - lo > 3.0
    assert lo <= offsets.min() + 0.5 and hi >= offsets.max() - 0.5
    # one seed: the hierarchical bootstrap is the bootstrap over examples
    one = hierarchical_bootstrap_ci(_seed_means(x[:1]), 1, 400)
    assert one[2] - one[1] == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.25)


def test_hierarchical_interval_has_its_coverage():
    """Seeds drawn from N(0, 1) plus small example noise: the 95% interval of the mean over 8
    seeds contains the true mean 0 in most of 40 repetitions (a bootstrap over 8 seeds
    undercovers a little; at least 30 of 40)."""
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(40):
        x = rng.normal(0.0, 1.0, size=(8, 1)) + rng.normal(0.0, 0.1, size=(8, 50))
        _, lo, hi = hierarchical_bootstrap_ci(_seed_means(x), 8, 50, n_boot=300)
        hits += lo <= 0.0 <= hi
    assert hits >= 30


def test_sign_flip_test_enumerates_every_pattern():
    mean, p = sign_flip_test([-0.5, 5.0, 1.6])  # the README's three seeds
    assert mean == pytest.approx(6.1 / 3)
    # the sums +-0.5 +-5.0 +-1.6 reaching |6.1|: 7.1, 6.1 and their mirrors, 4 of 8 patterns
    assert p == pytest.approx(4 / 8)
    assert sign_flip_test([1.0, 2.0, 3.0])[1] == pytest.approx(2 / 8)  # the floor with 3 seeds
    assert sign_flip_test([1.0] * 6)[1] == pytest.approx(2 / 64)
    assert sign_flip_test([0.0, 0.0])[1] == 1.0
    assert all(np.isnan(v) for v in sign_flip_test([]))
