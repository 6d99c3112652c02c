"""Policy-gradient estimators: baselines and the REINFORCE loss of LLMR and KETCHUP.

Pure tensor math, vectorised over batch and time; conventions as in :mod:`ketchup.math.returns`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ketchup.math.checks import (
    check_ids,
    check_logits,
    check_mask,
    check_positive,
    check_shape,
)
from ketchup.math.returns import _check_2d

__all__ = [
    "gradient_norm_weights",
    "mean_baseline",
    "min_variance_baseline",
    "policy_gradient_loss",
]


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def _check_returns_mask(returns: Tensor, mask: Tensor) -> Tensor:
    return check_mask(mask, _check_2d(returns, "returns"))


def mean_baseline(returns: Tensor, mask: Tensor) -> Tensor:
    """Batch-mean baseline ("LLMR + mean baseline").

    Eq.: ``b = sum_t mask_t G_t / max(1, sum_t mask_t)`` over all valid tokens of the batch.

    Args:
        returns: (B, T) returns ``G``; mask: (B, T) 0/1 mask.

    Returns:
        0-d float32 tensor, no gradient; 0 for an all-padding batch.
    """
    m = _check_returns_mask(returns, mask)
    g = torch.where(m, returns.detach().float(), 0)
    return g.sum() / m.sum().clamp_min(1)


def gradient_norm_weights(
    student_logits: Tensor, actions: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Squared norm of the score function w.r.t. the logits, in closed form.

    Eq.: ``d log softmax(z)_y / dz = e_y - pi``, hence
    ``g_t = ||e_y - pi||^2 = 1 - 2 pi(y_t) + sum_a pi(a)^2``.

    Args:
        student_logits: (B, T, V) student logits (any float dtype; computed in float32 under
            no grad).
        actions: (B, T) integer tokens ``y_t``.
        mask: optional (B, T) 0/1 mask; when given, ids at padding are ignored (may be -100) and
            the weights there are 0.

    Returns:
        (B, T) float32 weights in [0, 2], no gradient. A position whose logits are all -inf
        has no distribution and gets weight 0.
    """
    check_logits(student_logits, "student_logits")
    shape = tuple(student_logits.shape[:2])
    m = (
        torch.ones(shape, dtype=torch.bool, device=student_logits.device)
        if mask is None
        else check_mask(mask, shape)
    )
    a = check_ids(actions, shape, student_logits.shape[-1], m, "actions")
    with torch.no_grad():
        z = student_logits.detach().float()
        p = torch.softmax(z, dim=-1)
        p_taken = p.gather(-1, a.unsqueeze(-1)).squeeze(-1)
        g = 1.0 - 2.0 * p_taken + (p * p).sum(-1)
        # All -inf logits give NaN probabilities; rounding can also dip just below 0.
        g = torch.nan_to_num(g, nan=0.0).clamp_min(0.0)
        return torch.where(m, g, 0)


def min_variance_baseline(
    returns: Tensor, mask: Tensor, student_logits: Tensor, actions: Tensor
) -> Tensor:
    """Minimum-variance (gradient-norm weighted) baseline.

    Eq.: ``b = sum_t g_t G_t / sum_t g_t`` over the valid tokens of the batch, with ``g_t`` from
    :func:`gradient_norm_weights` (``1 - 2 pi(y_t) + sum_a pi(a)^2``), the baseline minimising
    the variance of ``(G - b) d log pi / d logits``.

    Args:
        returns: (B, T) returns; mask: (B, T) 0/1 mask; student_logits: (B, T, V);
        actions: (B, T) integer tokens.

    Returns:
        0-d float32 tensor, no gradient. 0 when ``sum g = 0`` (all padding, or a deterministic
        policy): then every score function is 0 and the baseline cannot change the gradient.
    """
    m = _check_returns_mask(returns, mask)
    check_logits(student_logits, "student_logits")
    if tuple(student_logits.shape[:2]) != tuple(returns.shape):
        raise ValueError(
            f"student_logits must have shape (B, T, V) with (B, T) = {tuple(returns.shape)}"
        )
    g = gradient_norm_weights(student_logits, actions, m)
    ret = torch.where(m, returns.detach().float(), 0)
    num = (g * ret).sum()
    den = g.sum()
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def policy_gradient_loss(
    logprobs: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    baseline: Tensor | float | None = None,
    weight: Tensor | None = None,
    denom: float = 1.0,
    clip: float | None = None,
) -> Tensor:
    """REINFORCE loss with baseline, stop-gradient weight, scaling and clipping.

    Eq. (KETCHUP, Fan et al. 2025; LLMR, Li, Hao, Mou 2024):
    ``loss = -(1/N) sum_t mask_t clip(w_t (G_t - b_t) / denom, -c, c) log pi_theta(y_t|s_t)``,
    ``N = max(1, sum_t mask_t)``. ``w_t`` is ``pi_theta(y_t|s_t)`` in the released KETCHUP code and
    ``pi_theta / pi_behaviour`` in LLMR; it is detached here.

    Args:
        logprobs: (B, T) ``log pi_theta(y_t|s_t)`` with grad (the only input that gets one).
        returns: (B, T) returns ``G``.
        mask: (B, T) 0/1 mask.
        baseline: None, a 0-d tensor / float, or a (B, T) tensor ``b``.
        weight: None or (B, T) weight ``w`` (detached).
        denom: scale > 0 dividing the advantage.
        clip: None or c > 0; the scaled advantage is clamped to [-c, c].

    Returns:
        0-d float32 loss; 0 (not NaN) for an all-padding batch.
    """
    shape = _check_2d(logprobs, "logprobs")
    check_shape(returns, shape, "returns")
    m = check_mask(mask, shape)
    denom = check_positive(denom, "denom")
    if clip is not None:
        clip = check_positive(clip, "clip")

    adv = returns.detach().float()
    if baseline is not None:
        if isinstance(baseline, Tensor):
            if baseline.dim() != 0 and tuple(baseline.shape) != shape:
                raise ValueError(
                    f"baseline must be None, 0-d or of shape {shape}, got {tuple(baseline.shape)}"
                )
            adv = adv - baseline.detach().float()
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            adv = adv - float(baseline)
        else:
            raise ValueError(f"baseline must be None, a number or a tensor, got {baseline!r}")
    if weight is not None:
        check_shape(weight, shape, "weight")
        adv = weight.detach().float() * adv
    adv = adv / denom
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    # Zero both factors at padding so garbage there (inf/NaN) reaches neither loss nor gradient.
    adv = torch.where(m, adv, 0)
    lp = torch.where(m, logprobs.float(), 0)
    return -(adv * lp).sum() / m.sum().clamp_min(1)
