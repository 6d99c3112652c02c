"""Induced rewards, K-step returns and the policy-gradient loss of KETCHUP.

Pure tensor math, vectorised over batch and time (no Python loop over time steps).

Notation (KETCHUP, Fan et al. 2025; LLMR, Li, Hao, Mou 2024): source ``x``, student rollout
``y = (y_0 .. y_{L-1})`` ending in EOS, state ``s_t = (x, y_<t)``, teacher logits ``f_T(a|s_t)``
from one teacher-forced pass over ``(prompt(x), y)``.

* Q-values (LLMR): ``q(s_t, a) = f_T(a|s_t) - mean_a f_T(a|s_t)``.
* State value: hard ``V(s) = max_a q(s, a)`` ("max", KETCHUP's default) or soft
  ``V(s) = sum_a softmax(q(s, .))_a q(s, a)`` ("soft"); ``V(s_L) = 0`` (after EOS is terminal).
* One-step reward (Bellman optimality, gamma = 1): ``r_t = q(s_t, y_t) - V(s_{t+1})``.
* K-step reward (KETCHUP): ``R^K_t = q(s_t, y_t) - V(s_{min(t+K, L)})``.
* K-step return (KETCHUP): ``G^K_t = sum_{j >= 0, t + jK < L} R^K_{t+jK}``; K = 1 is LLMR's
  reward-to-go, K >= L gives ``q(s_t, y_t)``.

Conventions shared by every function: ``B`` batch, ``T`` padded time, ``V`` vocabulary; ``mask``
is 1 for real tokens up to and including EOS and 0 for padding (bool, int or float 0/1); every
per-token output is float32 and exactly 0 at padding; nothing returned here (except the loss of
:func:`policy_gradient_loss`) carries gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ketchup.math.checks import (
    check_ids,
    check_logits,
    check_mask,
    check_shape,
)

__all__ = [
    "kstep_returns",
    "kstep_returns_from_values",
    "kstep_rewards",
    "kstep_rewards_from_values",
    "one_step_rewards",
    "q_values",
    "reward_to_go",
    "state_values",
    "taken_q_and_values",
]

ValueMode = Literal["max", "soft"]
_VALUE_MODES = ("max", "soft")
# How the last K-segment of each chain is treated: the paper's equations (V(s_L) = 0) or the
# released code's rule (see kstep_returns_from_values).
SequenceEnd = Literal["equations", "released"]
SEQUENCE_ENDS = ("equations", "released")


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------


def _check_2d(x: Tensor, name: str) -> tuple[int, ...]:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(x.shape)}")
    return tuple(x.shape)


def _check_k(k: int) -> int:
    # bool is an int subclass, but k=True is almost surely a bug.
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k}")
    return k


def _check_sequence_end(sequence_end: str) -> None:
    if sequence_end not in SEQUENCE_ENDS:
        raise ValueError(f"sequence_end must be one of {SEQUENCE_ENDS}, got {sequence_end!r}")


def _check_value(value: str) -> None:
    if value not in _VALUE_MODES:
        raise ValueError(f"value must be one of {_VALUE_MODES}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Q-values and state values
# --------------------------------------------------------------------------------------------


def _finite_mean(logits: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Mean over the finite vocabulary entries.

    (B, T, V) -> (mean (B, T) float32, count of finite entries (B, T), all entries finite).

    Masked vocabularies carry -inf logits; including them would make the mean -inf and every q
    NaN (-inf - -inf), so the centring uses the finite entries only. The sum accumulates in
    float32 without materialising a float32 copy of bf16/fp16 logits.
    """
    vocab = logits.shape[-1]
    total = logits.sum(-1, dtype=torch.float32)
    count = torch.full(total.shape, vocab, dtype=torch.long, device=logits.device)
    # A finite sum means every logit of that position is finite (a float32 sum of real logits
    # does not overflow), so the (B, T, V) isfinite/where temporaries are only built for the
    # positions that need them: no extra full-size memory in the usual unmasked case.
    bad = ~torch.isfinite(total)
    all_finite = not bool(bad.any())
    if not all_finite:
        sub = logits[bad]
        finite = torch.isfinite(sub)
        total[bad] = torch.where(finite, sub, 0).sum(-1, dtype=torch.float32)
        count[bad] = finite.sum(-1)
    # A position with no finite logit (count 0) gets mean 0 instead of 0/0.
    return total / count.clamp_min(1), count, all_finite


