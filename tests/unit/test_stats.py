"""Bootstrap intervals and the paired permutation test over examples."""

from __future__ import annotations

import numpy as np
import pytest

from ketchup.math.stats import N_PERMUTATIONS, bootstrap_ci, permutation_test


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
