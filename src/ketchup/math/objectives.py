"""The on-policy methods' losses, from logits over sequences to (loss, statistics).

Pure tensor code like `rewards` and `divergences`, which it composes: no models, no I/O. The
distill stage draws the sequences and runs the two forward passes; each function here turns
``student_logits`` (with grad), ``teacher_logits`` (no grad), the sequence ``tokens`` and their
``mask`` into the loss to minimise and a dict of floats for the training log.

- :func:`policy_gradient_objective`: LLMR (K = 1; no, mean or minimum-variance baseline) and
  KETCHUP (K-step returns), with the released code's stop-gradient weight pi(y_t), an optional
  batch-std normalisation, clipping and LLMR's uniform cross-entropy regulariser.
- :func:`minillm_objective`: MiniLLM's reverse-KL policy gradient (per-token reward
  log p_T - log p_S, its reward-to-go), with the same weight, normalisation and clipping.
- :func:`divergence_objective`: step-wise divergences over the vocabulary at every visited
  state: JS and TVD (f-distill) and GKD's generalized JSD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ketchup.math.divergences import (
    generalized_jsd,
    js_divergence,
    reverse_kl_rewards,
    total_variation,
    uniform_cross_entropy,
)
from ketchup.math.policy_gradient import (
    mean_baseline,
    min_variance_baseline,
    policy_gradient_loss,
)
from ketchup.math.returns import (
    kstep_returns_from_values,
    kstep_rewards_from_values,
    reward_to_go,
    taken_q_and_values,
)

Baseline = Literal["none", "mean", "minvar"]

__all__ = [
    "Reinforce",
    "divergence_objective",
    "minillm_objective",
    "policy_gradient_objective",
    "taken_log_probs",
]


def taken_log_probs(student_logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """(B, T) float32 ``log pi(y_t | s_t)`` of the taken tokens, with grad; 0 at padding."""
    m = mask.bool()
    safe = torch.where(m, tokens, 0)
    logprobs = student_logits.float().log_softmax(-1).gather(-1, safe[..., None])[..., 0]
    return torch.where(m, logprobs, 0.0)


@dataclass(frozen=True)
class Reinforce:
    """How the policy-gradient loss turns returns into a loss (`distill.policy_gradient`).

    ``weight``: "pi" multiplies each term by the stop-gradient ``pi(y_t | s_t)`` (the released
    KETCHUP code), "none" by 1; ``normalize="std"`` also divides the advantages by their batch
    standard deviation; ``denom`` divides them; ``clip`` clamps the result to [-clip, clip] (None:
    no clipping); ``uniform_ce`` adds that multiple of the cross-entropy from the uniform
    distribution (LLMR's regulariser).
    """

    weight: Literal["pi", "none"] = "pi"
    normalize: Literal["none", "std"] = "none"
    denom: float = 1.0
    clip: float | None = None
    uniform_ce: float = 0.0


def _masked_mean(x: Tensor, m: Tensor) -> float:
    return float(torch.where(m, x, 0.0).sum() / m.sum().clamp_min(1))


def _masked_std(x: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    if n < 2:
        return 0.0
    mean = torch.where(m, x, 0.0).sum() / n
    return float((torch.where(m, (x - mean) ** 2, 0.0).sum() / (n - 1)).sqrt())


def _reinforce(
    student_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    returns: Tensor,
    baseline: Tensor | None,
    settings: Reinforce,
) -> tuple[Tensor, dict[str, float]]:
    """The policy-gradient loss shared by the RL methods, and what it did, for the log."""
    m = mask.bool()
    clip = settings.clip
    logprobs = taken_log_probs(student_logits, tokens, mask)
    w = logprobs.detach().exp() if settings.weight == "pi" else None
    advantage = returns.detach().float() - (0.0 if baseline is None else baseline.detach())
    scale = settings.denom
    if settings.normalize == "std":
        scale = settings.denom * max(_masked_std(advantage, m), 1e-8)
    loss = policy_gradient_loss(
        logprobs, returns, mask, baseline=baseline, weight=w, denom=scale, clip=clip
    )
    scaled = (advantage if w is None else w * advantage) / scale
    stats = {
        "return_mean": _masked_mean(returns.float(), m),
        "advantage_std": _masked_std(advantage, m),
        "clipped_share": _masked_mean((scaled.abs() >= clip).float(), m) if clip else 0.0,
        "logprob_mean": _masked_mean(logprobs.detach(), m),
    }
    if settings.uniform_ce:
        regulariser = uniform_cross_entropy(student_logits, mask)
        loss = loss + settings.uniform_ce * regulariser
        stats["uniform_ce"] = float(regulariser.detach())
    return loss, stats


def policy_gradient_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    k: int,
    value: Literal["max", "soft"],
    baseline: Baseline,
    settings: Reinforce = Reinforce(),
) -> tuple[Tensor, dict[str, float]]:
    """LLMR (k = 1) and KETCHUP (k > 1): REINFORCE on the teacher-induced K-step returns.

    Eq.: ``q = f_T - mean_a f_T``; ``G^K_t = sum_j q(s_{t+jK}, y_{t+jK}) - V(s_{min(t+(j+1)K, L)})``
    (:func:`ketchup.math.returns.kstep_returns_from_values`); loss
    ``-(1/N) sum_t clip(w_t (G_t - b_t) /
    denom) log pi(y_t | s_t)`` + ``uniform_ce * H(U, pi)`` (see :class:`Reinforce`), with ``b``
    none, the batch mean, or the gradient-norm weighted (minimum-variance) mean of the returns.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V); tokens: (B, T) the sampled
        sequences; mask: (B, T) 0/1, EOS included, truncated rows already zeroed if dropped.

    Returns:
        (loss, stats): 0-d loss; stats ``return_mean``, ``reward_mean`` (one-step reward),
        ``advantage_std``, ``clipped_share``, ``logprob_mean`` (and ``uniform_ce``).
    """
    m = mask.bool()
    with torch.no_grad():
        q_taken, values = taken_q_and_values(teacher_logits.detach(), tokens, mask, value)
        returns = kstep_returns_from_values(q_taken, values, mask, k)
        rewards = kstep_rewards_from_values(q_taken, values, mask, 1)  # for the log
        if baseline == "mean":
            b = mean_baseline(returns, mask)
        elif baseline == "minvar":
            b = min_variance_baseline(returns, mask, student_logits, tokens)
        elif baseline == "none":
            b = None
        else:
            raise ValueError(f"baseline must be none, mean or minvar, got {baseline!r}")
    loss, stats = _reinforce(student_logits, tokens, mask, returns, b, settings)
    stats["reward_mean"] = _masked_mean(rewards, m)
    return loss, stats


def minillm_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    settings: Reinforce = Reinforce(),
) -> tuple[Tensor, dict[str, float]]:
    """MiniLLM (Gu et al. 2024): REINFORCE on the reward-to-go of ``log p_T(y_t) - log p_S(y_t)``.

    The sequence-level reverse-KL policy gradient; MiniLLM's single-step decomposition, length
    normalisation and teacher-mixed sampling are left out (the same loss as the RL methods here).
    """
    rewards = reverse_kl_rewards(student_logits, teacher_logits, tokens, mask)
    returns = reward_to_go(rewards, mask)
    loss, stats = _reinforce(student_logits, tokens, mask, returns, None, settings)
    stats["reward_mean"] = _masked_mean(rewards, mask.bool())
    return loss, stats


def divergence_objective(
    name: Literal["js", "tvd", "gkd"],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    beta: float = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """Step-wise divergence between teacher and student at every visited state.

    js: Jensen-Shannon, tvd: total variation (f-distill, Wen et al. 2023); gkd: the generalized
    JSD with ``beta`` (Agarwal et al. 2024). Exact over the vocabulary, so no sampling variance
    beyond the states visited.
    """
    if name == "js":
        loss = js_divergence(student_logits, teacher_logits, mask)
    elif name == "tvd":
        loss = total_variation(student_logits, teacher_logits, mask)
    elif name == "gkd":
        loss = generalized_jsd(student_logits, teacher_logits, mask, beta=beta)
    else:
        raise ValueError(f"divergence must be js, tvd or gkd, got {name!r}")
    return loss, {"divergence": float(loss.detach())}
