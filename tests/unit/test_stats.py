"""Bootstrap intervals, the paired permutation test over examples, the seed-aware interval over
seeds and shared examples (its equation, its coverage and its minimal detectable effect, by seeded
simulation) and the sign-flip test over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from ketchup.math.stats import (
    N_PERMUTATIONS,
    bootstrap_ci,
    permutation_test,
    seed_aware_ci,
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


def _per_seed_means(x: np.ndarray):
    """per_seed: every seed's mean over the same resampled examples, x (seeds, examples)."""
    return lambda idx: x[:, idx].mean(axis=1)


def test_seed_aware_interval_is_its_equation():
    """Against a direct computation: the per-seed values' variance / n plus the variance of their
    mean over resamples of the examples shared by every seed (drawn here in a plain loop), t with
    Welch-Satterthwaite degrees of freedom; three seeds far apart reach past their own range."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(3)
    offsets = np.array([-2.0, 0.5, 3.0])
    x = offsets[:, None] + rng.normal(0.0, 1.0, size=(3, 400))
    got = seed_aware_ci(_per_seed_means(x), 3, 400, n_boot=500, seed=7)

    d = x.mean(axis=1)
    boot = np.random.default_rng(7).integers(0, 400, size=(500, 400))
    v_ex = np.var([np.mean([x[s, row].mean() for s in range(3)]) for row in boot], ddof=1)
    v_seeds = d.var(ddof=1) / 3
    se = np.sqrt(v_seeds + v_ex)
    df = (v_seeds + v_ex) ** 2 / (v_seeds**2 / 2)
    t = scipy_stats.t.ppf(0.975, df)
    assert got["value"] == pytest.approx(d.mean())
    assert got["se"] == pytest.approx(se) and got["df"] == pytest.approx(df)
    assert (got["low"], got["high"]) == pytest.approx((d.mean() - t * se, d.mean() + t * se))
    assert got["mde"] == pytest.approx((t + scipy_stats.t.ppf(0.8, df)) * se)
    # the seeds dominate: nearly the t-interval on the three per-seed values, wider than their range
    assert 2.0 < df < 2.1
    assert got["low"] < d.min() and got["high"] > d.max()
    # one seed: the percentile bootstrap over examples, as bootstrap_ci draws it
    one = seed_aware_ci(_per_seed_means(x[:1]), 1, 400, n_boot=500, seed=7)
    plain = bootstrap_ci(lambda idx: float(x[0, idx].mean()), 400, n_boot=500, seed=7)
    assert (one["value"], one["low"], one["high"]) == pytest.approx(plain)
    assert np.isnan(one["mde"])  # one seed: its spread, and so what it can detect, is unknown
    assert all(np.isnan(v) for v in seed_aware_ci(_per_seed_means(x), 0, 400).values())


def _simulated(rng: np.random.Generator, regime: str, n_seeds: int, effect: float = 0.0):
    """Per-example differences of two systems, (seeds, 200 examples), true mean `effect`.

    - "examples": each test example carries a difference shared by every seed (N(0, 1)), the
      seeds add a little noise of their own per example and no offset: the examples, drawn once
      for all seeds, are the uncertainty;
    - "seeds": every seed is offset by N(0, 0.3^2) (its training run), per-example noise
      independent between seeds: the seed spread is the uncertainty.
    """
    if regime == "examples":
        shared = rng.normal(0.0, 1.0, size=(1, 200))
        return effect + shared + rng.normal(0.0, 0.5, size=(n_seeds, 200))
    offsets = rng.normal(0.0, 0.3, size=(n_seeds, 1))
    return effect + offsets + rng.normal(0.0, 1.0, size=(n_seeds, 200))


@pytest.mark.parametrize("regime", ["examples", "seeds"])
@pytest.mark.parametrize("n_seeds", [3, 5, 10])
def test_seed_aware_interval_covers_what_it_states(regime, n_seeds):
    """Seeded simulation of the coverage of the 95% interval: 600 test sets and training runs
    with a true difference of 0, in each regime; at least 0.93 covered (with 600 replicates, a
    one-sided binomial test at level 0.01 of coverage 0.95). (The hierarchical
    bootstrap this interval replaced, which resampled the examples separately for every seed and
    could not leave the range of the per-seed values, covered 0.76 / 0.68 / 0.51 in the first
    regime and 0.76 / 0.87 / 0.94 in the second at 3 / 5 / 10 seeds, on 200 such replicates.)"""
    rng = np.random.default_rng(100 + n_seeds)
    covered = 0
    for i in range(600):
        x = _simulated(rng, regime, n_seeds)
        interval = seed_aware_ci(_per_seed_means(x), n_seeds, 200, n_boot=200, seed=i)
        covered += interval["low"] <= 0.0 <= interval["high"]
    assert covered / 600 >= 0.93, covered


def test_minimal_detectable_effect_is_detected_at_its_power():
    """Ten seeds in the seed-spread regime: with a true difference equal to the MDE (its mean
    estimate over 100 simulated studies without a difference), the interval excludes 0 in about
    80% of 300 simulated studies (0.70-0.90: the MDE is itself estimated from the seeds)."""
    rng = np.random.default_rng(5)
    mde = np.mean(
        [
            seed_aware_ci(_per_seed_means(_simulated(rng, "seeds", 10)), 10, 200, n_boot=100)["mde"]
            for _ in range(100)
        ]
    )
    detected = 0
    for i in range(300):
        x = _simulated(rng, "seeds", 10, effect=mde)
        interval = seed_aware_ci(_per_seed_means(x), 10, 200, n_boot=100, seed=i)
        detected += interval["low"] > 0.0
    assert 0.70 <= detected / 300 <= 0.90, detected


def test_sign_flip_test_enumerates_every_pattern():
    mean, p = sign_flip_test([-0.5, 5.0, 1.6])  # the README's three seeds
    assert mean == pytest.approx(6.1 / 3)
    # the sums +-0.5 +-5.0 +-1.6 reaching |6.1|: 7.1, 6.1 and their mirrors, 4 of 8 patterns
    assert p == pytest.approx(4 / 8)
    assert sign_flip_test([1.0, 2.0, 3.0])[1] == pytest.approx(2 / 8)  # the floor with 3 seeds
    assert sign_flip_test([1.0] * 6)[1] == pytest.approx(2 / 64)
    assert sign_flip_test([0.0, 0.0])[1] == 1.0
    assert all(np.isnan(v) for v in sign_flip_test([]))
