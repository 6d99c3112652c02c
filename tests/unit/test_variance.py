"""ketchup.math.variance against direct computations on gradients drawn from known
distributions: the trace of the sample covariance, the debiased signal and cosine (unbiased where
the plain ones are not), the bootstrap intervals, the update as the trainer's norm clip applies
it, and the count sketch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ketchup.math.variance import GradientSets, clip_factors, clipped_gram, gradient_statistics


def _sets(grads: dict[str, torch.Tensor], sketch_dim=None) -> GradientSets:
    """GradientSets filled from name -> (M, P) gradients."""
    names = list(grads)
    m, p = grads[names[0]].shape
    sets = GradientSets(names, m, p, sketch_dim)
    for name, g in grads.items():
        for i in range(m):
            sets.add(name, i, g[i])
    return sets


def _draw(mu: torch.Tensor, scale: float, m: int, g: torch.Generator) -> torch.Tensor:
    return mu + scale * torch.randn(m, mu.numel(), generator=g, dtype=torch.float64)


def test_statistics_match_direct_computations() -> None:
    g = torch.Generator().manual_seed(0)
    a = _draw(torch.ones(5), 0.5, 12, g)
    b = _draw(torch.tensor([1.0, -1, 0, 2, 0]), 2.0, 12, g)
    rows = gradient_statistics(_sets({"a": a, "b": b}).gram(), ["a", "b"], "a", n_boot=200)
    for row, x in zip(rows, (a, b), strict=True):
        xd = x.double()
        trace = float(xd.var(dim=0, unbiased=True).sum())
        gbar = xd.mean(0)
        assert row["variance"] == pytest.approx(trace, rel=1e-5)
        assert row["raw_mean_grad_sq_norm"] == pytest.approx(float(gbar @ gbar), rel=1e-5)
        debiased = float(gbar @ gbar) - trace / 12
        assert row["mean_grad_sq_norm"] == pytest.approx(debiased, rel=1e-4, abs=1e-6)
        assert row["inverse_snr"] == pytest.approx(trace / debiased, rel=1e-4)
        assert row["variance_low"] <= row["variance"] <= row["variance_high"]
    # the cosine leaves out the same-set products, as the signal does
    ab = float(a.mean(0) @ b.mean(0)) - float(((a - a.mean(0)) * (b - b.mean(0))).sum()) / 11 / 12
    want = ab / math.sqrt(rows[0]["mean_grad_sq_norm"] * rows[1]["mean_grad_sq_norm"])
    assert rows[1]["cosine_to_reference"] == pytest.approx(want, rel=1e-4)
    assert rows[0]["cosine_to_reference"] == pytest.approx(1.0)


def test_the_debiased_signal_is_unbiased_where_the_plain_one_is_not() -> None:
    """|gbar|^2 overestimates |mu|^2 by tr(Sigma) / M; the U-statistic does not."""
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.3, -0.2, 0.1, 0.0])
    true = float(mu @ mu)  # 0.14; tr(Sigma) = 4, M = 8: bias 0.5, more than the signal
    plain, debiased = [], []
    for _ in range(400):
        x = _draw(mu, 1.0, 8, g)
        gram = (x @ x.T).numpy()[None, :, None, :]
        row = gradient_statistics(gram, ["a"], "a", n_boot=1)[0]
        plain.append(row["raw_mean_grad_sq_norm"])
        debiased.append(row["mean_grad_sq_norm"])
    se = np.std(debiased) / math.sqrt(len(debiased))
    assert abs(np.mean(debiased) - true) < 4 * se
    assert np.mean(plain) - true == pytest.approx(4 / 8, rel=0.15)


def test_shared_rollouts_make_the_plain_cosine_biased_and_the_debiased_one_not() -> None:
    """Two systems whose noise is shared (the same rollouts) but whose means are orthogonal:
    gbar_a . gbar_b is pulled towards the noise's covariance; the U-statistic is not."""
    g = torch.Generator().manual_seed(2)
    cos, plain = [], []
    for _ in range(300):
        noise = torch.randn(10, 3, generator=g, dtype=torch.float64)
        a = torch.tensor([1.0, 0.0, 0.0]) + noise
        b = torch.tensor([0.0, 1.0, 0.0]) + noise
        row = gradient_statistics(_sets({"a": a, "b": b}).gram(), ["a", "b"], "a", n_boot=1)[1]
        cos.append(row["cosine_to_reference"])
        ga, gb = a.mean(0), b.mean(0)
        plain.append(float(ga @ gb / (ga.norm() * gb.norm())))
    assert abs(np.nanmedian(cos)) < 0.15
    assert np.median(plain) > 0.15


