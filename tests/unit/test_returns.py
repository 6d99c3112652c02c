"""Tests for ketchup.math.returns: K-step returns against brute-force references of both
sequence-end conventions (the paper's equations, the released code's rule), hand-computed cases,
edge cases and argument checking."""

from __future__ import annotations

import math

import pytest
import torch

from ketchup.math.returns import (
    kstep_returns,
    kstep_returns_from_values,
    kstep_rewards,
    one_step_rewards,
    q_values,
    reward_to_go,
    state_values,
    taken_q_and_values,
)

F32 = {"rtol": 1.3e-6, "atol": 1e-5}
NEG_INF = -math.inf


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------
# Brute-force reference, written straight from the equations with Python loops and floats.
# --------------------------------------------------------------------------------------------


def _ref_q(row: list[float]) -> list[float]:
    finite = [x for x in row if math.isfinite(x)]
    mean = sum(finite) / len(finite)
    return [x - mean for x in row]


def _ref_value(q: list[float], value: str) -> float:
    if value == "max":
        return max(q)
    top = max(q)
    w = [math.exp(x - top) if math.isfinite(x) else 0.0 for x in q]
    z = sum(w)
    return sum(wi / z * x for wi, x in zip(w, q, strict=True) if wi > 0)


def reference_returns(logits, actions, mask, k: int, value: str, cut=None) -> torch.Tensor:
    """G^K_t = sum_{j>=0, t+jK<L} [q(s_{t+jK}, y_{t+jK}) - V(s_{min(t+jK+K, L)})], V(s_L) = 0,
    or `cut[b]` for a row cut by the length cap."""
    lg = logits.double().tolist()
    b_size, t_size = len(lg), len(lg[0])
    out = torch.zeros(b_size, t_size, dtype=torch.float64)
    for b in range(b_size):
        length = int(mask[b].sum())
        qs = [_ref_q(lg[b][t]) for t in range(length)]

        v_end = 0.0 if cut is None else float(cut[b])

        def v(t: int, qs=qs, length=length, v_end=v_end) -> float:
            return v_end if t >= length else _ref_value(qs[t], value)

        rk = [qs[t][int(actions[b, t])] - v(min(t + k, length)) for t in range(length)]
        for t in range(length):
            total = 0.0
            j = 0
            while t + j * k < length:
                total += rk[t + j * k]
                j += 1
            out[b, t] = total
    return out


def random_batch(seed: int, b: int = 4, t: int = 9, v: int = 11, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * scale
    actions = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t  # always one full row
    if b > 1:
        lengths[1] = 1  # and one length-1 row
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return logits, actions, mask


# --------------------------------------------------------------------------------------------
# Reference agreement
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["max", "soft"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 100])
def test_matches_brute_force_reference(k: int, value: str) -> None:
    for seed in range(30):
        logits, actions, mask = random_batch(seed)
        got = kstep_returns(logits, actions, mask, k, value=value)
        want = reference_returns(logits, actions, mask, k, value)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), **F32)


@pytest.mark.parametrize("k", [1, 2, 3, 100])
def test_a_cut_row_bootstraps_from_the_value_after_its_last_token(k: int) -> None:
    """Rows cut by the length cap: V(s_L) is the given value, not 0 (equations end), against the
    brute-force loop; a row with value 0 is one that ended in EOS; the released end refuses."""
    for seed in range(10):
        logits, actions, mask = random_batch(seed)
        cut = torch.randn(mask.shape[0], generator=torch.Generator().manual_seed(seed))
        cut[-1] = 0.0  # ended in EOS
        q, values = taken_q_and_values(logits, actions, mask, "max")
        got = kstep_returns_from_values(q, values, mask, k, cut_values=cut)
        want = reference_returns(logits, actions, mask, k, "max", cut=cut)
        torch.testing.assert_close(got, want.float(), **F32)
        ended = kstep_returns_from_values(q, values, mask, k)
        torch.testing.assert_close(got[-1], ended[-1])
    with pytest.raises(ValueError, match="released sequence end"):
        kstep_returns_from_values(q, values, mask, 2, "released", cut_values=cut)


@pytest.mark.parametrize("value", ["max", "soft"])
def test_reference_with_masked_vocabulary(value: str) -> None:
    for seed in range(5):
        logits, actions, mask = random_batch(seed)
        # Forbid the last 3 tokens (everywhere, or only in some rows so that masked and
        # unmasked positions mix); rollouts never take them.
        rows = slice(None) if seed % 2 else slice(0, 2)
        logits[rows, :, -3:] = NEG_INF
        actions = actions % (logits.shape[-1] - 3)
        for k in (1, 3):
            got = kstep_returns(logits, actions, mask, k, value=value)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(
                got, reference_returns(logits, actions, mask, k, value).float(), **F32
            )


