"""Token-level distillation objectives compared against KETCHUP, as functions of logits and masks.

Every loss takes ``student_logits`` (B, T, V) (with grad) and, where relevant, ``teacher_logits``
(B, T, V) (detached: the teacher is a constant) and a ``mask`` (B, T) of 0/1 (bool, int or float;
need not be a prefix of ones), and returns a 0-d float32 loss averaged over the valid tokens,
``sum_t mask_t l_t / max(1, sum_t mask_t)``; an all-padding batch gives 0, not NaN.

Numerics shared by all of them:

* Logits are upcast to float32 and divided by the temperature ``tau`` where the method has one
  (no ``tau^2`` rescaling; multiply the loss yourself if you want Hinton-style scaling).
* Logits at padding are replaced by zeros before any arithmetic, so garbage there (inf, NaN)
  reaches neither the loss nor the gradient.
* -inf logits (masked vocabularies) are safe: terms with zero probability contribute 0 by the
  ``0 log 0 = 0`` convention instead of ``0 * -inf = NaN``. A divergence is +inf only where it
  truly is (the first distribution puts mass where the second has none).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "forward_kl",
    "generalized_jsd",
    "js_divergence",
    "reverse_kl",
    "reverse_kl_rewards",
    "sequence_cross_entropy",
    "total_variation",
    "uniform_cross_entropy",
]


# --------------------------------------------------------------------------------------------
# Argument checking and shared numerics
# --------------------------------------------------------------------------------------------


def _check_logits(logits: Tensor, name: str) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape (B, T, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty vocabulary dimension")


def _check_shape(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def _mask_bool(mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    _check_shape(mask, shape, "mask")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must contain only 0 and 1")
    return mask != 0


def _check_ids(ids: Tensor, shape: tuple[int, ...], vocab: int, m: Tensor, name: str) -> Tensor:
    """Validate token ids; return int64 ids with padding replaced by 0 (safe to gather).

    Padding often holds -100 or an out-of-vocabulary pad id; those positions are ignored.
    """
    _check_shape(ids, shape, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
    safe = torch.where(m, ids.long(), 0)
    if safe.numel() and bool(((safe < 0) | (safe >= vocab)).any()):
        raise ValueError(f"{name} at valid positions must lie in [0, {vocab})")
    return safe


def _check_number(x: float, name: str, *, low: float, high: float, open_low: bool) -> float:
    if isinstance(x, Tensor) and x.numel() == 1:
        x = float(x.item())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} must be a number, got {x!r}")
    x = float(x)
    low_ok = x > low if open_low else x >= low
    if not (math.isfinite(x) and low_ok and x <= high):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {x!r}")
    return x


def _check_temperature(temperature: float) -> float:
    return _check_number(temperature, "temperature", low=0.0, high=math.inf, open_low=True)


def _student_log_probs(student_logits: Tensor, m: Tensor, tau: float) -> Tensor:
    """(B, T, V) float32 log-softmax of student logits / tau, logits zeroed at padding."""
    z = torch.where(m.unsqueeze(-1), student_logits.float(), 0.0)
    return torch.log_softmax(z / tau, dim=-1)


def _pair_log_probs(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a student/teacher pair; return (log p_S, log p_T, bool mask), (B, T, V) each."""
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher_logits must have the shape of student_logits "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    m = _mask_bool(mask, tuple(student_logits.shape[:2]))
    tau = _check_temperature(temperature)
    log_ps = _student_log_probs(student_logits, m, tau)
    log_pt = _student_log_probs(teacher_logits.detach(), m, tau)
    return log_ps, log_pt, m


