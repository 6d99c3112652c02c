"""Variance, signal and direction of policy-gradient estimators over rollout sets (Theorem 1 of
KETCHUP, measured), with bootstrap intervals over the sets.

For a fixed student and a fixed batch of sources, M rollout sets are drawn once; every system
(LLMR, its baselines, KETCHUP at each K) computes the gradient it would apply on each set, so the
systems are compared on the same rollouts. Let ``g_{s,m}`` (P,) be system s's gradient on set m
and ``mu_s = E[g_s]``. Everything below is a function of the Gram matrix
``G[(s,m),(t,n)] = g_{s,m} . g_{t,n}``, which :class:`GradientSets` collects:

* variance ``tr(Sigma_s) = (sum_m |g_{s,m}|^2 - M |gbar_s|^2) / (M - 1)`` (unbiased);
* signal ``|mu_s|^2`` estimated without the finite-sample bias ``tr(Sigma_s)/M`` of
  ``|gbar_s|^2``: the U-statistic ``(1 / (M (M - 1))) sum_{m != n} g_{s,m} . g_{s,n}``, which is
  ``|gbar_s|^2 - tr(Sigma_s) / M``; likewise ``mu_s . mu_t`` for the cosine between systems (the
  rollouts are shared, so the cross terms ``m = n`` are what must be left out);
* inverse signal-to-noise ratio ``tr(Sigma_s) / |mu_s|^2`` (scale-free: it does not change when
  the returns are rescaled, which the raw trace does);
* cosine of the mean gradient to the reference system's, ``mu_s . mu_r / (|mu_s| |mu_r|)``.

Intervals: percentile bootstrap over rollout sets (the same resampled sets for every system),
computed exactly from the Gram matrix (a resample is a vector of multiplicities c, and every sum
above is a quadratic form ``c^T G c``, ``c . diag G`` or ``c^2 . diag G``); in a resample the
pairs left out are all pairs of draws of one set, so the intervals are centred on the debiased
estimates rather than ``tr(Sigma)/M`` above them. A system whose ``|mu_s|^2`` interval
reaches 0 is flagged: M is too small to resolve its mean gradient, and its ratio and cosine are
not meaningful.

The update as applied. Training clips the gradient's global norm before the optimizer
(``torch.nn.utils.clip_grad_norm_``): the applied gradient is ``a_{s,m} g_{s,m}`` with
``a_{s,m} = min(1, c / (|g_{s,m}| + 1e-6))``, c the config's ``grad_clip``. Its Gram matrix is
``a_{s,m} a_{t,n} G[(s,m),(t,n)]`` (:func:`clipped_gram`), so every statistic above is computed for
the applied update from the same recorded gradients, with the exact norms taken before any
sketch; where the clip binds on most sets, the raw variance compares scales training never sees.

Gradients too large to keep M of them for every system are count-sketched (``sketch_dim``): each
coordinate goes to one of d buckets with a random sign, which keeps every dot product unbiased
(``E[<Sx, Sy>] = <x, y>``) at the price of extra noise of order ``|x| |y| / sqrt(d)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["GradientSets", "clip_factors", "clipped_gram", "gradient_statistics"]


class GradientSets:
    """The gradient of every system on every rollout set, kept (or count-sketched) in float32."""

    def __init__(
        self,
        systems: Sequence[str],
        n_sets: int,
        n_params: int,
        sketch_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        if n_sets < 2:
            raise ValueError(f"n_sets must be >= 2 to estimate a variance, got {n_sets}")
        if len(set(systems)) != len(systems) or not systems:
            raise ValueError(f"systems must be distinct and non-empty, got {list(systems)}")
        self.systems = list(systems)
        self.n_sets = n_sets
        self.n_params = n_params
        self.sketch_dim = sketch_dim if sketch_dim and sketch_dim < n_params else None
        width = self.sketch_dim or n_params
        self.data = torch.zeros(len(self.systems), n_sets, width, dtype=torch.float32)
        self.filled = torch.zeros(len(self.systems), n_sets, dtype=torch.bool)
        if self.sketch_dim:
            g = torch.Generator().manual_seed(seed)
            self.bucket = torch.randint(0, self.sketch_dim, (n_params,), generator=g)
            self.sign = torch.randint(0, 2, (n_params,), generator=g).float() * 2 - 1

    def add(self, system: str, rollout_set: int, grad: Tensor) -> None:
        """Record system's flattened gradient (P,) on one rollout set."""
        g = grad.detach().reshape(-1).to("cpu", torch.float32)
        if g.numel() != self.n_params:
            raise ValueError(f"grad: {g.numel()} values for {system!r}, expected {self.n_params}")
        s = self.systems.index(system)
        if self.sketch_dim:
            sketch = torch.zeros(self.sketch_dim)
            g = sketch.index_add_(0, self.bucket, g * self.sign)
        self.data[s, rollout_set] = g
        self.filled[s, rollout_set] = True

    def gram(self) -> np.ndarray:
        """(S, M, S, M) float64 dot products of every pair of recorded gradients."""
        if not bool(self.filled.all()):
            missing = [
                self.systems[i] for i in range(len(self.systems)) if not self.filled[i].all()
            ]
            raise ValueError(f"gradients missing for some rollout sets of {missing}")
        x = self.data.reshape(-1, self.data.shape[-1]).double()
        s, m = len(self.systems), self.n_sets
        return (x @ x.T).reshape(s, m, s, m).numpy()