# --------------------------------------------------------------------------------------------
# The released code's sequence end, against a transcription of that code
# --------------------------------------------------------------------------------------------


def released_code_row(logits: torch.Tensor, actions: list[int], k: int, value: str) -> list:
    """One row (batch 1, length L, the last token EOS) through the released KETCHUP code, in
    float64 and Python loops: `reward_fn` in reinforce.py (V read from torch.roll(logits, -K),
    zeroed at the EOS position) and `n_step_reward_shift_upgrade` in utils/helper.py."""
    n = len(actions)
    c = [_ref_q(logits[t]) for t in range(n)]  # logits centred by their mean
    selection_value = [c[t][actions[t]] for t in range(n)]
    next_state_value = [_ref_value(c[(t + k) % n], value) for t in range(n)]  # the roll
    next_state_value[n - 1] = 0.0  # masked where the token is EOS
    reward = [selection_value[t] - next_state_value[t] for t in range(n)]
    for t in range(n):
        if t + k >= n - 1 and t != n - 1 and k < n:
            reward[t] = selection_value[t] - next_state_value[-((1 + k) % n)]
    returns = [0.0] * n
    for start in range(k):
        chain = [
            reward[t] if (t % k == start % k and t >= start) or t == n - 1 else 0.0
            for t in range(n)
        ]
        for t in range(start, n, k):
            returns[t] = sum(chain[t:])
    return returns


def released_rule_returns(logits, actions, mask, k: int, value: str) -> torch.Tensor:
    """The released code applied to each row at its own length (the batch-1 case it runs)."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    lg = logits.double().tolist()
    for b in range(mask.shape[0]):
        length = int(mask[b].sum())
        if length:
            row = released_code_row(lg[b][:length], actions[b, :length].tolist(), k, value)
            out[b, :length] = torch.tensor(row, dtype=torch.float64)
    return out


@pytest.mark.parametrize("value", ["max", "soft"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_released_end_matches_the_released_code_per_row(k: int, value: str) -> None:
    for seed in range(20):
        # rows of different lengths in one batch (random_batch mixes 0, 1 and full lengths)
        logits, actions, mask = random_batch(seed, b=5, t=11)
        got = kstep_returns(logits, actions, mask, k, value=value, sequence_end="released")
        # the code's K < L branch is the rule; rows with L <= K wrap around there (below)
        long_rows = mask.sum(1) > k
        want = released_rule_returns(logits, actions, mask, k, value).float()
        torch.testing.assert_close(got[long_rows], want[long_rows], **F32)
        assert (got[~mask.bool()] == 0).all()


def test_released_end_without_the_wrap_around_for_k_at_least_length() -> None:
    """K >= L: R_t = q_t - V(s_{L-1}) before EOS plus the EOS reward; the released code's
    torch.roll reads V from the start of the sequence instead (a bug, not copied)."""
    logits, actions, mask = random_batch(3, b=1, t=6)
    mask = torch.ones(1, 6)
    q, values = taken_q_and_values(logits, actions, mask)
    for k in (6, 9):
        got = kstep_returns(logits, actions, mask, k, sequence_end="released")
        want = q - values[:, 5:6] + q[:, 5:6]
        want[:, 5] = q[:, 5]
        torch.testing.assert_close(got, want, **F32)
        code = released_rule_returns(logits, actions, mask, k, "max").float()
        assert not torch.allclose(got, code)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_two_ends_differ_by_the_eos_signal_on_chains_off_the_eos(k: int) -> None:
    """released - equations = q(s_{L-1}, EOS) - V(s_{L-1}) at every position whose chain
    misses L - 1, and 0 on the chain through L - 1: the teacher's stop signal reaching them."""
    logits, actions, _ = random_batch(5, b=1, t=9)
    mask = torch.ones(1, 9)
    q, values = taken_q_and_values(logits, actions, mask)
    diff = kstep_returns(logits, actions, mask, k, sequence_end="released") - kstep_returns(
        logits, actions, mask, k
    )
    eos_signal = float(q[0, 8] - values[0, 8])
    for t in range(9):
        expected = 0.0 if (8 - t) % k == 0 else eos_signal
        assert diff[0, t].item() == pytest.approx(expected, abs=1e-5)
    assert eos_signal <= 0  # the hard value is the max of q