def _token_mean(per_token: Tensor, m: Tensor) -> Tensor:
    """(B, T) -> 0-d mean over valid tokens; an all-padding batch gives 0."""
    return torch.where(m, per_token, 0.0).sum() / m.sum().clamp_min(1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """(B, T, V) log-probs -> (B, T) KL(p || q) = sum_a p_a (log p_a - log q_a).

    ``0 log 0 = 0``: the difference is zeroed wherever p_a = 0 before multiplying, which also
    covers p_a underflowing to 0 while log q_a = -inf (0 * inf = NaN otherwise) and keeps the
    backward pass free of -inf - -inf.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, 0.0)
    return (p * diff).sum(-1)


def _log_mixture(log_p: Tensor, log_q: Tensor, w_p: float) -> Tensor:
    """(B, T, V) log(w_p p + (1 - w_p) q) by logsumexp, for 0 < w_p < 1.

    logsumexp has a NaN gradient where all inputs are -inf (exp(-inf - -inf)), even when the
    upstream gradient is 0, so those entries are computed from zeros and set to -inf after.
    """
    both_inf = (log_p == -math.inf) & (log_q == -math.inf)
    a = torch.where(both_inf, 0.0, log_p) + math.log(w_p)
    b = torch.where(both_inf, 0.0, log_q) + math.log1p(-w_p)
    return torch.where(both_inf, -math.inf, torch.logaddexp(a, b))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def sequence_cross_entropy(student_logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Token-level cross-entropy on fixed target sequences (SeqKD on teacher outputs; SFT).

    Eq.: ``L = -(1/N) sum_t mask_t log p_S(y*_t | s_t)``.

    Args:
        student_logits: (B, T, V) student logits; position t scores ``targets[:, t]``.
        targets: (B, T) integer target ids (padding ids such as -100 are ignored).
        mask: (B, T) 0/1 mask.

    Returns:
        0-d float32 loss (equal to ``F.cross_entropy`` with the padding ignored).
    """
    _check_logits(student_logits, "student_logits")
    shape = tuple(student_logits.shape[:2])
    m = _mask_bool(mask, shape)
    y = _check_ids(targets, shape, student_logits.shape[-1], m, "targets")
    log_ps = _student_log_probs(student_logits, m, 1.0)
    nll = -log_ps.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return _token_mean(nll, m)


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Word-level forward KL, the classic KD objective (the "KL" baseline and warm start).

    Eq.: ``L = (1/N) sum_t mask_t sum_a p_T(a|s_t) (log p_T(a|s_t) - log p_S(a|s_t))`` with
    ``p = softmax(logits / tau)``.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _token_mean(_kl(log_pt, log_ps), m)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise reverse KL (exact over the vocabulary at each visited state).

    Eq. (MiniLLM, Gu et al. 2024; f-distill, Wen et al. 2023):
    ``L = (1/N) sum_t mask_t sum_a p_S(a|s_t) (log p_S(a|s_t) - log p_T(a|s_t))``.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _token_mean(_kl(log_ps, log_pt), m)


def js_divergence(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise Jensen-Shannon divergence (f-distill, Wen et al. 2023).

    Eq.: ``JS = 0.5 KL(p_T || m) + 0.5 KL(p_S || m)``, ``m = (p_T + p_S) / 2`` (log m by
    logsumexp); bounded by log 2 and symmetric.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    log_m = _log_mixture(log_pt, log_ps, 0.5)
    return _token_mean(0.5 * _kl(log_pt, log_m) + 0.5 * _kl(log_ps, log_m), m)


def total_variation(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise total variation distance (f-distill, Wen et al. 2023).

    Eq.: ``TVD = 0.5 sum_a |p_T(a|s_t) - p_S(a|s_t)|``, in [0, 1] and symmetric.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    tvd = 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    return _token_mean(tvd, m)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Generalized JSD of GKD (Agarwal et al. 2024), in TRL's ``GKDTrainer`` convention.

    Eq.: ``M = beta p_T + (1 - beta) p_S``,
    ``JSD(beta) = beta KL(p_T || M) + (1 - beta) KL(p_S || M)`` (log M by logsumexp).
    As in TRL's ``generalized_jsd_loss``, ``beta = 0`` is special-cased to the forward KL
    ``KL(p_T || p_S)`` and ``beta = 1`` to the reverse KL ``KL(p_S || p_T)``: the formula itself
    tends to 0 at both ends, so the loss is discontinuous there by design. ``beta = 0.5`` is
    :func:`js_divergence`.

    Args:
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; beta: in [0, 1]; temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    beta = _check_number(beta, "beta", low=0.0, high=1.0, open_low=False)
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    if beta == 0.0:
        per_token = _kl(log_pt, log_ps)
    elif beta == 1.0:
        per_token = _kl(log_ps, log_pt)
    else:
        log_m = _log_mixture(log_pt, log_ps, beta)
        per_token = beta * _kl(log_pt, log_m) + (1.0 - beta) * _kl(log_ps, log_m)
    return _token_mean(per_token, m)


def reverse_kl_rewards(
    student_logits: Tensor,
    teacher_logits: Tensor,
    actions: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """MiniLLM per-token reward (Gu et al. 2024), detached.

    Eq.: ``r_t = log p_T(y_t | s_t) - log p_S(y_t | s_t)``; its reward-to-go
    (:func:`ketchup.rewards.reward_to_go`) fed to :func:`ketchup.rewards.policy_gradient_loss`
    is the sequence-level reverse-KL policy gradient.

    Args:
        student_logits: (B, T, V); teacher_logits: (B, T, V); actions: (B, T) integer sampled
        tokens ``y_t`` (ignored at padding); mask: (B, T) 0/1; temperature: tau > 0.

    Returns:
        (B, T) float32 rewards, 0 at padding, no gradient.
    """
    with torch.no_grad():
        log_ps, log_pt, m = _pair_log_probs(
            student_logits.detach(), teacher_logits, mask, temperature
        )
        shape = tuple(m.shape)
        a = _check_ids(actions, shape, student_logits.shape[-1], m, "actions").unsqueeze(-1)
        lt = log_pt.gather(-1, a).squeeze(-1)
        ls = log_ps.gather(-1, a).squeeze(-1)
        # Equal log-probs give 0, including a token both models forbid (-inf - -inf = NaN).
        r = torch.where(lt == ls, 0.0, lt - ls)
        return torch.where(m, r, 0.0)


def uniform_cross_entropy(student_logits: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy from the uniform distribution to the student (LLMR's regulariser).

    Eq. (LLMR, Li, Hao, Mou 2024): ``H(U, p_S) = -(1/|A_t|) sum_{a in A_t} log p_S(a | s_t)``,
    mean over valid tokens, with ``A_t`` the tokens whose logit is finite: the uniform is over
    the tokens the student can emit, since a -inf logit would make the loss +inf.

    Args:
        student_logits: (B, T, V) with grad; mask: (B, T) 0/1.

    Returns:
        0-d float32 loss (>= log |A_t|, equality iff p_S is uniform on A_t).
    """
    _check_logits(student_logits, "student_logits")
    m = _mask_bool(mask, tuple(student_logits.shape[:2]))
    log_ps = _student_log_probs(student_logits, m, 1.0)
    finite = torch.isfinite(log_ps)
    count = finite.sum(-1).clamp_min(1)
    ce = -torch.where(finite, log_ps, 0.0).sum(-1) / count
    return _token_mean(ce, m)
