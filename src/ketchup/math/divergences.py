"""Token-level distillation objectives compared against KETCHUP, as functions of logits and masks.

Every loss takes ``student_logits`` (B, T, V) (with grad) and, where relevant, ``teacher_logits``
(B, T, V) (detached: the teacher is a constant), a ``mask`` (B, T) of 0/1 (bool, int or float;
need not be a prefix of ones) and a ``temperature`` tau > 0, and returns a 0-d float32 loss
averaged over the valid tokens, ``sum_t mask_t l_t / max(1, sum_t mask_t)``; an all-padding batch
gives 0, not NaN.

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

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ketchup.math.checks import check_ids, check_logits, check_mask, check_number, check_positive

__all__ = [
    "fdistill_loss",
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


def _student_log_probs(student_logits: Tensor, m: Tensor, tau: float) -> Tensor:
    """(B, T, V) float32 log-softmax of student logits / tau, logits zeroed at padding."""
    z = torch.where(m.unsqueeze(-1), student_logits.float(), 0.0)
    return torch.log_softmax(z / tau, dim=-1)


def _pair_log_probs(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a student/teacher pair; return (log p_S, log p_T, bool mask), (B, T, V) each."""
    check_logits(student_logits, "student_logits")
    check_logits(teacher_logits, "teacher_logits")
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher_logits must have the shape of student_logits "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    m = check_mask(mask, tuple(student_logits.shape[:2]))
    tau = check_positive(temperature, "temperature")
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