def test_k1_is_the_same_under_both_ends() -> None:
    for seed in range(10):
        logits, actions, mask = random_batch(seed)
        torch.testing.assert_close(
            kstep_returns(logits, actions, mask, 1, sequence_end="released"),
            kstep_returns(logits, actions, mask, 1),
            **F32,
        )


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------

# One row, T = 3, V = 3, actions y = (2, 0, 1).
#   t=0: f = [1, 2, 3], mean 2 -> q = [-1, 0, 1],  V_max = 1, q(y_0) = 1
#   t=1: f = [0, 0, 3], mean 1 -> q = [-1, -1, 2], V_max = 2, q(y_1) = -1
#   t=2: f = [2, 4, 0], mean 2 -> q = [0, 2, -2],  V_max = 2, q(y_2) = 2
HAND_LOGITS = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 3.0], [2.0, 4.0, 0.0]]])
HAND_ACTIONS = torch.tensor([[2, 0, 1]])


def test_hand_computed_full_row() -> None:
    mask = torch.ones(1, 3)
    q = q_values(HAND_LOGITS)
    torch.testing.assert_close(q, torch.tensor([[[-1.0, 0, 1], [-1, -1, 2], [0, 2, -2]]]))
    torch.testing.assert_close(state_values(q), torch.tensor([[1.0, 2.0, 2.0]]))
    # r_t = q(y_t) - V(s_{t+1}), V(s_3) = 0: r = [1 - 2, -1 - 2, 2 - 0] = [-1, -3, 2]
    r = one_step_rewards(HAND_LOGITS, HAND_ACTIONS, mask)
    torch.testing.assert_close(r, torch.tensor([[-1.0, -3.0, 2.0]]))
    # G^1 = reward-to-go: [-1 - 3 + 2, -3 + 2, 2] = [-2, -1, 2]
    g1 = kstep_returns(HAND_LOGITS, HAND_ACTIONS, mask, 1)
    torch.testing.assert_close(g1, torch.tensor([[-2.0, -1.0, 2.0]]))
    # R^2_t = q(y_t) - V(s_{min(t+2, 3)}): [1 - V(s_2), -1 - V(s_3), 2 - V(s_3)] = [-1, -1, 2]
    r2 = kstep_rewards(HAND_LOGITS, HAND_ACTIONS, mask, 2)
    torch.testing.assert_close(r2, torch.tensor([[-1.0, -1.0, 2.0]]))
    # G^2_0 = R_0 + R_2 = 1, G^2_1 = R_1 = -1, G^2_2 = R_2 = 2
    g2 = kstep_returns(HAND_LOGITS, HAND_ACTIONS, mask, 2)
    torch.testing.assert_close(g2, torch.tensor([[1.0, -1.0, 2.0]]))
    # K >= L: G = q(y_t) = [1, -1, 2]
    g3 = kstep_returns(HAND_LOGITS, HAND_ACTIONS, mask, 3)
    torch.testing.assert_close(g3, torch.tensor([[1.0, -1.0, 2.0]]))


def test_hand_computed_short_row() -> None:
    # Same logits, but the row ends after 2 tokens (L = 2), so V(s_2) = 0.
    mask = torch.tensor([[1, 1, 0]])
    # r = [1 - V(s_1), -1 - 0] = [-1, -1]; G^1 = [-2, -1, 0]
    g1 = kstep_returns(HAND_LOGITS, HAND_ACTIONS, mask, 1)
    torch.testing.assert_close(g1, torch.tensor([[-2.0, -1.0, 0.0]]))
    # R^2 = [1 - V(s_min(2,2)), -1 - 0] = [1, -1]; G^2 = [1, -1, 0]
    g2 = kstep_returns(HAND_LOGITS, HAND_ACTIONS, mask, 2)
    torch.testing.assert_close(g2, torch.tensor([[1.0, -1.0, 0.0]]))


def test_hand_computed_soft_value() -> None:
    # f = [ln 3, 0]: mean ln3/2, q = [ln3/2, -ln3/2], softmax(q) = [3/4, 1/4],
    # soft V = (3/4 - 1/4) ln3/2 = ln3/4; hard V = ln3/2.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[ln3, 0.0], [ln3, 0.0]]])
    q = q_values(logits)
    torch.testing.assert_close(state_values(q, "soft"), torch.full((1, 2), ln3 / 4))
    torch.testing.assert_close(state_values(q, "max"), torch.full((1, 2), ln3 / 2))
    # y = (1, 0): r_0 = -ln3/2 - ln3/4 = -3 ln3/4, r_1 = ln3/2; G^1 = [-ln3/4, ln3/2]
    actions = torch.tensor([[1, 0]])
    g = kstep_returns(logits, actions, torch.ones(1, 2), 1, value="soft")
    torch.testing.assert_close(g, torch.tensor([[-ln3 / 4, ln3 / 2]]))


