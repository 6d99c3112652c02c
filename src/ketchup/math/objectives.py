"""The on-policy methods' losses, from logits over sequences to (loss, statistics).

Pure tensor code composing :mod:`ketchup.math.returns`, :mod:`ketchup.math.policy_gradient`
and :mod:`ketchup.math.divergences`: no models, no I/O. The distill stage draws the sequences
and runs the two forward passes; each function here turns ``student_logits`` (with grad),
``teacher_logits`` (no grad), the sequence ``tokens`` and their ``mask`` into the loss to
minimise and a dict of floats for the training log.

- :func:`policy_gradient_objective`: LLMR (K = 1; no, mean or minimum-variance baseline) and
  KETCHUP (K-step returns), REINFORCE with a stop-gradient weight, an optional batch-std
  normalisation, clipping and LLMR's uniform cross-entropy regulariser.
- :func:`minillm_objective`: MiniLLM (Gu et al. 2024) as LMOps ``minillm/losses.py`` defines it,
  without the pre-training loss.
- :func:`fdistill_objective`: f-distill's JS and TVD (Wen et al. 2023) on student samples and
  teacher sequences.
- :func:`gkd_objective`: GKD's generalized JSD at every visited state (Agarwal et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ketchup.math.divergences import (
    fdistill_loss,
    generalized_jsd,
    reverse_kl,
    reverse_kl_rewards,
    uniform_cross_entropy,
)
from ketchup.math.policy_gradient import (
    Sampler,
    Weight,
    importance_weights,
    mean_baseline,
    min_variance_baseline,
    policy_gradient_advantages,
    policy_gradient_loss,
    rollout_log_probs,
)
from ketchup.math.returns import (
    SequenceEnd,
    kstep_returns_from_values,
    kstep_rewards_from_values,
    q_values,
    reward_to_go,
    state_values,
    taken_q_and_values,
)

Baseline = Literal["none", "mean", "minvar"]

__all__ = [
    "MiniLLM",
    "bootstraps_at_cut",
    "Reinforce",
    "fdistill_objective",
    "gkd_objective",
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

    ``weight``: the stop-gradient weight, "pi" (the released KETCHUP code), "ratio" (LLMR's
    ``pi / q`` against the rollout sampler) or "none"; ``normalize="std"`` also divides the
    advantages by their standard deviation; ``denom`` divides them; ``clip`` clamps the
    result to [-clip, clip] (None: no clipping); ``uniform_ce`` adds that multiple of the
    cross-entropy from the uniform distribution (LLMR's regulariser); ``scope`` is what the mean
    baseline, the minimum-variance baseline, the standard deviation and the token mean of the
    loss run over: the whole batch, or each sequence (the released KETCHUP code, batch 1 with
    gradient accumulation). See :mod:`ketchup.math.policy_gradient` for the equation.
    """

    weight: Weight = "pi"
    normalize: Literal["none", "std"] = "none"
    denom: float = 1.0
    clip: float | None = None
    uniform_ce: float = 0.0
    scope: Literal["batch", "sequence"] = "batch"


def bootstraps_at_cut(drop_truncated: bool, sequence_end: SequenceEnd) -> bool:
    """Whether rollouts that the length cap cut and the loss keeps (``drop_truncated: false``)
    bootstrap their K-step returns from the teacher's value at the cut (the ``cut`` argument of
    :func:`policy_gradient_objective`): under the equations' sequence end; the released end takes
    a cut row's last token as its EOS, as the released code does."""
    return not drop_truncated and sequence_end == "equations"


def _masked_mean(x: Tensor, m: Tensor) -> float:
    return float(torch.where(m, x, 0.0).sum() / m.sum().clamp_min(1))


