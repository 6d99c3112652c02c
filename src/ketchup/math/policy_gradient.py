"""Policy-gradient estimators of LLMR and KETCHUP: importance weights, baselines, the loss.

Pure tensor math, vectorised over batch and time; conventions as in :mod:`ketchup.math.returns`
(``B`` batch, ``T`` time, ``V`` vocabulary, ``mask`` 1 for real tokens up to and including EOS).

The estimator (LLMR, Li, Hao, Mou 2024; KETCHUP, Fan et al. 2025, released code ``Mymodel.py``
``Net.reinforce``), for returns ``G_t`` of rollouts drawn from a sampler ``q``:

    A_t  = clip((w_t G_t - b rho_t) / s, -c, c)
    loss = -(1/N) sum_t mask_t A_t log pi_theta(y_t | s_t),   N = number of valid tokens

* ``w_t`` is a stop-gradient weight: ``pi`` (``pi_theta(y_t|s_t)``, the released code),
  ``ratio`` (``pi_theta / q``, LLMR's importance ratio against the distribution the rollouts
  were actually sampled from, after temperature and top-k, renormalised) or ``none`` (1).
  Under greedy rollouts ``q`` puts mass 1 on the argmax, so ``ratio`` equals ``pi`` there.
* ``b`` is a baseline of the WEIGHTED return ``u_t = w_t G_t`` (the released code's order,
  ``w G - b``). It enters multiplied by ``rho_t = pi_theta / q``, which is 1 when the rollouts
  sample the student's full distribution at temperature 1: then ``A = w G - b`` exactly as
  released. With a truncated or tempered sampler ``E_q[grad log pi] != 0``, and ``rho`` is what
  makes the baseline term's expectation vanish: ``E_q[rho grad log pi] = sum_a grad pi_a = 0``.
  Under greedy rollouts no baseline can have zero expectation (there is nothing random); ``rho``
  is then taken as 1, the released code's ``w G - b``. Subtracting ``b`` inside the weight,
  ``w (G - b)``, is not a baseline when ``w = pi``: its expectation is
  ``-b grad(1/2 sum_a pi_a^2)``, a push towards a peakier (b < 0) or flatter policy.
* ``s`` is ``denom``, times the batch standard deviation of ``w G - b rho`` when normalising.

Without a baseline and with ``w = pi``, a constant ``c`` in the returns adds
``c grad_z(1/2 sum_a pi_a^2)`` to the expected update: an implicit entropy term whose sign is that
of the mean return (see docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ketchup.math.checks import check_ids, check_logits, check_mask, check_positive, check_shape
from ketchup.math.returns import _check_2d

__all__ = [
    "Sampler",
    "gradient_norm_weights",
    "importance_weights",
    "mean_baseline",
    "min_variance_baseline",
    "policy_gradient_advantages",
    "policy_gradient_loss",
    "rollout_log_probs",
]

Weight = Literal["pi", "ratio", "none"]
WEIGHTS = ("pi", "ratio", "none")


@dataclass(frozen=True)
class Sampler:
    """How rollouts were drawn from the student: greedy, or sampled from ``softmax(z / T)``
    restricted to the ``top_k`` largest logits (0 = all) and renormalised, as transformers'
    temperature and top-k warpers do (ties at the k-th logit are kept)."""

    greedy: bool = False
    top_k: int = 0
    temperature: float = 1.0

    @property
    def is_full_distribution(self) -> bool:
        """Sampling from the student's own distribution: ``q = pi`` and ``rho = 1``."""
        return not self.greedy and self.top_k == 0 and self.temperature == 1.0