# --------------------------------------------------------------------------------------------
# Structural properties and edge cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["max", "soft"])
def test_k1_is_reward_to_go_of_one_step_rewards(value: str) -> None:
    for seed in range(10):
        logits, actions, mask = random_batch(seed)
        g = kstep_returns(logits, actions, mask, 1, value=value)
        rtg = reward_to_go(one_step_rewards(logits, actions, mask, value=value), mask)
        torch.testing.assert_close(g, rtg, **F32)


@pytest.mark.parametrize("value", ["max", "soft"])
def test_k_at_least_length_gives_taken_q(value: str) -> None:
    logits, actions, mask = random_batch(3)
    q_taken = q_values(logits).gather(-1, actions.unsqueeze(-1)).squeeze(-1) * mask
    for k in (logits.shape[1], logits.shape[1] + 1, 10**9):
        g = kstep_returns(logits, actions, mask, k, value=value)
        torch.testing.assert_close(g, q_taken, rtol=0, atol=0)


def test_taken_q_and_values_consistent_with_q_values() -> None:
    logits, actions, mask = random_batch(5)
    for value in ("max", "soft"):
        q_taken, values = taken_q_and_values(logits, actions, mask, value)
        q = q_values(logits)
        want_q = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1) * mask
        torch.testing.assert_close(q_taken, want_q, **F32)
        torch.testing.assert_close(values, state_values(q, value) * mask, **F32)
        for k in (1, 2, 5):
            torch.testing.assert_close(
                kstep_returns_from_values(q_taken, values, mask, k),
                kstep_returns(logits, actions, mask, k, value=value),
            )


def test_padding_is_zero_even_with_garbage() -> None:
    logits, actions, mask = random_batch(7)
    pad = mask == 0
    logits[pad] = math.nan  # garbage teacher logits at padding
    actions[pad] = -100  # common label padding id
    for k in (1, 2, 4):
        for value in ("max", "soft"):
            g = kstep_returns(logits, actions, mask, k, value=value)
            assert torch.isfinite(g).all()
            assert (g[pad] == 0).all()