def policy_gradient_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    k: int,
    value: Literal["max", "soft"],
    baseline: Baseline,
    sampler: Sampler,
    sequence_end: SequenceEnd = "equations",
    settings: Reinforce = Reinforce(),
    cut: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """LLMR (k = 1) and KETCHUP (k > 1): REINFORCE on the teacher-induced K-step returns.

    Eq. (KETCHUP, Fan et al. 2025; LLMR, Li, Hao, Mou 2024): ``q = f_T - mean_a f_T``,
    ``G^K_t = sum_j q(s_{t+jK}, y_{t+jK}) - V(s_{min(t+(j+1)K, L)})``
    (:func:`ketchup.math.returns.kstep_returns_from_values`, either sequence-end convention),
    ``A_t = clip((w_t G_t - b rho_t) / s, -c, c)`` and
    ``loss = -(1/N) sum_t A_t log pi(y_t | s_t) + uniform_ce H(U, pi)``, with ``b`` none, the
    batch mean or the minimum-variance baseline of the weighted returns
    (:mod:`ketchup.math.policy_gradient`).

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V); tokens: (B, T) the
        student's rollouts; mask: (B, T) 0/1, EOS included, truncated rows already zeroed if
        dropped; k: K >= 1; value: "max" or "soft"; baseline: "none", "mean" or "minvar";
        sampler: how the rollouts were drawn; sequence_end: "equations" or "released".
        cut: optional ``(next_logits, finished)``, (B, V) the teacher's logits at the state after
        each row's last token and (B,) bool whether the row ended in EOS: rows cut by the length
        cap and kept in the loss take ``V(s_L)`` from those logits instead of 0
        (:func:`ketchup.math.returns.kstep_returns_from_values`; equations end only).

    Returns:
        (loss, stats): 0-d loss; stats ``return_mean`` (mean G per token), ``reward_mean``
        (one-step reward), ``weighted_return_mean``, ``baseline``, ``weight_mean``,
        ``advantage_std`` (of ``w G - b rho`` before scaling), ``clipped_share``,
        ``logprob_mean`` (and ``uniform_ce``).
    """
    if baseline not in ("none", "mean", "minvar"):
        raise ValueError(f"baseline must be none, mean or minvar, got {baseline!r}")
    m = mask.bool()
    logprobs = taken_log_probs(student_logits, tokens, mask)
    with torch.no_grad():
        q_taken, values = taken_q_and_values(teacher_logits.detach(), tokens, mask, value)
        cut_values = None
        if cut is not None:
            next_logits, finished = cut
            after = state_values(q_values(next_logits.detach()[:, None]), value)[:, 0]  # (B,)
            cut_values = torch.where(finished.bool(), 0.0, after.float())
        returns = kstep_returns_from_values(q_taken, values, mask, k, sequence_end, cut_values)
        rewards = kstep_rewards_from_values(q_taken, values, mask, 1)  # for the log
        log_q = rollout_log_probs(student_logits, tokens, mask, sampler)
        w, rho = importance_weights(logprobs, log_q, mask, settings.weight, sampler)
        weighted = returns if w is None else w * returns
        per_sequence = settings.scope == "sequence"
        if baseline == "mean":
            b = mean_baseline(weighted, mask, per_sequence)
        elif baseline == "minvar":
            b = min_variance_baseline(weighted, mask, student_logits, tokens, rho, per_sequence)
        else:
            b = None
        centred = policy_gradient_advantages(returns, mask, weight=w, baseline=b, ratio=rho)
        advantages = policy_gradient_advantages(
            returns,
            mask,
            weight=w,
            baseline=b,
            ratio=rho,
            normalize=settings.normalize,
            denom=settings.denom,
            clip=settings.clip,
            per_sequence=per_sequence,
        )
    loss = policy_gradient_loss(logprobs, advantages, mask, per_sequence)
    clip = settings.clip
    stats = {
        "return_mean": _masked_mean(returns, m),
        "reward_mean": _masked_mean(rewards, m),
        "weighted_return_mean": _masked_mean(weighted, m),
        "baseline": 0.0 if b is None else _masked_mean(b.expand_as(returns), m),
        "weight_mean": 1.0 if w is None else _masked_mean(w, m),
        "advantage_std": _std(centred, m),
        "clipped_share": _masked_mean((advantages.abs() >= clip).float(), m) if clip else 0.0,
        "logprob_mean": _masked_mean(logprobs.detach(), m),
    }
    if settings.uniform_ce:
        regulariser = uniform_cross_entropy(student_logits, mask)
        loss = loss + settings.uniform_ce * regulariser
        stats["uniform_ce"] = float(regulariser.detach())
    return loss, stats


