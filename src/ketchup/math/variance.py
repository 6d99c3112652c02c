"""Gradient variance and bias of the K-step policy gradient (KETCHUP Theorem 1, measured).

For a fixed student and fixed sources, M rollout sets are drawn once and the policy gradient is
computed for every K on the SAME rollouts, so differences between K are the estimator's, not the
sampling's. Per K this keeps streaming float64 moments of the flattened gradient g_{m,K}:
- variance: trace of the covariance over rollout sets, sum_p Var_m[g_{m,K,p}] (unbiased, M - 1);
- relative variance: that trace over ||mean_m g_{m,K}||^2 (scale-free: K rescales the returns);
- bias against the reference K (K = 1, LLMR's exact reward-to-go): ||mean g_K - mean g_1|| and
  the cosine between the two mean gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GradientMoments:
    """Streaming first and second moments of per-rollout-set gradient vectors, one set per K."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}
        self.total: dict[int, Tensor] = {}
        self.total_sq: dict[int, Tensor] = {}

    def add(self, k: int, grad: Tensor) -> None:
        """Record one gradient estimate (flattened, (P,)) for step size `k`."""
        g = grad.detach().reshape(-1).to(torch.float64)  # float64: sums of many small squares
        if k not in self.count:
            self.count[k] = 0
            self.total[k] = torch.zeros_like(g)
            self.total_sq[k] = torch.zeros_like(g)
        elif g.shape != self.total[k].shape:
            raise ValueError(
                f"grad: {tuple(g.shape)} for k={k}, expected {tuple(self.total[k].shape)}"
            )
        self.count[k] += 1
        self.total[k] += g
        self.total_sq[k] += g * g

    def mean(self, k: int) -> Tensor:
        return self.total[k] / self.count[k]

    def variance(self, k: int) -> float:
        """Trace of the (unbiased) covariance of the gradient over rollout sets."""
        n = self.count[k]
        if n < 2:
            return math.nan
        mean = self.mean(k)
        return float(((self.total_sq[k] - n * mean * mean).sum() / (n - 1)).clamp_min(0))

    def table(self, reference: int = 1) -> list[dict[str, float]]:
        """One row per K (ascending): n, variance, mean norm^2, relative variance, bias, cosine."""
        if reference not in self.count:
            raise ValueError(f"reference: no gradients recorded for k={reference}")
        ref = self.mean(reference)
        rows = []
        for k in sorted(self.count):
            mean = self.mean(k)
            variance = self.variance(k)
            mean_sq = float(mean.dot(mean))
            denom = math.sqrt(mean_sq * float(ref.dot(ref)))
            rows.append(
                {
                    "k": k,
                    "n_rollout_sets": self.count[k],
                    "variance": variance,
                    "mean_grad_sq_norm": mean_sq,
                    "relative_variance": variance / mean_sq if mean_sq > 0 else math.nan,
                    "bias_norm": float((mean - ref).norm()),
                    "cosine_to_reference": float(mean.dot(ref)) / denom if denom > 0 else math.nan,
                }
            )
        return rows