def test_all_padding_rows_and_batch() -> None:
    logits, actions, _ = random_batch(1, b=3, t=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    g = kstep_returns(logits, actions, mask, 2)
    assert torch.isfinite(g).all() and (g[1] == 0).all()
    empty = torch.zeros(3, 5, dtype=torch.bool)
    for value in ("max", "soft"):
        assert (kstep_returns(logits, actions, empty, 1, value=value) == 0).all()
        for end in ("equations", "released"):
            g = kstep_returns(logits, actions, empty, 3, value=value, sequence_end=end)
            assert (g == 0).all()


def test_length_one_rows() -> None:
    logits, actions, _ = random_batch(2, b=2, t=4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    q_taken = q_values(logits)[:, 0].gather(-1, actions[:, :1]).squeeze(-1)
    for k in (1, 2, 7):
        g = kstep_returns(logits, actions, mask, k)
        # L = 1: G_0 = q(s_0, y_0) - V(s_1) = q(s_0, y_0) since s_1 is terminal.
        torch.testing.assert_close(g[:, 0], q_taken)
        assert (g[:, 1:] == 0).all()


def test_mask_dtypes_equivalent() -> None:
    logits, actions, mask = random_batch(4)
    want = kstep_returns(logits, actions, mask.bool(), 3)
    for m in (mask.long(), mask.int(), mask.float(), mask.double()):
        torch.testing.assert_close(kstep_returns(logits, actions, m, 3), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32(dtype: torch.dtype) -> None:
    logits, actions, mask = random_batch(6)
    low = logits.to(dtype)
    for value in ("max", "soft"):
        g = kstep_returns(low, actions, mask, 2, value=value)
        assert g.dtype == torch.float32
        # Same (rounded) logits evaluated in float32: only accumulation order differs.
        torch.testing.assert_close(
            g, kstep_returns(low.float(), actions, mask, 2, value=value), rtol=1e-4, atol=1e-4
        )
        # And close to the full-precision answer up to the input rounding.
        torch.testing.assert_close(
            g, kstep_returns(logits, actions, mask, 2, value=value), rtol=0.05, atol=0.25
        )


def test_neg_inf_teacher_logits_no_nan() -> None:
    logits, actions, mask = random_batch(8)
    g = torch.Generator().manual_seed(0)
    forbid = torch.rand(logits.shape, generator=g) < 0.3
    forbid.scatter_(-1, actions.unsqueeze(-1), False)  # the taken tokens stay allowed
    logits = logits.masked_fill(forbid, NEG_INF)
    logits[0, 2] = NEG_INF  # a position with every token forbidden
    logits[0, 2, actions[0, 2]] = 0.0
    logits[2, :] = NEG_INF  # whole rows of nothing but -inf (incl. valid positions)
    q = q_values(logits)
    assert not torch.isnan(q).any()
    assert (q[forbid] == NEG_INF).all()
    for value in ("max", "soft"):
        assert not torch.isnan(state_values(q, value)).any()
        for k in (1, 2, 5):
            r = kstep_returns(logits, actions, mask, k, value=value)
            assert not torch.isnan(r).any()
            ok = torch.isfinite(logits).any(-1).all(-1)  # rows with a finite taken logit
            assert torch.isfinite(r[ok]).all()


def test_q_values_all_neg_inf_position() -> None:
    q = q_values(torch.full((1, 1, 4), NEG_INF))
    assert (q == NEG_INF).all()
    for value in ("max", "soft"):
        assert state_values(q, value).item() == 0.0


def test_returns_carry_no_gradient() -> None:
    logits, actions, mask = random_batch(9)
    logits.requires_grad_(True)
    for fn in (
        lambda: kstep_returns(logits, actions, mask, 2),
        lambda: one_step_rewards(logits, actions, mask),
        lambda: q_values(logits),
        lambda: taken_q_and_values(logits, actions, mask, "soft")[1],
    ):
        out = fn()
        assert out.grad_fn is None and not out.requires_grad


def test_reward_to_go() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    want = torch.tensor([[6.0, 5.0, 3.0, 0.0], [9.0, 5.0, 0.0, 0.0]])
    torch.testing.assert_close(reward_to_go(r, mask), want)


def test_vectorised_speed_smoke() -> None:
    # The returns beyond the single vocabulary reduction are O(B T): a long T is still instant.
    g = torch.Generator().manual_seed(0)
    q_taken = torch.randn(64, 4096, generator=g)
    values = torch.randn(64, 4096, generator=g)
    mask = torch.ones(64, 4096)
    out = kstep_returns_from_values(q_taken, values, mask, 5)
    assert out.shape == (64, 4096) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------


def _raises(name: str, fn) -> None:
    with pytest.raises(ValueError, match=name):
        fn()


def test_invalid_arguments() -> None:
    logits, actions, mask = random_batch(0, b=2, t=4, v=5)
    for bad_k in (0, -1, 1.5, 2.0, True, "2", None):
        _raises("k", lambda bad_k=bad_k: kstep_returns(logits, actions, mask, bad_k))
        _raises("k", lambda bad_k=bad_k: kstep_rewards(logits, actions, mask, bad_k))
    _raises("value", lambda: kstep_returns(logits, actions, mask, 1, value="mean"))
    _raises("value", lambda: state_values(q_values(logits), value="hard"))
    _raises("actions", lambda: kstep_returns(logits, actions[:, :3], mask, 1))
    _raises("actions", lambda: kstep_returns(logits, actions.float(), mask, 1))
    _raises("actions", lambda: kstep_returns(logits, actions + 5, torch.ones(2, 4), 1))
    _raises("mask", lambda: kstep_returns(logits, actions, mask[:1], 1))
    _raises("mask", lambda: kstep_returns(logits, actions, torch.full((2, 4), 2), 1))
    _raises("mask", lambda: kstep_returns(logits, actions, torch.full((2, 4), 0.5), 1))
    _raises("mask", lambda: kstep_returns(logits, actions, torch.tensor([[0, 1, 1, 1]] * 2), 1))
    _raises("teacher_logits", lambda: kstep_returns(logits[0], actions, mask, 1))
    _raises("teacher_logits", lambda: kstep_returns(logits.long(), actions, mask, 1))
    _raises("q_taken", lambda: kstep_returns_from_values(logits, mask, mask, 1))
    _raises("values", lambda: kstep_returns_from_values(mask.float(), mask[:1].float(), mask, 1))
    _raises("rewards", lambda: reward_to_go(logits, mask))
    _raises("sequence_end", lambda: kstep_returns(logits, actions, mask, 2, sequence_end="eos"))
