"""Gradient moments against torch's own covariance and hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from ketchup.math.variance import GradientMoments


def test_variance_is_the_trace_of_the_sample_covariance():
    torch.manual_seed(0)
    grads = {k: torch.randn(16, 7, dtype=torch.float64) * k for k in (1, 2, 4)}
    moments = GradientMoments()
    for m in range(16):
        for k, g in grads.items():
            moments.add(k, g[m])
    for row in moments.table():
        g = grads[row["k"]]
        assert row["variance"] == pytest.approx(float(torch.cov(g.T).trace()), rel=1e-10)
        mean = g.mean(0)
        assert row["mean_grad_sq_norm"] == pytest.approx(float(mean.dot(mean)))
        assert row["bias_norm"] == pytest.approx(float((mean - grads[1].mean(0)).norm()))
        cosine = float(torch.nn.functional.cosine_similarity(mean, grads[1].mean(0), dim=0))
        assert row["cosine_to_reference"] == pytest.approx(cosine)


def test_hand_case():
    moments = GradientMoments()
    for g in ([1.0, 0.0], [3.0, 2.0]):  # mean (2, 1); variances 2 and 2
        moments.add(1, torch.tensor(g))
    (row,) = moments.table()
    assert row["variance"] == pytest.approx(4.0)
    assert row["mean_grad_sq_norm"] == pytest.approx(5.0)
    assert row["relative_variance"] == pytest.approx(0.8)
    assert row["bias_norm"] == 0.0 and row["cosine_to_reference"] == pytest.approx(1.0)


def test_identical_estimates_have_zero_variance_and_one_sample_has_none():
    moments = GradientMoments()
    for _ in range(3):
        moments.add(1, torch.ones(4))
    moments.add(2, torch.ones(4))
    rows = {row["k"]: row for row in moments.table()}
    assert rows[1]["variance"] == 0.0
    assert math.isnan(rows[2]["variance"])


def test_errors_name_the_argument():
    moments = GradientMoments()
    moments.add(1, torch.ones(3))
    with pytest.raises(ValueError, match="grad"):
        moments.add(1, torch.ones(4))
    with pytest.raises(ValueError, match="reference"):
        moments.table(reference=2)