def rollout_log_probs(
    student_logits: Tensor, actions: Tensor, mask: Tensor, sampler: Sampler
) -> Tensor:
    """Log-probability that ``sampler`` gave each taken token: ``log q(y_t | s_t)``.

    Eq.: ``q(a) = exp(z_a / T) / sum_{a' in K_t} exp(z_a' / T)`` for ``a`` in ``K_t``, the tokens
    whose logit reaches the k-th largest (all tokens when ``top_k = 0``); greedy: ``q = 1`` for
    the argmax. The taken token always counts as kept: a rollout's token lies in ``K_t`` by
    construction, and rounding differences between the KV-cached decoding that drew it and this
    teacher-forced pass must not turn its probability into 0.

    Args:
        student_logits: (B, T, V) logits of the policy that drew the rollouts (no grad needed).
        actions: (B, T) sampled tokens; ids at padding are ignored.
        mask: (B, T) 0/1 mask.
        sampler: the rollouts' :class:`Sampler`.

    Returns:
        (B, T) float32 ``log q``, 0 at padding, no gradient.
    """
    check_logits(student_logits, "student_logits")
    shape = tuple(student_logits.shape[:2])
    m = check_mask(mask, shape)
    a = check_ids(actions, shape, student_logits.shape[-1], m, "actions")
    with torch.no_grad():
        if sampler.greedy:
            return torch.zeros(shape, device=student_logits.device)
        z = student_logits.detach().float() / check_positive(sampler.temperature, "temperature")
        if 0 < sampler.top_k < z.shape[-1]:
            kth = z.topk(sampler.top_k, dim=-1).values[..., -1:]
            taken = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, a.unsqueeze(-1), True)
            z = torch.where((z >= kth) | taken, z, -torch.inf)
        logq = z.log_softmax(-1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        return torch.where(m, logq, 0)


def importance_weights(
    logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, weight: Weight, sampler: Sampler
) -> tuple[Tensor | None, Tensor]:
    """The stop-gradient weight ``w_t`` and the baseline's ratio ``rho_t`` (module docstring).

    Eq.: ``rho_t = pi_theta(y_t) / q(y_t)`` (1 under greedy rollouts); ``w_t = pi_theta(y_t)``
    ("pi"), ``rho_t`` ("ratio") or 1 ("none", returned as None).

    Args:
        logprobs: (B, T) ``log pi_theta(y_t | s_t)`` (detached here).
        rollout_logprobs: (B, T) ``log q(y_t | s_t)`` (:func:`rollout_log_probs`).
        mask: (B, T) 0/1 mask.
        weight: "pi", "ratio" or "none".
        sampler: how the rollouts were drawn.

    Returns:
        ``(w, rho)``: (B, T) float32 each (``w`` None for "none"), 0 at padding, no gradient.
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    shape = _check_2d(logprobs, "logprobs")
    check_shape(rollout_logprobs, shape, "rollout_logprobs")
    m = check_mask(mask, shape)
    lp = logprobs.detach().float()
    log_rho = lp - rollout_logprobs.detach().float()
    rho = torch.where(m, log_rho.exp(), 0)
    baseline_ratio = torch.where(m, 1.0, 0.0) if sampler.greedy else rho
    if weight == "none":
        return None, baseline_ratio
    w = rho if weight == "ratio" else torch.where(m, lp.exp(), 0)
    return w, baseline_ratio


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


def mean_baseline(weighted_returns: Tensor, mask: Tensor, per_sequence: bool = False) -> Tensor:
    """Mean baseline ("LLMR + mean baseline"; the released code's ``method == 'mean'``).

    Eq.: ``b = sum_t mask_t u_t / max(1, sum_t mask_t)`` with ``u_t = w_t G_t`` the weighted
    returns, over all valid tokens of the batch, or with ``per_sequence`` over each row's own
    tokens (the released code, whose batches hold one sequence).

    Args:
        weighted_returns: (B, T) ``w_t G_t``; mask: (B, T) 0/1 mask.

    Returns:
        float32, no gradient: 0-d, or (B, 1) with ``per_sequence``; 0 where nothing is valid.
    """
    m = check_mask(mask, _check_2d(weighted_returns, "weighted_returns"))
    u = torch.where(m, weighted_returns.detach().float(), 0)
    if per_sequence:
        return u.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return u.sum() / m.sum().clamp_min(1)


def min_variance_baseline(
    weighted_returns: Tensor,
    mask: Tensor,
    student_logits: Tensor,
    actions: Tensor,
    ratio: Tensor | None = None,
    per_sequence: bool = False,
) -> Tensor:
    """Minimum-variance baseline for the estimator in use ("LLMR + min-var").

    The per-token gradient w.r.t. the logits is ``(u_t - b rho_t)(e_{y_t} - pi_t)``; the ``b``
    minimising its summed squared norm ``sum_t ||.||^2`` (the trace of its second moment, which
    differs from the variance by a term the baseline does not change) is

        ``b* = sum_t rho_t g_t u_t / sum_t rho_t^2 g_t``,   ``g_t = ||e_{y_t} - pi_t||^2``

    (:func:`gradient_norm_weights`), over the valid tokens of the batch (of each row with
    ``per_sequence``). With ``rho = 1`` and
    ``w = 1`` it is the gradient-norm weighted mean of the returns; with ``w = pi`` it weights
    ``pi G``, a different optimum. Approximations: logit space instead of parameter space, and
    no cross-token terms. The released code's version is not this one: its ``lprobs.grad`` after
    ``lprobs.backward(ones)`` is all ones, so it equals the mean baseline.

    Args:
        weighted_returns: (B, T) ``u_t = w_t G_t``; mask: (B, T) 0/1 mask;
        student_logits: (B, T, V); actions: (B, T) integer tokens;
        ratio: optional (B, T) ``rho_t`` (:func:`importance_weights`); None means 1.
        per_sequence: one baseline per row.

    Returns:
        float32, no gradient: 0-d, or (B, 1) with ``per_sequence``. 0 where the denominator is
        0 (all padding, or a deterministic policy): then every score function is 0 and no
        baseline changes anything.
    """
    shape = _check_2d(weighted_returns, "weighted_returns")
    m = check_mask(mask, shape)
    check_logits(student_logits, "student_logits")
    if tuple(student_logits.shape[:2]) != shape:
        raise ValueError(f"student_logits must have shape (B, T, V) with (B, T) = {shape}")
    g = gradient_norm_weights(student_logits, actions, m)
    rho = torch.ones(shape, device=g.device) if ratio is None else ratio.detach().float()
    if ratio is not None:
        check_shape(ratio, shape, "ratio")
    u = torch.where(m, weighted_returns.detach().float(), 0)
    rho = torch.where(m, rho, 0)
    dims = {"dim": 1, "keepdim": True} if per_sequence else {}
    num = (rho * g * u).sum(**dims)
    den = (rho * rho * g).sum(**dims)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def _masked_std(x: Tensor, m: Tensor, per_sequence: bool = False) -> Tensor:
    """Unbiased standard deviation over the valid entries (0-d, or (B, 1) per row); 0 with
    fewer than two."""
    dims = {"dim": 1, "keepdim": True} if per_sequence else {}
    n = m.sum(**dims)
    mean = torch.where(m, x, 0).sum(**dims) / n.clamp_min(1)
    var = torch.where(m, (x - mean) ** 2, 0).sum(**dims) / (n - 1).clamp_min(1)
    return torch.where(n >= 2, var.sqrt(), 0.0)


def policy_gradient_advantages(
    returns: Tensor,
    mask: Tensor,
    *,
    weight: Tensor | None = None,
    baseline: Tensor | float | None = None,
    ratio: Tensor | None = None,
    normalize: Literal["none", "std"] = "none",
    denom: float = 1.0,
    clip: float | None = None,
    per_sequence: bool = False,
) -> Tensor:
    """The scaled, clipped advantages of the estimator (module docstring).

    Eq.: ``A_t = clip((w_t G_t - b rho_t) / s, -c, c)``, ``s = denom`` times (with
    ``normalize="std"``) the standard deviation of ``w G - b rho`` over the valid tokens of the
    batch, or of each row with ``per_sequence`` (floored at 1e-8).

    Args:
        returns: (B, T) returns ``G``; mask: (B, T) 0/1 mask.
        weight: None (1) or (B, T) ``w``.
        baseline: None, a number, a 0-d tensor or a (B, 1) tensor (one per row) ``b``.
        ratio: None (1) or (B, T) ``rho`` multiplying the baseline.
        normalize: "none" or "std"; denom: > 0; clip: None or c > 0.
        per_sequence: the standard deviation of each row.

    Returns:
        (B, T) float32 advantages, 0 at padding, no gradient.
    """
    shape = _check_2d(returns, "returns")
    m = check_mask(mask, shape)
    denom = check_positive(denom, "denom")
    if clip is not None:
        clip = check_positive(clip, "clip")
    if normalize not in ("none", "std"):
        raise ValueError(f"normalize must be 'none' or 'std', got {normalize!r}")
    u = returns.detach().float()
    if weight is not None:
        check_shape(weight, shape, "weight")
        u = weight.detach().float() * u
    if baseline is not None:
        if isinstance(baseline, Tensor):
            if baseline.dim() != 0 and tuple(baseline.shape) != (shape[0], 1):
                raise ValueError(
                    f"baseline must be None, a number, 0-d or (B, 1), got {tuple(baseline.shape)}"
                )
            b = baseline.detach().float()
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            b = torch.tensor(float(baseline), device=u.device)
        else:
            raise ValueError(f"baseline must be None, a number or a tensor, got {baseline!r}")
        if ratio is not None:
            check_shape(ratio, shape, "ratio")
            b = b * ratio.detach().float()
        u = u - b
    # where (not multiply) so inf/NaN garbage at padding cannot leak through 0 * inf.
    u = torch.where(m, u, 0)
    scale = torch.tensor(denom, device=u.device)
    if normalize == "std":
        scale = scale * _masked_std(u, m, per_sequence).clamp_min(1e-8)
    adv = u / scale
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return torch.where(m, adv, 0)


def policy_gradient_loss(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, per_sequence: bool = False
) -> Tensor:
    """REINFORCE surrogate loss (LLMR; KETCHUP; the released ``Net.reinforce``).

    Eq.: ``loss = -(1/N) sum_t mask_t A_t log pi_theta(y_t | s_t)``, ``N = max(1, sum_t mask_t)``,
    whose gradient is minus the policy-gradient estimate. With ``per_sequence`` each row's token
    mean, averaged over the rows that have tokens: the released code's loss of one sequence per
    batch, averaged by its gradient accumulation.

    Args:
        logprobs: (B, T) ``log pi_theta(y_t|s_t)`` with grad (the only input that gets one).
        advantages: (B, T) ``A_t`` (detached; :func:`policy_gradient_advantages`).
        mask: (B, T) 0/1 mask; per_sequence: the mean of the rows' token means.

    Returns:
        0-d float32 loss; 0 (not NaN) for an all-padding batch.
    """
    shape = _check_2d(logprobs, "logprobs")
    check_shape(advantages, shape, "advantages")
    m = check_mask(mask, shape)
    # Zero both factors at padding so garbage there (inf/NaN) reaches neither loss nor gradient.
    adv = torch.where(m, advantages.detach().float(), 0)
    lp = torch.where(m, logprobs.float(), 0)
    if per_sequence:
        n = m.sum(1)  # (B,)
        rows = -(adv * lp).sum(1) / n.clamp_min(1)
        return rows.sum() / (n > 0).sum().clamp_min(1)
    return -(adv * lp).sum() / m.sum().clamp_min(1)