def _forward_kl_tokens(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    return _kl(log_pt, log_ps)


def _reverse_kl_tokens(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    return _kl(log_ps, log_pt)


def _jsd_tokens(log_ps: Tensor, log_pt: Tensor, beta: float) -> Tensor:
    """beta KL(p_T || M) + (1 - beta) KL(p_S || M), M = beta p_T + (1 - beta) p_S, 0 < beta < 1."""
    log_m = _log_mixture(log_pt, log_ps, beta)
    return beta * _kl(log_pt, log_m) + (1.0 - beta) * _kl(log_ps, log_m)


def _tvd_tokens(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)


def _pair_loss(
    per_token: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float,
) -> Tensor:
    """Validate a student/teacher pair; token mean of ``per_token(log p_S, log p_T)``.

    ``per_token`` maps the two (B, T, V) log-probabilities to the (B, T) divergence per position.
    """
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _token_mean(per_token(log_ps, log_pt), m)


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
    check_logits(student_logits, "student_logits")
    shape = tuple(student_logits.shape[:2])
    m = check_mask(mask, shape)
    y = check_ids(targets, shape, student_logits.shape[-1], m, "targets")
    log_ps = _student_log_probs(student_logits, m, 1.0)
    nll = -log_ps.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return _token_mean(nll, m)


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Word-level forward KL, the classic KD objective (the "KL" baseline and warm start).

    Eq.: ``L = (1/N) sum_t mask_t sum_a p_T(a|s_t) (log p_T(a|s_t) - log p_S(a|s_t))`` with
    ``p = softmax(logits / tau)``.

    Arguments and result as described in the module docstring.
    """
    return _pair_loss(_forward_kl_tokens, student_logits, teacher_logits, mask, temperature)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise reverse KL (exact over the vocabulary at each visited state).

    Eq. (MiniLLM, Gu et al. 2024; f-distill, Wen et al. 2023):
    ``L = (1/N) sum_t mask_t sum_a p_S(a|s_t) (log p_S(a|s_t) - log p_T(a|s_t))``.

    Arguments and result as described in the module docstring.
    """
    return _pair_loss(_reverse_kl_tokens, student_logits, teacher_logits, mask, temperature)


def js_divergence(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise Jensen-Shannon divergence (f-distill, Wen et al. 2023).

    Eq.: ``JS = 0.5 KL(p_T || m) + 0.5 KL(p_S || m)``, ``m = (p_T + p_S) / 2`` (log m by
    logsumexp); bounded by log 2 and symmetric.

    Arguments and result as described in the module docstring.
    """
    js = functools.partial(_jsd_tokens, beta=0.5)
    return _pair_loss(js, student_logits, teacher_logits, mask, temperature)


def total_variation(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Step-wise total variation distance (f-distill, Wen et al. 2023).

    Eq.: ``TVD = 0.5 sum_a |p_T(a|s_t) - p_S(a|s_t)|``, in [0, 1] and symmetric.

    Arguments and result as described in the module docstring.
    """
    return _pair_loss(_tvd_tokens, student_logits, teacher_logits, mask, temperature)


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
    beta = check_number(beta, "beta")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0.0, 1.0], got {beta!r}")
    if beta == 0.0:
        per_token = _forward_kl_tokens
    elif beta == 1.0:
        per_token = _reverse_kl_tokens
    else:
        per_token = functools.partial(_jsd_tokens, beta=beta)
    return _pair_loss(per_token, student_logits, teacher_logits, mask, temperature)


def fdistill_loss(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    student_rows: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """f-distill's JS and TVD (Wen et al. 2023; reference ``dart/kd.py`` ``_js_step``,
    ``_tvd_symm_step``): one step-wise divergence on student-sampled prefixes, one on the
    teacher's sequences, each a token mean over its own rows, weighted ``beta`` / ``1 - beta``.

    Eq. (js): ``beta * mean_{t in S} KL(p_S || M) + (1 - beta) * mean_{t in T} KL(p_T || M)``,
    ``M = beta p_S + (1 - beta) p_T``: the step-wise decomposition of the sequence-level JS, each
    KL under the sampler it takes its expectation over. (tvd):
    ``0.5 * mean_{t in S} TVD + 0.5 * mean_{t in T} TVD``: the reference's ``_tvd_symm_step``
    fixes the halves at 0.5 / 0.5, so ``beta`` (JS's alone) does not reach it. ``S`` are the rows
    flagged in ``student_rows``, ``T`` the others. The two halves weigh ``beta`` and ``1 - beta``
    (TVD: 0.5 each) whatever their token counts (the reference's
    ``KLDivLoss(reduction="batchmean")`` over each half's selected tokens); a half without a
    valid token contributes 0.

    Args:
        name: "js" or "tvd".
        student_logits: (B, T, V) with grad; teacher_logits: (B, T, V) (detached);
        mask: (B, T) 0/1; student_rows: (B,) bool, True for student-sampled rows;
        beta: in (0, 1); temperature: tau > 0.

    Returns:
        0-d float32 loss.
    """
    if name not in ("js", "tvd"):
        raise ValueError(f"name must be 'js' or 'tvd', got {name!r}")
    beta = check_number(beta, "beta")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must lie in (0.0, 1.0), got {beta!r}")
    log_ps, log_pt, m = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    if not isinstance(student_rows, Tensor) or tuple(student_rows.shape) != (m.shape[0],):
        raise ValueError(f"student_rows must be a (B,) = ({m.shape[0]},) tensor")
    on_student = m & student_rows.bool().to(m.device)[:, None]
    on_teacher = m & ~student_rows.bool().to(m.device)[:, None]
    if name == "tvd":
        per_token = _tvd_tokens(log_ps, log_pt)
        student_half, teacher_half = per_token, per_token
        beta = 0.5  # the reference's fixed halves
    else:
        log_mix = _log_mixture(log_ps, log_pt, beta)
        student_half, teacher_half = _kl(log_ps, log_mix), _kl(log_pt, log_mix)
    return beta * _token_mean(student_half, on_student) + (1.0 - beta) * _token_mean(
        teacher_half, on_teacher
    )


def reverse_kl_rewards(
    student_logits: Tensor,
    teacher_logits: Tensor,
    actions: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """MiniLLM per-token reward (Gu et al. 2024), detached.

    Eq.: ``r_t = log p_T(y_t | s_t) - log p_S(y_t | s_t)``; its reward-to-go
    (:func:`ketchup.math.returns.reward_to_go`) fed to
    :func:`ketchup.math.policy_gradient.policy_gradient_loss`
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
        a = check_ids(actions, shape, student_logits.shape[-1], m, "actions").unsqueeze(-1)
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
    check_logits(student_logits, "student_logits")
    m = check_mask(mask, tuple(student_logits.shape[:2]))
    log_ps = _student_log_probs(student_logits, m, 1.0)
    finite = torch.isfinite(log_ps)
    count = finite.sum(-1).clamp_min(1)
    ce = -torch.where(finite, log_ps, 0.0).sum(-1) / count
    return _token_mean(ce, m)