def q_values(teacher_logits: Tensor) -> Tensor:
    """Teacher Q-values: logits centred by their mean over the vocabulary.

    Eq. (LLMR, Li, Hao, Mou 2024; KETCHUP, Fan et al. 2025):
    ``q(s_t, a) = f_T(a | s_t) - (1/|A_t|) sum_{a' in A_t} f_T(a' | s_t)`` with ``A_t`` the
    tokens whose logit is finite.

    Args:
        teacher_logits: (B, T, V) raw teacher logits, any float dtype; -inf marks masked tokens.

    Returns:
        (B, T, V) float32 q; -inf entries stay -inf, never NaN.
    """
    check_logits(teacher_logits, "teacher_logits")
    logits = teacher_logits.detach()
    mean, _, _ = _finite_mean(logits)
    return logits.float() - mean.unsqueeze(-1)


def state_values(q: Tensor, value: ValueMode = "max") -> Tensor:
    """State values ``V(s_t)`` from Q-values.

    Eq. (KETCHUP, Fan et al. 2025; LLMR): hard ``V(s) = max_a q(s, a)`` (``value="max"``) or
    soft ``V(s) = sum_a softmax(q(s, .))_a q(s, a)`` (``value="soft"``).

    Args:
        q: (B, T, V) Q-values (e.g. from :func:`q_values`); may contain -inf.
        value: "max" or "soft".

    Returns:
        (B, T) float32 values. A position with no finite q (every token masked) gets 0: it has
        no action to value, and 0 keeps the returns finite.
    """
    check_logits(q, "q")
    _check_value(value)
    q = q.detach().float()
    finite = torch.isfinite(q)
    has_action = finite.any(-1)
    if value == "max":
        v = q.amax(-1)
    else:
        p = torch.softmax(q, dim=-1)
        # p = 0 where q = -inf; zero q there first so 0 * -inf does not make NaN.
        v = (p * torch.where(finite, q, 0)).sum(-1)
    return torch.where(has_action, v, 0)


def taken_q_and_values(
    teacher_logits: Tensor, actions: Tensor, mask: Tensor, value: ValueMode = "max"
) -> tuple[Tensor, Tensor]:
    """Q-value of the taken token and the state value at every position.

    Eq. (LLMR / KETCHUP): ``q_taken_t = q(s_t, y_t)`` and ``values_t = V(s_t)`` (see
    :func:`q_values`, :func:`state_values`). This is the only pass over the vocabulary; the
    returns for any number of K can then be computed from its output with
    :func:`kstep_returns_from_values`.

    The (B, T, V) q tensor is never built for ``value="max"``: since the mean is a per-position
    constant, ``max_a q = max_a f_T - mean`` and ``q(s, y) = f_T(y|s) - mean``.
    For ``value="soft"``, softmax is shift invariant and sums to 1, so
    ``sum_a softmax(q)_a q_a = sum_a softmax(f_T)_a f_T(a) - mean``.

    Args:
        teacher_logits: (B, T, V) teacher logits; position t scores ``y_t`` given ``y_<t``.
        actions: (B, T) integer tokens ``y_t``; ids at padding are ignored (may be -100).
        mask: (B, T) 0/1 mask, a prefix of ones per row.
        value: "max" or "soft".

    Returns:
        ``(q_taken, values)``, both (B, T) float32 and 0 at padding. ``q_taken`` is -inf where the
        teacher gave the taken token a -inf logit (an action the teacher forbids).
    """
    m, a = _check_rollout(teacher_logits, actions, mask, value)
    return _taken_q_and_values(teacher_logits, a, m, value)


def _check_rollout(
    teacher_logits: Tensor, actions: Tensor, mask: Tensor, value: str
) -> tuple[Tensor, Tensor]:
    """Validate a (teacher_logits, actions, mask, value) quadruple; return (bool mask, ids)."""
    check_logits(teacher_logits, "teacher_logits")
    shape = tuple(teacher_logits.shape[:2])
    m = check_mask(mask, shape, prefix=True)
    a = check_ids(actions, shape, teacher_logits.shape[-1], m, "actions")
    _check_value(value)
    return m, a