def test_unresolved_signal_is_flagged_and_bootstrap_covers() -> None:
    g = torch.Generator().manual_seed(3)
    noise_only = _draw(torch.zeros(6), 1.0, 16, g)
    clear = _draw(torch.full((6,), 2.0), 0.3, 16, g)
    rows = gradient_statistics(
        _sets({"clear": clear, "noise": noise_only}).gram(), ["clear", "noise"], "clear"
    )
    assert rows[0]["resolved"] and not rows[1]["resolved"]
    assert rows[0]["mean_grad_sq_norm_low"] <= 24.0 <= rows[0]["mean_grad_sq_norm_high"]


def test_the_intervals_cover_the_true_signal_and_variance_where_noise_dominates() -> None:
    """Noise much larger than the signal (tr(Sigma) / M = 3 against |mu|^2 = 1): the signal's and
    the variance's 95% intervals cover the true values in most of 200 repeats. A bootstrap that
    counts pairs of draws of one set as independent pairs sits tr(Sigma) / M above the signal
    and would cover it almost never."""
    g = torch.Generator().manual_seed(5)
    mu = torch.zeros(48, dtype=torch.float64)
    mu[0] = 1.0
    covered = {"mean_grad_sq_norm": 0, "variance": 0}
    truth = {"mean_grad_sq_norm": 1.0, "variance": 48.0}
    for i in range(200):
        x = _draw(mu, 1.0, 16, g)
        gram = (x @ x.T).numpy()[None, :, None, :]
        row = gradient_statistics(gram, ["a"], "a", n_boot=400, seed=i)[0]
        for key, value in truth.items():
            covered[key] += row[f"{key}_low"] <= value <= row[f"{key}_high"]
    assert covered["mean_grad_sq_norm"] >= 170, covered
    assert covered["variance"] >= 170, covered


def test_extra_per_set_values_get_means_and_intervals() -> None:
    x = torch.ones(4, 2, dtype=torch.float64)
    returns = np.array([[-30.0, -28.0, -31.0, -29.0]])
    row = gradient_statistics(
        _sets({"a": x + 0.1 * torch.arange(4.0)[:, None]}).gram(),
        ["a"],
        "a",
        extra={"return_mean": returns},
        n_boot=500,
    )[0]
    assert row["return_mean"] == pytest.approx(-29.5)
    assert -31.0 <= row["return_mean_low"] <= -29.5 <= row["return_mean_high"] <= -28.0


def test_the_count_sketch_keeps_dot_products_unbiased() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4000, generator=g)
    exact = _sets({"a": x}).gram()
    errors = []
    for seed in range(20):
        sets = GradientSets(["a"], 2, 4000, sketch_dim=500, seed=seed)
        for i in range(2):
            sets.add("a", i, x[i])
        errors.append(sets.gram()[0, :, 0, :] - exact[0, :, 0, :])
    mean_error = np.mean(errors, axis=0)
    assert np.all(np.abs(mean_error) < 4 * np.std(errors, axis=0) / math.sqrt(20) + 1e-3)
    assert np.max(np.abs(errors)) > 0  # it is a sketch, not the identity


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="n_sets"):
        GradientSets(["a"], 1, 3)
    sets = GradientSets(["a"], 2, 3)
    with pytest.raises(ValueError, match="grad"):
        sets.add("a", 0, torch.zeros(4))
    with pytest.raises(ValueError, match="missing"):
        sets.gram()
    with pytest.raises(ValueError, match="gram"):
        gradient_statistics(np.zeros((1, 2, 1, 3)), ["a"], "a")


def test_the_applied_update_is_the_one_torch_clips() -> None:
    """The Gram matrix of the clipped gradients, from the raw one and the clip factors, equals
    that of the gradients torch.nn.utils.clip_grad_norm_ leaves on a parameter (the trainer's
    clip), on sets where the clip binds and where it does not."""
    g = torch.Generator().manual_seed(3)
    raw = {"a": _draw(torch.ones(6), 1.0, 8, g), "b": _draw(torch.zeros(6), 0.2, 8, g)}
    clipped = {}
    for name, x in raw.items():
        rows = []
        for row in x:
            param = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
            param.grad = row.clone()
            torch.nn.utils.clip_grad_norm_([param], max_norm=1.5)
            rows.append(param.grad)
        clipped[name] = torch.stack(rows)
    norms = np.stack([x.norm(dim=1).numpy() for x in raw.values()])  # (S, M)
    factors = clip_factors(norms, 1.5)
    assert 0 < (factors < 1).sum() < factors.size  # binds on some sets only
    got = clipped_gram(_sets(raw).gram(), factors)
    assert got == pytest.approx(_sets(clipped).gram(), rel=1e-5, abs=1e-9)
