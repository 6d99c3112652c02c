"""Tests for ketchup.math.divergences: reference values, symmetries and bounds, masking, -inf
safety, temperature, gradients and argument checking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ketchup.math.divergences import (
    forward_kl,
    generalized_jsd,
    js_divergence,
    reverse_kl,
    reverse_kl_rewards,
    sequence_cross_entropy,
    total_variation,
    uniform_cross_entropy,
)

F32 = {"rtol": 1e-5, "atol": 1e-6}
NEG_INF = -math.inf
PAIR_LOSSES = [forward_kl, reverse_kl, js_divergence, total_variation, generalized_jsd]


pytestmark = pytest.mark.usefixtures("single_thread")


def batch(seed: int, b: int = 3, t: int = 5, v: int = 7, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g) * scale
    teacher = torch.randn(b, t, v, generator=g) * scale
    lengths = torch.tensor([t, 2, 0][:b])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return student, teacher, mask


def naive_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_token[mask.bool()].mean()


def naive_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_identical_distributions_give_zero(loss) -> None:
    student, _, mask = batch(0)
    out = loss(student, student.clone(), mask)
    torch.testing.assert_close(out, torch.tensor(0.0), rtol=0, atol=1e-6)
    # Shifting all logits of a position by a constant does not change the distribution.
    torch.testing.assert_close(loss(student, student + 3.0, mask), torch.tensor(0.0), **F32)


def test_forward_kl_matches_torch_kl_div() -> None:
    for seed in range(5):
        student, teacher, mask = batch(seed)
        m = mask.bool()
        want = (
            F.kl_div(
                F.log_softmax(student[m], -1),
                F.log_softmax(teacher[m], -1),
                log_target=True,
                reduction="sum",
            )
            / m.sum()
        )
        torch.testing.assert_close(forward_kl(student, teacher, mask), want, **F32)


def test_reverse_kl_matches_naive() -> None:
    student, teacher, mask = batch(1)
    ps, pt = student.double().softmax(-1), teacher.double().softmax(-1)
    want = naive_token_mean(naive_kl(ps, pt), mask).float()
    torch.testing.assert_close(reverse_kl(student, teacher, mask), want, **F32)
    want_fwd = naive_token_mean(naive_kl(pt, ps), mask).float()
    torch.testing.assert_close(forward_kl(student, teacher, mask), want_fwd, **F32)


def test_js_and_tvd_match_naive_and_are_symmetric_and_bounded() -> None:
    for seed in range(5):
        student, teacher, mask = batch(seed, scale=6.0)
        ps, pt = student.double().softmax(-1), teacher.double().softmax(-1)
        mid = (ps + pt) / 2
        js_want = naive_token_mean(0.5 * naive_kl(pt, mid) + 0.5 * naive_kl(ps, mid), mask)
        tv_want = naive_token_mean(0.5 * (pt - ps).abs().sum(-1), mask)
        js = js_divergence(student, teacher, mask)
        tv = total_variation(student, teacher, mask)
        torch.testing.assert_close(js, js_want.float(), **F32)
        torch.testing.assert_close(tv, tv_want.float(), **F32)
        torch.testing.assert_close(js, js_divergence(teacher, student, mask), **F32)
        torch.testing.assert_close(tv, total_variation(teacher, student, mask), **F32)
        assert 0 <= js.item() <= math.log(2) + 1e-6
        assert 0 <= tv.item() <= 1 + 1e-6


def test_bounds_attained_for_disjoint_supports() -> None:
    # p_T = one-hot on token 0, p_S = one-hot on token 1: JS = log 2, TVD = 1.
    teacher = torch.tensor([[[0.0, NEG_INF, NEG_INF]]])
    student = torch.tensor([[[NEG_INF, 0.0, NEG_INF]]])
    mask = torch.ones(1, 1)
    torch.testing.assert_close(js_divergence(student, teacher, mask), torch.tensor(math.log(2)))
    torch.testing.assert_close(total_variation(student, teacher, mask), torch.tensor(1.0))


def test_generalized_jsd_special_cases() -> None:
    student, teacher, mask = batch(2)
    torch.testing.assert_close(
        generalized_jsd(student, teacher, mask, beta=0.5), js_divergence(student, teacher, mask)
    )
    torch.testing.assert_close(
        generalized_jsd(student, teacher, mask, beta=0.0), forward_kl(student, teacher, mask)
    )
    torch.testing.assert_close(
        generalized_jsd(student, teacher, mask, beta=1.0), reverse_kl(student, teacher, mask)
    )


def test_generalized_jsd_matches_trl_formula() -> None:
    student, teacher, mask = batch(3)
    m = mask.bool()
    for beta in (0.1, 0.3, 0.9):
        ls, lt = F.log_softmax(student[m], -1), F.log_softmax(teacher[m], -1)
        b = torch.tensor(beta)
        mix = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
        kl_t = F.kl_div(mix, lt, reduction="none", log_target=True)
        kl_s = F.kl_div(mix, ls, reduction="none", log_target=True)
        want = (beta * kl_t + (1 - beta) * kl_s).sum() / m.sum()
        got = generalized_jsd(student, teacher, mask, beta=beta)
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_masked_positions_do_not_matter(loss) -> None:
    student, teacher, mask = batch(4)
    clean = loss(student, teacher, mask)
    pad = ~mask.bool()
    s2, t2 = student.clone(), teacher.clone()
    s2[pad] = math.nan
    t2[pad] = torch.tensor([math.inf, NEG_INF, 1e30, -1e30, 0.0, math.nan, 5.0])
    s2.requires_grad_(True)
    dirty = loss(s2, t2, mask)
    torch.testing.assert_close(dirty, clean)
    dirty.backward()
    assert torch.isfinite(s2.grad).all() and (s2.grad[pad] == 0).all()


def test_masked_positions_other_losses() -> None:
    student, teacher, mask = batch(5)
    pad = ~mask.bool()
    targets = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(0))
    s2 = student.clone()
    s2[pad] = math.nan
    t2 = targets.masked_fill(pad, -100)
    torch.testing.assert_close(
        sequence_cross_entropy(s2, t2, mask), sequence_cross_entropy(student, targets, mask)
    )
    torch.testing.assert_close(
        uniform_cross_entropy(s2, mask), uniform_cross_entropy(student, mask)
    )
    r = reverse_kl_rewards(s2, teacher, t2, mask)
    torch.testing.assert_close(r[~pad], reverse_kl_rewards(student, teacher, targets, mask)[~pad])
    assert (r[pad] == 0).all()


def test_all_padding_gives_zero() -> None:
    student, teacher, _ = batch(6)
    empty = torch.zeros(student.shape[:2], dtype=torch.bool)
    targets = torch.zeros(student.shape[:2], dtype=torch.long)
    student.requires_grad_(True)
    outs = [loss(student, teacher, empty) for loss in PAIR_LOSSES]
    outs += [sequence_cross_entropy(student, targets, empty), uniform_cross_entropy(student, empty)]
    for out in outs:
        assert out.item() == 0.0
    sum(outs).backward()
    assert (student.grad == 0).all()


def test_sequence_cross_entropy_matches_torch() -> None:
    student, _, mask = batch(7)
    targets = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(1))
    labels = targets.masked_fill(mask == 0, -100)
    want = F.cross_entropy(student.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(sequence_cross_entropy(student, labels, mask), want, **F32)


def test_uniform_cross_entropy() -> None:
    student, _, mask = batch(8)
    want = naive_token_mean(-F.log_softmax(student, -1).mean(-1), mask)
    torch.testing.assert_close(uniform_cross_entropy(student, mask), want, **F32)
    # Uniform student: CE(U, U) = log V; with 2 of 7 tokens masked the uniform is over 5.
    flat = torch.zeros(1, 2, 7)
    torch.testing.assert_close(
        uniform_cross_entropy(flat, torch.ones(1, 2)), torch.tensor(math.log(7))
    )
    flat[..., :2] = NEG_INF
    torch.testing.assert_close(
        uniform_cross_entropy(flat, torch.ones(1, 2)), torch.tensor(math.log(5))
    )


def test_reverse_kl_rewards() -> None:
    student, teacher, mask = batch(9)
    actions = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(2))
    student.requires_grad_(True)
    r = reverse_kl_rewards(student, teacher, actions, mask, temperature=2.0)
    assert r.grad_fn is None and r.dtype == torch.float32
    lt = F.log_softmax(teacher / 2, -1).gather(-1, actions[..., None])[..., 0]
    ls = F.log_softmax(student.detach() / 2, -1).gather(-1, actions[..., None])[..., 0]
    torch.testing.assert_close(r, (lt - ls) * mask, **F32)


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_temperature_divides_both_logits(loss) -> None:
    student, teacher, mask = batch(10)
    for tau in (0.5, 2.0, 3.7):
        torch.testing.assert_close(
            loss(student, teacher, mask, temperature=tau), loss(student / tau, teacher / tau, mask)
        )


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_gradients_flow_to_student_only(loss) -> None:
    student, teacher, mask = batch(11)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    out = loss(student, teacher, mask)
    out.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_forward_kl_gradient_matches_analytic() -> None:
    # d/dz KL(p_T || softmax(z)) = softmax(z) - p_T, divided by N valid tokens.
    student, teacher, mask = batch(12)
    student.requires_grad_(True)
    forward_kl(student, teacher, mask).backward()
    want = (student.detach().softmax(-1) - teacher.softmax(-1)) * mask[..., None] / mask.sum()
    torch.testing.assert_close(student.grad, want, **F32)


@pytest.mark.parametrize("loss", PAIR_LOSSES)
def test_neg_inf_logits_no_nan(loss) -> None:
    student, teacher, mask = batch(13)
    # Same masked vocabulary for both (tokens 0 and 1), plus a token only the teacher forbids
    # where the student also gives it -inf (token 2 at one position).
    student[..., :2] = NEG_INF
    teacher[..., :2] = NEG_INF
    student[0, 0, 2] = NEG_INF
    teacher[0, 0, 2] = NEG_INF
    student.requires_grad_(True)
    out = loss(student, teacher, mask)
    assert torch.isfinite(out)
    out.backward()
    assert not torch.isnan(student.grad).any()
    assert (student.grad[..., :2] == 0).all()


def test_bf16_inputs_accumulate_in_float32() -> None:
    student, teacher, mask = batch(14)
    for loss in PAIR_LOSSES:
        low = loss(student.bfloat16(), teacher.bfloat16(), mask)
        assert low.dtype == torch.float32
        ref = loss(student.bfloat16().float(), teacher.bfloat16().float(), mask)
        torch.testing.assert_close(low, ref)


def _raises(name: str, fn) -> None:
    with pytest.raises(ValueError, match=name):
        fn()


def test_invalid_arguments() -> None:
    student, teacher, mask = batch(15)
    targets = torch.zeros(mask.shape, dtype=torch.long)
    for loss in PAIR_LOSSES:
        _raises("teacher_logits", lambda loss=loss: loss(student, teacher[:, :, :5], mask))
        _raises("student_logits", lambda loss=loss: loss(student[0], teacher, mask))
        _raises("mask", lambda loss=loss: loss(student, teacher, mask[:, :2]))
        _raises("mask", lambda loss=loss: loss(student, teacher, mask * 3))
        for tau in (0.0, -1.0, math.inf, math.nan):
            _raises(
                "temperature",
                lambda loss=loss, tau=tau: loss(student, teacher, mask, temperature=tau),
            )
    for beta in (-0.1, 1.1, math.nan):
        _raises("beta", lambda beta=beta: generalized_jsd(student, teacher, mask, beta=beta))
    _raises("targets", lambda: sequence_cross_entropy(student, targets[:, :2], mask))
    _raises("targets", lambda: sequence_cross_entropy(student, targets.float(), mask))
    _raises("targets", lambda: sequence_cross_entropy(student, targets + 7, mask))
    _raises("mask", lambda: uniform_cross_entropy(student, mask.float() / 2))
    _raises("actions", lambda: reverse_kl_rewards(student, teacher, targets[:1], mask))
    _raises("temperature", lambda: reverse_kl_rewards(student, teacher, targets, mask, 0.0))