def _taken_q_and_values(
    teacher_logits: Tensor, a: Tensor, m: Tensor, value: str
) -> tuple[Tensor, Tensor]:
    """Unchecked body of :func:`taken_q_and_values`; ``a`` safe ids, ``m`` bool mask."""
    logits = teacher_logits.detach()
    mean, count, all_finite = _finite_mean(logits)
    q_taken = logits.gather(-1, a.unsqueeze(-1)).squeeze(-1).float() - mean
    if value == "max":
        v = logits.amax(-1).float() - mean
    else:
        x = logits.float()
        p = torch.softmax(x, dim=-1)
        if not all_finite:
            # Zero the -inf logits first: their probability is 0 and 0 * -inf would be NaN.
            x = torch.where(torch.isfinite(x), x, 0)
        # In place: p is a fresh temporary outside autograd; saves one (B, T, V) buffer.
        v = p.mul_(x).sum(-1) - mean
    # Every token masked: no action to value; 0 keeps the returns finite (see state_values).
    v = torch.where(count > 0, v, 0)
    # where (not multiply) so NaN/inf garbage at padding cannot leak through 0 * inf.
    return torch.where(m, q_taken, 0), torch.where(m, v, 0)


# --------------------------------------------------------------------------------------------
# Rewards and returns
# --------------------------------------------------------------------------------------------


def _reverse_cumsum(x: Tensor, dim: int) -> Tensor:
    # flip/cumsum/flip rather than total - cumsum: no catastrophic cancellation.
    return x.flip(dim).cumsum(dim).flip(dim)


def _kstep_rewards_from_values(
    q_taken: Tensor, values: Tensor, m: Tensor, k: int, cut_values: Tensor | None = None
) -> Tensor:
    """(B, T) R^K_t = q_taken_t - V(s_{min(t+K, L)}), V(s_L) = ``cut_values`` (B,) or 0.

    ``values`` are extended by one position that holds each row's V(s_L) at index L (0 for a
    row that ends in EOS, the teacher's value of the state after its last token for a row cut by
    the length cap), then read at min(t + K, L).
    """
    b, t = m.shape
    ext = torch.zeros(b, t + 1, device=values.device, dtype=torch.float32)
    ext[:, :t] = torch.where(m, values, 0)
    length = m.sum(1, keepdim=True)  # (B, 1): L
    if cut_values is not None:
        ext.scatter_(1, length, cut_values.detach().float()[:, None])
    steps = torch.arange(t, device=m.device).unsqueeze(0)
    v_next = ext.gather(1, torch.minimum(steps + k, length))
    return torch.where(m, q_taken - v_next, 0)