def _std(x: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    if n < 2:
        return 0.0
    mean = torch.where(m, x, 0.0).sum() / n
    return float((torch.where(m, (x - mean) ** 2, 0.0).sum() / (n - 1)).sqrt())


@dataclass(frozen=True)
class MiniLLM:
    """MiniLLM's settings (`distill.minillm`; LMOps defaults in brackets).

    ``teacher_mix``: alpha of teacher-mixed sampling, ``p_mix = alpha p_T + (1 - alpha) p_S``
    [0.2]; ``clip_ratio``: PPO's epsilon [0.2]; ``length_norm``: divide each reward-to-go by the
    number of tokens it sums [true]; ``whiten``: centre and scale the advantages over the batch
    [true]; ``single_step``: add the exact per-step reverse KL [true].
    """

    teacher_mix: float = 0.2
    clip_ratio: float = 0.2
    length_norm: bool = True
    whiten: bool = True
    single_step: bool = True


def minillm_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    settings: MiniLLM = MiniLLM(),
) -> tuple[Tensor, dict[str, float]]:
    """MiniLLM (Gu et al. 2024) as LMOps ``minillm/losses.py`` and ``sampler.py`` define it, for
    rollouts drawn from the teacher-mixed distribution, one update per rollout batch.

    Eq.: reward ``r_t = log p_T(y_t | s_t) - log p_S(y_t | s_t)``; reward-to-go
    ``R_t = sum_{i >= t} r_i``, divided by the tokens it sums ``n_t = L - t`` (``length_norm``),
    then whitened over the batch's valid tokens (``whiten``): ``A_t``. Importance weight of the
    mixed sampler ``w_t = p_S(y_t) / (alpha p_T(y_t) + (1 - alpha) p_S(y_t))`` (detached); PPO
    ratio ``r_t(theta) = exp(log p_S - log p_S_old) w_t`` (``p_S_old`` the rollout policy, equal
    to ``p_S`` in value here); ``L_pg = (1/N) sum_t max(-A_t r_t, -A_t clip(r_t, 1 - eps,
    1 + eps))``; single-step term ``L_reg = (1/N) sum_t KL(p_S(.|s_t) || p_T(.|s_t))`` exact over
    the vocabulary (``_reg_loss``: cross-entropy minus entropy); ``loss = L_pg + L_reg``.

    Differences from the reference: no pre-training (PT) loss (no pre-training corpus here);
    whitening over valid tokens only (the reference whitens the padded tensor); rewards are
    neither scaled nor clipped (the reference's ``reward_scaling`` / ``cliprange_reward``).

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V); tokens: (B, T) drawn
        from ``p_mix``; mask: (B, T) 0/1; settings: :class:`MiniLLM`.

    Returns:
        (loss, stats): stats ``reward_mean``, ``return_mean`` (of the reward-to-go),
        ``weight_mean``, ``clipped_share`` (tokens whose ratio lies outside the PPO band),
        ``pg_loss``, ``single_step`` (the reverse KL).
    """
    m = mask.bool()
    alpha = float(settings.teacher_mix)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"teacher_mix must lie in [0, 1), got {alpha!r}")
    logprobs = taken_log_probs(student_logits, tokens, mask)
    with torch.no_grad():
        rewards = reverse_kl_rewards(student_logits, teacher_logits, tokens, mask)
        returns = reward_to_go(rewards, mask)
        adv = returns
        if settings.length_norm:
            remaining = reward_to_go(m.float(), mask).clamp_min(1)
            adv = adv / remaining
        if settings.whiten:
            n = m.sum().clamp_min(1)
            mean = torch.where(m, adv, 0).sum() / n
            var = torch.where(m, (adv - mean) ** 2, 0).sum() / (n - 1).clamp_min(1)
            adv = (adv - mean) * torch.rsqrt(var + 1e-8)
        adv = torch.where(m, adv, 0)
        p_s = logprobs.detach().exp()
        p_t = teacher_logits.detach().float().log_softmax(-1)
        p_t = p_t.gather(-1, torch.where(m, tokens, 0).unsqueeze(-1)).squeeze(-1).exp()
        w = torch.where(m, p_s / (alpha * p_t + (1.0 - alpha) * p_s).clamp_min(1e-30), 0)
    ratio = (logprobs - logprobs.detach()).exp() * w
    eps = settings.clip_ratio
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps, 1.0 + eps))
    pg_loss = torch.where(m, surrogate, 0).sum() / m.sum().clamp_min(1)
    loss = pg_loss
    reg = reverse_kl(student_logits, teacher_logits.detach(), mask)
    if settings.single_step:
        loss = loss + reg
    outside = (w < 1.0 - eps) | (w > 1.0 + eps)
    stats = {
        "reward_mean": _masked_mean(rewards, m),
        "return_mean": _masked_mean(returns, m),
        "weight_mean": _masked_mean(w, m),
        "clipped_share": _masked_mean(outside.float(), m),
        "pg_loss": float(pg_loss.detach()),
        "single_step": float(reg.detach()),
    }
    return loss, stats


def fdistill_objective(
    name: Literal["js", "tvd"],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    student_rows: Tensor,
    *,
    beta: float = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """f-distill's JS or TVD (:func:`ketchup.math.divergences.fdistill_loss`) over a batch of
    student-sampled rows (``student_rows``) and the teacher's sequences for the same sources."""
    loss = fdistill_loss(name, student_logits, teacher_logits, mask, student_rows, beta=beta)
    return loss, {"divergence": float(loss.detach())}


def gkd_objective(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, beta: float = 0.5
) -> tuple[Tensor, dict[str, float]]:
    """GKD (Agarwal et al. 2024) in TRL's ``GKDTrainer.compute_loss``: the generalized JSD
    (:func:`ketchup.math.divergences.generalized_jsd`) at every position of the batch, token
    mean, at temperature 1 (TRL samples at its temperature but scores the loss at 1)."""
    loss = generalized_jsd(student_logits, teacher_logits, mask, beta=beta)
    return loss, {"divergence": float(loss.detach())}