def clip_factors(norms: np.ndarray, max_norm: float) -> np.ndarray:
    """The factor ``min(1, c / (|g| + 1e-6))`` by which ``torch.nn.utils.clip_grad_norm_`` with
    ``max_norm`` c multiplies a gradient of global norm |g| (same shape as ``norms``)."""
    return np.minimum(1.0, max_norm / (np.asarray(norms, dtype=float) + 1e-6))


def clipped_gram(gram: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(S, M, S, M) dot products of the clipped gradients ``a_{s,m} g_{s,m}``, from those of the
    raw ones and the (S, M) factors of :func:`clip_factors`."""
    return gram * factors[:, :, None, None] * factors[None, None, :, :]


def _moments(gram: np.ndarray, counts: np.ndarray):
    """Per resample b (counts (B, M) multiplicities summing to M): the sum of the dot products
    over all ordered pairs of draws, and over the pairs of draws of one and the same set, each
    (B, S, S)."""
    pairs = np.einsum("bm,smtn,bn->bst", counts, gram, counts, optimize=True)
    same_set = np.einsum("bm,smtm->bst", counts**2, gram, optimize=True)
    return pairs, same_set


def _statistics(gram: np.ndarray, counts: np.ndarray, reference: int) -> dict[str, np.ndarray]:
    """Variance, debiased signal, inverse SNR and cosine of every system, (B, S) each.

    A bootstrap resample draws some sets more than once, and a pair of draws of the same set is
    no independent pair: its dot product is ``|g|^2``, whose mean exceeds ``|mu|^2`` by
    ``tr(Sigma)``. So the signal leaves out every pair of draws of one set (for the sample
    itself, c = 1, that is the U-statistic of the module docstring), and the variance is
    ``mean |g_m|^2`` minus that signal (for c = 1, the unbiased trace); otherwise every interval
    would sit about ``tr(Sigma) / M`` above the estimate it is for.
    """
    m = counts.sum(axis=1)  # (B,): M of each resample
    pairs, same_set = _moments(gram, counts)
    n_pairs = (m**2 - (counts**2).sum(axis=1))[:, None, None]  # pairs of draws of two sets
    # mu_s . mu_t without the same-set terms (the shared rollouts' cross-covariance); NaN for a
    # resample of one set drawn M times (no pair of two sets), which the intervals leave out
    with np.errstate(divide="ignore", invalid="ignore"):
        dots = (pairs - same_set) / n_pairs
    gbar_sq = np.einsum("bss->bs", pairs) / m[:, None] ** 2
    second = np.einsum("bm,smsm->bs", counts, gram, optimize=True) / m[:, None]  # mean |g_m|^2
    signal = np.einsum("bss->bs", dots)
    variance = second - signal
    with np.errstate(divide="ignore", invalid="ignore"):
        isnr = np.where(signal > 0, variance / signal, np.nan)
        norms = np.sqrt(np.clip(signal, 0, None))
        cosine = dots[:, :, reference] / (norms * norms[:, reference : reference + 1])
        cosine = np.where((signal > 0) & (signal[:, reference : reference + 1] > 0), cosine, np.nan)
    return {
        "variance": variance,
        "mean_grad_sq_norm": signal,
        "raw_mean_grad_sq_norm": gbar_sq,
        "inverse_snr": isnr,
        "cosine_to_reference": cosine,
    }


def gradient_statistics(
    gram: np.ndarray,
    systems: Sequence[str],
    reference: str,
    *,
    extra: dict[str, np.ndarray] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, float]]:
    """One row per system: each statistic of the module docstring with its bootstrap interval.

    Args:
        gram: (S, M, S, M) dot products (:meth:`GradientSets.gram`).
        systems: the S names, in the Gram matrix's order; reference: the one cosines are to.
        extra: optional per-set scalars to average, name -> (S, M) (the mean return per token);
            each gets a mean and an interval from the same resamples.
        n_boot, seed, level: the bootstrap's resamples, seed and coverage.

    Returns:
        Rows with ``system``, ``n_rollout_sets`` and, for each statistic X, ``X``, ``X_low``,
        ``X_high``, plus ``resolved`` (the signal's interval lies above 0).
    """
    s, m = gram.shape[0], gram.shape[1]
    if gram.shape != (s, m, s, m) or len(systems) != s:
        raise ValueError(f"gram must be (S, M, S, M) with S = {len(systems)}, got {gram.shape}")
    if m < 2:
        raise ValueError("need at least 2 rollout sets")
    ref = list(systems).index(reference)
    full = _statistics(gram, np.ones((1, m)), ref)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(n_boot)])
    counts = counts.astype(float)
    boot = _statistics(gram, counts, ref)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    extra = extra or {}
    rows = []
    for i, name in enumerate(systems):
        row: dict[str, float] = {"system": name, "n_rollout_sets": m}
        for key in full:
            row[key] = float(full[key][0, i])
            values = boot[key][:, i]
            values = values[np.isfinite(values)]
            lo, hi = np.quantile(values, [lo_q, hi_q]) if values.size else (math.nan, math.nan)
            row[f"{key}_low"], row[f"{key}_high"] = float(lo), float(hi)
        for key, per_set in extra.items():
            x = np.asarray(per_set, dtype=float)[i]
            row[key] = float(x.mean())
            means = counts @ x / m
            row[f"{key}_low"], row[f"{key}_high"] = map(float, np.quantile(means, [lo_q, hi_q]))
        row["resolved"] = bool(row["mean_grad_sq_norm_low"] > 0)
        rows.append(row)
    return rows