def _kstep_returns_from_rewards(rewards: Tensor, k: int) -> Tensor:
    """(B, T) G^K_t = sum_{j >= 0} R^K_{t + jK}, rewards already 0 at padding.

    Positions t and t + jK share the residue t mod K, so after padding T to a multiple of K and
    viewing time as (T/K, K) the sum is a reversed cumulative sum over the first of the two axes.
    """
    b, t = rewards.shape
    # K >= T gives one group per residue, the same as K = T; capping avoids huge zero padding.
    k = min(k, max(t, 1))
    groups = -(-t // k)
    r = torch.nn.functional.pad(rewards, (0, groups * k - t))
    g = _reverse_cumsum(r.view(b, groups, k), dim=1)
    return g.reshape(b, groups * k)[:, :t]


def kstep_rewards(
    teacher_logits: Tensor, actions: Tensor, mask: Tensor, k: int, value: ValueMode = "max"
) -> Tensor:
    """K-step induced rewards.

    Eq. (KETCHUP, Fan et al. 2025): ``R^K_t = q(s_t, y_t) - V(s_{min(t+K, L)})``, ``V(s_L) = 0``.

    Args:
        teacher_logits: (B, T, V) teacher logits; position t scores ``y_t`` given ``y_<t``.
        actions: (B, T) integer tokens ``y_t``.
        mask: (B, T) 0/1 mask, a prefix of ones per row (row length L = mask.sum(1)).
        k: step size K >= 1.
        value: "max" or "soft".

    Returns:
        (B, T) float32 ``R^K``, 0 at padding, no gradient.
    """
    k = _check_k(k)
    m, a = _check_rollout(teacher_logits, actions, mask, value)
    q_taken, values = _taken_q_and_values(teacher_logits, a, m, value)
    return _kstep_rewards_from_values(q_taken, values, m, k)


def one_step_rewards(
    teacher_logits: Tensor, actions: Tensor, mask: Tensor, value: ValueMode = "max"
) -> Tensor:
    """One-step rewards induced by the teacher through the Bellman optimality equation.

    Eq. (LLMR, Li, Hao, Mou 2024, gamma = 1): ``r_t = q(s_t, y_t) - V(s_{t+1})``, ``V(s_L) = 0``.
    Same as :func:`kstep_rewards` with K = 1.

    Args:
        teacher_logits: (B, T, V); actions: (B, T) int; mask: (B, T) prefix 0/1 mask;
        value: "max" or "soft".

    Returns:
        (B, T) float32 ``r``, 0 at padding, no gradient.
    """
    return kstep_rewards(teacher_logits, actions, mask, 1, value)


def kstep_rewards_from_values(q_taken: Tensor, values: Tensor, mask: Tensor, k: int) -> Tensor:
    """K-step rewards from precomputed ``(q_taken, values)`` (see :func:`taken_q_and_values`).

    Eq.: ``R^K_t = q_taken_t - V(s_{min(t+K, L)})``, ``V(s_L) = 0``; K = 1 gives LLMR's one-step
    reward, what each token earns (logged by the trainer whatever K it optimises).

    Returns:
        (B, T) float32 ``R^K``, 0 at padding, no gradient.
    """
    k = _check_k(k)
    shape = _check_2d(q_taken, "q_taken")
    check_shape(values, shape, "values")
    m = check_mask(mask, shape, prefix=True)
    q_taken = torch.where(m, q_taken.detach().float(), 0)
    return _kstep_rewards_from_values(q_taken, values.detach().float(), m, k)


def kstep_returns_from_values(
    q_taken: Tensor,
    values: Tensor,
    mask: Tensor,
    k: int,
    sequence_end: SequenceEnd = "equations",
    cut_values: Tensor | None = None,
) -> Tensor:
    """K-step returns from precomputed ``(q_taken, values)`` (see :func:`taken_q_and_values`).

    ``sequence_end="equations"`` (Eq. of KETCHUP, Fan et al. 2025, with ``V(s_L) = 0``):
    ``G^K_t = sum_{j >= 0, t + jK < L} R^K_{t+jK}``, ``R^K_t = q_t - V(s_{min(t+K, L)})``, so the
    last K-segment of every chain gets ``R = q_t``.

    ``cut_values`` (B,), equations only: V(s_L) of rows that the length cap cut before EOS (0 for
    rows that end in EOS), so that a cut is not taken for the end of the sequence: the K-step
    returns of its last segment bootstrap from the teacher's value of the state after the last
    kept token, as every other K-step reward bootstraps from V(s_{t+K}) (Sutton & Barto 2018,
    Sec. 7.1, n-step returns truncated by a time limit: Pardo et al. 2018, "Time Limits in
    Reinforcement Learning").

    ``sequence_end="released"`` (the released KETCHUP code, jiabinfan/KETCHUP ``reward_fn`` and
    ``utils/helper.py:n_step_reward_shift_upgrade``, read per row): for ``t < L - 1``
    ``R_t = q_t - V(s_{min(t+K, L-1)})``, the EOS step keeps ``R_{L-1} = q_{L-1}``, and that EOS
    reward is added to every residue chain:
    ``G_t = sum_{j >= 0, t + jK <= L - 2} R_{t+jK} + q_{L-1}`` (``G_{L-1} = q_{L-1}``). So the
    teacher's "stop here?" signal ``q(s_{L-1}, EOS) - V(s_{L-1})`` reaches all K chains, not only
    the one through ``L - 1``. Two departures from that code, both on purpose: each row uses its
    own length (the code reads the padded width, so in a batch short rows would read the teacher at
    pad positions), and ``K >= L`` gives ``V(s_{L-1})`` (the code's ``torch.roll`` wraps around to
    the start of the sequence there). K = 1 is the same in both conventions.

    Args:
        q_taken: (B, T) ``q(s_t, y_t)``.
        values: (B, T) ``V(s_t)``; entries at padding are ignored.
        mask: (B, T) 0/1 mask, a prefix of ones per row.
        k: step size K >= 1.
        sequence_end: "equations" or "released".
        cut_values: optional (B,) V(s_L), with "equations" only.

    Returns:
        (B, T) float32 ``G^K``, 0 at padding, no gradient.
    """
    k = _check_k(k)
    _check_sequence_end(sequence_end)
    shape = _check_2d(q_taken, "q_taken")
    check_shape(values, shape, "values")
    m = check_mask(mask, shape, prefix=True)
    if cut_values is not None:
        if sequence_end != "equations":
            raise ValueError(
                "cut_values: the released sequence end takes a cut row's last token as its EOS, "
                "as the released code does; bootstrapping at the cut needs sequence_end equations"
            )
        check_shape(cut_values, shape[:1], "cut_values")
    q_taken = torch.where(m, q_taken.detach().float(), 0)
    return _kstep_returns(q_taken, values.detach().float(), m, k, sequence_end, cut_values)


def _kstep_returns(
    q_taken: Tensor,
    values: Tensor,
    m: Tensor,
    k: int,
    sequence_end: str,
    cut_values: Tensor | None = None,
) -> Tensor:
    """Unchecked body of :func:`kstep_returns_from_values`; ``q_taken`` 0 at padding."""
    if sequence_end == "equations":
        rewards = _kstep_rewards_from_values(q_taken, values, m, k, cut_values)
        return torch.where(m, _kstep_returns_from_rewards(rewards, k), 0)
    # released: index of each row's EOS step, L - 1 (0 for empty rows, which stay all zero)
    last = (m.sum(1, keepdim=True) - 1).clamp_min(0)  # (B, 1)
    t = torch.arange(m.shape[1], device=m.device).unsqueeze(0)  # (1, T)
    v_next = values.gather(1, torch.minimum(t + k, last).clamp_max(m.shape[1] - 1))
    before_eos = m & (t < last)
    rewards = torch.where(before_eos, q_taken - v_next, 0)  # R_{L-1} left out: added below
    q_eos = q_taken.gather(1, last)  # (B, 1) q(s_{L-1}, EOS), 0 for empty rows
    return torch.where(m, _kstep_returns_from_rewards(rewards, k) + q_eos, 0)


def kstep_returns(
    teacher_logits: Tensor,
    actions: Tensor,
    mask: Tensor,
    k: int,
    value: ValueMode = "max",
    sequence_end: SequenceEnd = "equations",
) -> Tensor:
    """K-step returns, KETCHUP's policy-gradient signal.

    Eq. (KETCHUP, Fan et al. 2025): ``G^K_t = sum_{j >= 0, t + jK < L} R^K_{t+jK}`` with
    ``R^K_t = q(s_t, y_t) - V(s_{min(t+K, L)})``, ``V(s_L) = 0``. K = 1 is LLMR's reward-to-go
    ``sum_{i >= t} r_i``; K >= L gives ``q(s_t, y_t)``. ``sequence_end="released"`` gives the
    released code's treatment of the sequence end instead (see :func:`kstep_returns_from_values`).

    Args:
        teacher_logits: (B, T, V) raw teacher logits (any float dtype, upcast to float32) where
            position t scores token ``y_t`` given the prefix ``y_<t``.
        actions: (B, T) integer tokens ``y_t``; ids at padding are ignored.
        mask: (B, T) 1 for real tokens up to and including EOS, 0 for padding (bool, int or
            float); a prefix of ones per row, any mix of lengths including 0 and 1.
        k: step size K >= 1.
        value: "max" (hard, KETCHUP's default) or "soft".
        sequence_end: "equations" (default) or "released".

    Returns:
        (B, T) float32 ``G^K``, 0 at padding, no gradient. -inf where a taken token has a -inf
        teacher logit at or after t in its residue class (the teacher forbids that action).
    """
    k = _check_k(k)
    _check_sequence_end(sequence_end)
    m, a = _check_rollout(teacher_logits, actions, mask, value)
    q_taken, values = _taken_q_and_values(teacher_logits, a, m, value)
    return _kstep_returns(q_taken, values, m, k, sequence_end)


def reward_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """Undiscounted reward-to-go.

    Eq. (LLMR; MiniLLM, Gu et al. 2024, gamma = 1): ``G_t = sum_{i >= t, mask_i = 1} r_i``.

    Args:
        rewards: (B, T) per-token rewards.
        mask: (B, T) 0/1 mask (need not be a prefix; padding rewards are ignored).

    Returns:
        (B, T) float32, 0 at padding, no gradient.
    """
    m = check_mask(mask, _check_2d(rewards, "rewards"))
    r = torch.where(m, rewards.detach().float(), 0)
    return torch.where(m, _reverse_cumsum(r, dim=1), 0)
