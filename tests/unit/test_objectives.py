"""The on-policy losses against naive per-token formulas written out here."""

from __future__ import annotations

import pytest
import torch

from ketchup.math.objectives import (
    Reinforce,
    divergence_objective,
    minillm_objective,
    policy_gradient_objective,
    taken_log_probs,
)

B, T, V = 3, 6, 7
NO_WEIGHT = Reinforce(weight="none")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, V, generator=g, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=g) * 2
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    return student, teacher, tokens, mask


def naive_returns(teacher, tokens, mask, k, value):
    """G^K_t written as the paper states it, one position at a time."""
    q = teacher - teacher.mean(-1, keepdim=True)
    v = q.max(-1).values if value == "max" else (q.softmax(-1) * q).sum(-1)
    out = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            total, s = 0.0, t
            while s < n:
                nxt = min(s + k, n)
                total += float(q[b, s, tokens[b, s]]) - (float(v[b, nxt]) if nxt < n else 0.0)
                s += k
            out[b, t] = total
    return out


def naive_loss(student, returns, tokens, mask, baseline=0.0, weight="pi", scale=1.0, clip=None):
    logp = student.log_softmax(-1)
    total, n = 0.0, int(mask.sum())
    for b in range(B):
        for t in range(int(mask[b].sum())):
            lp = logp[b, t, tokens[b, t]]
            w = float(lp.detach().exp()) if weight == "pi" else 1.0
            adv = w * (float(returns[b, t]) - float(baseline)) / scale
            if clip is not None:
                adv = max(-clip, min(clip, adv))
            total = total - adv * lp
    return total / n


@pytest.mark.parametrize("k", [1, 2, 4, 16])
@pytest.mark.parametrize("value", ["max", "soft"])
def test_policy_gradient_loss_and_gradient_match_the_naive_formula(batch, k, value):
    student, teacher, tokens, mask = batch
    loss, stats = policy_gradient_objective(
        student, teacher, tokens, mask, k=k, value=value, baseline="none"
    )
    returns = naive_returns(teacher, tokens, mask, k, value)
    expected = naive_loss(student, returns, tokens, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    (got,) = torch.autograd.grad(loss, student)
    (want,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    m = mask.bool()
    assert stats["return_mean"] == pytest.approx(float(returns[m].mean()), rel=1e-5)
    # the one-step reward is what each token earns, whatever K the loss uses
    ones = naive_returns(teacher, tokens, mask, 1, value)
    rewards = ones - torch.nn.functional.pad(ones[:, 1:], (0, 1))
    assert stats["reward_mean"] == pytest.approx(float(rewards[m].mean()), rel=1e-4, abs=1e-6)


def test_baselines_normalisation_and_clipping(batch):
    student, teacher, tokens, mask = batch
    m = mask.bool()
    returns = naive_returns(teacher, tokens, mask, 2, "max")
    mean = float(returns[m].mean())
    loss, _ = policy_gradient_objective(
        student, teacher, tokens, mask, k=2, value="max", baseline="mean", settings=NO_WEIGHT
    )
    expected = naive_loss(student, returns, tokens, mask, baseline=mean, weight="none")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    # minimum variance: returns weighted by ||e_y - pi||^2
    p = student.detach().softmax(-1)
    g = 1 - 2 * p.gather(-1, tokens[..., None])[..., 0] + (p * p).sum(-1)
    b = float((g * returns)[m].sum() / g[m].sum())
    loss, _ = policy_gradient_objective(
        student, teacher, tokens, mask, k=2, value="max", baseline="minvar", settings=NO_WEIGHT
    )
    expected = naive_loss(student, returns, tokens, mask, baseline=b, weight="none")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert b != pytest.approx(mean)

    # std normalisation, then clipping at 0.5: some advantages are clipped, and counted
    std = float((returns[m] - mean).std())
    loss, stats = policy_gradient_objective(
        student,
        teacher,
        tokens,
        mask,
        k=2,
        value="max",
        baseline="mean",
        settings=Reinforce(weight="none", normalize="std", clip=0.5),
    )
    expected = naive_loss(
        student, returns, tokens, mask, baseline=mean, weight="none", scale=std, clip=0.5
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    share = float((((returns - mean) / std).abs() >= 0.5)[m].float().mean())
    assert stats["clipped_share"] == pytest.approx(share) and 0 < share < 1
    assert stats["advantage_std"] == pytest.approx(std, rel=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        policy_gradient_objective(student, teacher, tokens, mask, k=1, value="max", baseline="x")


def test_uniform_cross_entropy_is_added_with_its_coefficient(batch):
    student, teacher, tokens, mask = batch
    kwargs = {"k": 1, "value": "max", "baseline": "none"}
    plain, _ = policy_gradient_objective(student, teacher, tokens, mask, **kwargs)
    regular, stats = policy_gradient_objective(
        student, teacher, tokens, mask, settings=Reinforce(uniform_ce=0.1), **kwargs
    )
    ce = -student.log_softmax(-1).mean(-1)[mask.bool()].mean()
    assert stats["uniform_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert regular.item() == pytest.approx(plain.item() + 0.1 * ce.item(), rel=1e-5)


def test_minillm_rewards_are_the_log_ratio_and_vanish_on_the_teacher(batch):
    student, teacher, tokens, mask = batch
    loss, stats = minillm_objective(student, teacher, tokens, mask, NO_WEIGHT)
    r = (teacher.log_softmax(-1) - student.detach().log_softmax(-1)).gather(-1, tokens[..., None])[
        ..., 0
    ]
    r = torch.where(mask.bool(), r, 0.0)
    returns = r.flip(1).cumsum(1).flip(1)
    expected = naive_loss(student, returns, tokens, mask, weight="none")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["reward_mean"] == pytest.approx(float(r[mask.bool()].mean()), rel=1e-5)
    # a student equal to the teacher earns 0 everywhere: nothing to learn
    same = teacher.clone().requires_grad_(True)
    loss, stats = minillm_objective(same, teacher, tokens, mask)
    assert loss.item() == 0.0 and stats["reward_mean"] == 0.0


@pytest.mark.parametrize("name", ["js", "tvd", "gkd"])
def test_divergences_vanish_on_the_teacher_only(batch, name):
    student, teacher, tokens, mask = batch
    loss, stats = divergence_objective(name, student, teacher, mask)
    assert loss.item() > 0 and stats["divergence"] == pytest.approx(loss.item())
    same, _ = divergence_objective(name, teacher.clone(), teacher, mask)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="js, tvd or gkd"):
        divergence_objective("kl", student, teacher, mask)


def test_taken_log_probs_ignore_padding_ids(batch):
    student, _, tokens, mask = batch
    padded = torch.where(mask.bool(), tokens, -100)  # ids at padding may be anything
    lp = taken_log_probs(student, padded, mask)
    assert torch.all(lp[~mask.bool()] == 0)
    want = student.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(lp[mask.bool()], want[mask.bool()])
