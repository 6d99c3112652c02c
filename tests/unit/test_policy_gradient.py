"""Tests for ketchup.math.policy_gradient: the estimator's expectation on a one-step bandit,
enumerated exactly (baselines that are baselines, for every weight), the minimum-variance
baseline against a grid search, the rollout sampler's probabilities against transformers'
warpers, and the advantages and loss by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ketchup.math.policy_gradient import (
    Sampler,
    gradient_norm_weights,
    importance_weights,
    mean_baseline,
    min_variance_baseline,
    policy_gradient_advantages,
    policy_gradient_loss,
    rollout_log_probs,
)
from ketchup.math.returns import kstep_returns

F32 = {"rtol": 1.3e-6, "atol": 1e-5}
NEG_INF = -math.inf

pytestmark = pytest.mark.usefixtures("single_thread")

# A one-step bandit: V actions, the student's logits z, a return per action.
V = 6
Z = torch.tensor([1.2, 0.3, -0.5, 2.0, 0.0, -1.4], dtype=torch.float64)
RETURNS = torch.tensor([-31.0, -24.5, -28.0, -22.0, -35.0, -26.0], dtype=torch.float64)
SAMPLERS = {
    "full": Sampler(),
    "tempered": Sampler(temperature=0.7),
    "top-k": Sampler(top_k=3),
}


def sampler_probs(sampler: Sampler) -> torch.Tensor:
    """(V,) the distribution the sampler draws from, written out directly."""
    z = Z / sampler.temperature
    if sampler.top_k:
        kth = torch.topk(z, sampler.top_k).values[-1]
        z = torch.where(z >= kth, z, NEG_INF)
    return torch.softmax(z, -1)


def bandit_batch():
    """Every action once: logits (V, 1, V), actions (V, 1), mask (V, 1), returns (V, 1)."""
    logits = Z.float().expand(V, 1, V).clone().requires_grad_(True)
    actions = torch.arange(V).view(V, 1)
    return logits, actions, torch.ones(V, 1), RETURNS.float().view(V, 1)


def expected_update(sampler: Sampler, weight: str, baseline: float, ratio: bool = True):
    """E_{a ~ q}[A_a grad_z log pi(a)] (V,), exactly, through the package's own functions."""
    logits, actions, mask, returns = bandit_batch()
    logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    log_q = rollout_log_probs(logits, actions, mask, sampler)
    w, rho = importance_weights(logprobs, log_q, mask, weight, sampler)
    adv = policy_gradient_advantages(
        returns, mask, weight=w, baseline=baseline, ratio=rho if ratio else None
    )
    q = sampler_probs(sampler).float().view(V, 1)
    (grad,) = torch.autograd.grad((q * adv * logprobs).sum(), logits)
    return grad.sum(dim=(0, 1)).double()


def grad_half_sum_squares(z: torch.Tensor, support=None) -> torch.Tensor:
    """grad_z of 1/2 sum_a pi_a^2 (support=None) or of sum_{a in support} pi_a."""
    z = z.clone().requires_grad_(True)
    pi = torch.softmax(z, -1)
    f = 0.5 * (pi * pi).sum() if support is None else pi[support].sum()
    (g,) = torch.autograd.grad(f, z)
    return g


# --------------------------------------------------------------------------------------------
# Baselines that are baselines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", ["pi", "none", "ratio"])
@pytest.mark.parametrize("sampler", ["full", "tempered"])
def test_a_baseline_leaves_the_expected_update_unchanged(weight: str, sampler: str) -> None:
    """Any b, with the baseline subtracted from the weighted return (times rho = pi / q), gives
    the same expected update, for every weight, whenever the sampler covers the vocabulary."""
    s = SAMPLERS[sampler]
    reference = expected_update(s, weight, 0.0)
    assert reference.norm() > 1e-3
    for b in (-25.0, 3.7, 100.0):
        torch.testing.assert_close(expected_update(s, weight, b), reference, rtol=1e-5, atol=1e-5)


def test_without_rho_a_tempered_sampler_biases_the_baseline() -> None:
    s = SAMPLERS["tempered"]
    reference = expected_update(s, "none", 0.0)
    shifted = expected_update(s, "none", -25.0, ratio=False)
    # E_q[-b grad log pi] = -b (q - pi) for the softmax score
    q, pi = sampler_probs(s), torch.softmax(Z, -1)
    torch.testing.assert_close(shifted - reference, 25.0 * (q - pi), rtol=1e-4, atol=1e-4)


def test_top_k_leaves_the_residual_the_docs_name() -> None:
    """Under top-k truncation no baseline has zero expectation: with rho the baseline term is
    -b grad_z Z_K, Z_K the student's mass on the kept tokens (docs/methods.md)."""
    s = SAMPLERS["top-k"]
    kept = torch.topk(Z, 3).indices
    for weight in ("pi", "ratio", "none"):
        diff = expected_update(s, weight, 7.0) - expected_update(s, weight, 0.0)
        torch.testing.assert_close(
            diff, -7.0 * grad_half_sum_squares(Z, kept), rtol=1e-4, atol=1e-5
        )


def test_a_baseline_inside_the_weight_is_not_a_baseline() -> None:
    """w (G - b) with w = pi moves the expected update by -b grad(1/2 sum_a pi_a^2): the order
    the released code does not use, and the reason this package subtracts after the weight."""
    logits, actions, mask, returns = bandit_batch()
    logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pi = logprobs.detach().exp()
    q = torch.softmax(Z, -1).float().view(V, 1)

    def update(b: float) -> torch.Tensor:
        adv = pi * (returns - b)
        (g,) = torch.autograd.grad((q * adv * logprobs).sum(), logits, retain_graph=True)
        return g.sum(dim=(0, 1)).double()

    b = -25.0
    torch.testing.assert_close(
        update(b) - update(0.0), -b * grad_half_sum_squares(Z), rtol=1e-4, atol=1e-5
    )


def test_uncentred_returns_with_weight_pi_carry_an_entropy_term() -> None:
    """With w = pi and no baseline, a constant c in every return adds c grad(1/2 sum pi^2)."""
    s = SAMPLERS["full"]
    logits, actions, mask, _ = bandit_batch()
    logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    for c in (-30.0, 5.0):
        w, _ = importance_weights(logprobs, torch.zeros(V, 1), mask, "pi", s)
        adv = policy_gradient_advantages(torch.full((V, 1), c), mask, weight=w)
        q = sampler_probs(s).float().view(V, 1)
        (g,) = torch.autograd.grad((q * adv * logprobs).sum(), logits, retain_graph=True)
        torch.testing.assert_close(
            g.sum(dim=(0, 1)).double(), c * grad_half_sum_squares(Z), rtol=1e-4, atol=1e-5
        )


# --------------------------------------------------------------------------------------------
# The minimum-variance baseline
# --------------------------------------------------------------------------------------------


def _sampled_bandit(sampler: Sampler, n: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    actions = torch.multinomial(sampler_probs(sampler).float(), n, True, generator=g).view(n, 1)
    logits = Z.float().expand(n, 1, V).clone()
    noise = torch.randn(n, generator=g).view(n, 1)
    returns = RETURNS.float()[actions] + 3.0 * noise
    return logits, actions, torch.ones(n, 1), returns


def _second_moment(b: float, u, rho, logits, actions) -> float:
    """sum_t ||(u_t - b rho_t)(e_{y_t} - pi_t)||^2 of the batch (what b* minimises)."""
    pi = torch.softmax(logits.double(), -1)
    score = torch.nn.functional.one_hot(actions, V).double() - pi
    coef = u.double() - b * rho.double()
    return float(((coef.unsqueeze(-1) * score) ** 2).sum())


@pytest.mark.parametrize("weight", ["none", "pi", "ratio"])
def test_min_variance_baseline_is_the_grid_search_minimiser(weight: str) -> None:
    s = SAMPLERS["tempered"]
    logits, actions, mask, returns = _sampled_bandit(s)
    logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    w, rho = importance_weights(
        logprobs, rollout_log_probs(logits, actions, mask, s), mask, weight, s
    )
    u = returns if w is None else w * returns
    b = float(min_variance_baseline(u, mask, logits, actions, rho))
    grid = torch.linspace(b - 5.0, b + 5.0, 2001).tolist()  # steps of 0.005
    best = min(grid, key=lambda x: _second_moment(x, u, rho, logits, actions))
    assert abs(best - b) <= 0.005 + 1e-9


def test_min_variance_baseline_depends_on_the_weight() -> None:
    """w = pi and w = 1 have different optima (so the baseline must follow the weight)."""
    s = SAMPLERS["full"]
    logits, actions, mask, returns = _sampled_bandit(s)
    logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pi = logprobs.exp()
    b_none = float(min_variance_baseline(returns, mask, logits, actions))
    b_pi = float(min_variance_baseline(pi * returns, mask, logits, actions))
    assert abs(b_none - b_pi) > 1.0  # returns near -27, pi * returns an order smaller


def test_population_minimiser_of_the_exact_variance() -> None:
    """On the enumerated bandit the exact variance of (u - b rho) grad log pi is minimised by
    E_q[rho g u] / E_q[rho^2 g], the population form of the batch formula."""
    s = SAMPLERS["tempered"]
    q, pi = sampler_probs(s), torch.softmax(Z, -1)
    rho = pi / q
    u = pi * RETURNS  # weight pi
    score = torch.eye(V, dtype=torch.float64) - pi  # row a: e_a - pi
    gnorm = (score**2).sum(-1)

    def variance(b: float) -> float:
        term = (u - b * rho).unsqueeze(-1) * score  # (V actions, V logits)
        mean = (q.unsqueeze(-1) * term).sum(0)
        return float((q * (term**2).sum(-1)).sum() - (mean**2).sum())

    closed = float((q * rho * gnorm * u).sum() / (q * rho**2 * gnorm).sum())
    grid = torch.linspace(closed - 3, closed + 3, 1201).tolist()
    assert abs(min(grid, key=variance) - closed) <= 0.005 + 1e-9


def test_min_variance_baseline_formula_and_edge_cases() -> None:
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(3, 5, 7, generator=g)
    actions = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.ones(3, 5)
    mask[2, 3:] = 0
    u = torch.randn(3, 5, generator=g) * 10
    rho = torch.rand(3, 5, generator=g) + 0.5
    p = torch.softmax(logits.double(), -1)
    py = p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    gn = (1 - 2 * py + (p * p).sum(-1)) * mask
    want = (rho * gn * u).sum() / (rho**2 * gn).sum()
    torch.testing.assert_close(min_variance_baseline(u, mask, logits, actions, rho), want.float())
    # pi(y) = 1 exactly: every score function is 0, the baseline falls back to 0 (not NaN).
    student = torch.full((1, 2, 3), NEG_INF)
    student[..., 0] = 0.0
    zero = torch.zeros(1, 2, dtype=torch.long)
    assert min_variance_baseline(torch.ones(1, 2), torch.ones(1, 2), student, zero).item() == 0.0
    empty = torch.zeros(3, 5)
    assert min_variance_baseline(u, empty, logits, actions).item() == 0.0
    assert mean_baseline(u, empty).item() == 0.0


def test_mean_baseline_is_the_masked_mean_of_the_weighted_returns() -> None:
    u = torch.tensor([[1.0, 2.0, 99.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mean_baseline(u, mask).item() == pytest.approx(7.0 / 3.0)


def test_gradient_norm_weights_match_autograd() -> None:
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(3, 4, 6, generator=g) * 2
    actions = torch.randint(0, 6, (3, 4), generator=g)
    got = gradient_norm_weights(logits, actions)
    want = torch.empty(3, 4)
    for b in range(3):
        for t in range(4):
            z = logits[b, t].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.log_softmax(z, -1)[actions[b, t]], z)
            want[b, t] = grad.pow(2).sum()
    torch.testing.assert_close(got, want, **F32)
    assert got.dtype == torch.float32 and got.grad_fn is None
    low = gradient_norm_weights(logits.bfloat16(), actions)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, want, rtol=0.05, atol=0.02)
    masked = torch.tensor([[1, 1, 1, 0]] * 3)
    w = gradient_norm_weights(logits, actions.masked_fill(masked == 0, -100), masked)
    assert (w[:, 3] == 0).all() and (w[:, :3] > 0).all()


# --------------------------------------------------------------------------------------------
# The rollout sampler's probabilities and the importance weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k,temperature", [(0, 1.0), (0, 0.6), (4, 1.0), (3, 1.7)])
def test_rollout_log_probs_match_transformers_warpers(top_k: int, temperature: float) -> None:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g) * 2
    scores = TemperatureLogitsWarper(temperature)(None, logits.view(10, 9))
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    want_dist = scores.log_softmax(-1).view(2, 5, 9)
    # take tokens the sampler can draw
    actions = want_dist.argmax(-1)
    actions[0, 0] = torch.topk(logits[0, 0], top_k or 9).indices[-1]
    want = want_dist.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    got = rollout_log_probs(logits, actions, torch.ones(2, 5), Sampler(False, top_k, temperature))
    torch.testing.assert_close(got, want, **F32)


def test_rollout_log_probs_greedy_ties_and_padding() -> None:
    logits = torch.tensor([[[1.0, 1.0, 0.5, -2.0], [0.0, 3.0, 1.0, 1.0]]])
    mask = torch.tensor([[1, 0]])
    assert (
        rollout_log_probs(logits, torch.tensor([[0, 3]]), mask, Sampler(greedy=True)) == 0
    ).all()
    # top_k = 1 with a tie keeps both tied tokens (as transformers does): q = 1/2 each
    got = rollout_log_probs(logits, torch.tensor([[1, -100]]), mask, Sampler(top_k=1))
    assert got[0, 0].item() == pytest.approx(math.log(0.5)) and got[0, 1].item() == 0.0
    # a taken token just outside the top-k (rounding between passes) keeps a probability
    got = rollout_log_probs(logits, torch.tensor([[2, 0]]), torch.ones(1, 2), Sampler(top_k=1))
    assert torch.isfinite(got).all()


def test_importance_weights() -> None:
    lp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    log_q = torch.log(torch.tensor([[0.8, 0.4, 1.0]]))
    mask = torch.tensor([[1, 1, 0]])
    sampled = Sampler(top_k=2)
    w, rho = importance_weights(lp, log_q, mask, "pi", sampled)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.2, 0.0]]))
    torch.testing.assert_close(rho, torch.tensor([[0.625, 0.5, 0.0]]))
    w, _ = importance_weights(lp, log_q, mask, "ratio", sampled)
    torch.testing.assert_close(w, rho)
    w, rho = importance_weights(lp, log_q, mask, "none", sampled)
    assert w is None
    # greedy: the ratio pi / 1 is the weight, and the baseline enters unscaled (rho = 1)
    w, rho = importance_weights(lp, torch.zeros(1, 3), mask, "ratio", Sampler(greedy=True))
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.2, 0.0]]))
    torch.testing.assert_close(rho, torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="weight"):
        importance_weights(lp, log_q, mask, "rho", sampled)


# --------------------------------------------------------------------------------------------
# Advantages and the loss
# --------------------------------------------------------------------------------------------


def test_advantages_by_hand() -> None:
    returns = torch.tensor([[2.0, -1.0, 0.5], [3.0, 7.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    weight = torch.tensor([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]])
    rho = torch.tensor([[1.0, 2.0, 1.0], [0.5, 1.0, 1.0]])
    adv = policy_gradient_advantages(
        returns, mask, weight=weight, baseline=1.0, ratio=rho, denom=2.0
    )
    # (w G - b rho) / 2: row 0 [(1 - 1), (-1 - 2), (1 - 1)] / 2, row 1 [(3 - 0.5) / 2]
    torch.testing.assert_close(adv, torch.tensor([[0.0, -1.5, 0.0], [1.25, 0.0, 0.0]]))
    clipped = policy_gradient_advantages(returns, mask, denom=4.0, clip=0.6)
    torch.testing.assert_close(clipped, torch.tensor([[0.5, -0.25, 0.125], [0.6, 0.0, 0.0]]))
    # std: divided by the unbiased std of the 4 valid (w G - b rho) values
    num = torch.tensor([2.0, -1.0, 0.5, 3.0])
    std = policy_gradient_advantages(returns, mask, normalize="std")
    torch.testing.assert_close(std[mask.bool()], num / num.std())


def test_loss_and_its_gradient() -> None:
    adv = torch.tensor([[0.25, -1.0, -0.5], [1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    lp = torch.tensor([[-0.1, -2.0, -0.7], [-1.5, -math.inf, -9.0]], requires_grad=True)
    loss = policy_gradient_loss(lp, adv, mask)
    valid = mask.bool()
    torch.testing.assert_close(loss, -(adv[valid] * lp.detach()[valid]).sum() / 4)
    loss.backward()
    torch.testing.assert_close(lp.grad, -torch.where(valid, adv, 0) / 4)
    empty = policy_gradient_loss(lp, adv, torch.zeros(2, 3))
    assert empty.item() == 0.0


def test_baseline_forms_agree() -> None:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 9, 11, generator=g)
    actions = torch.randint(0, 11, (4, 9), generator=g)
    mask = torch.ones(4, 9)
    ret = kstep_returns(logits, actions, mask, 2)
    b = mean_baseline(ret, mask)
    a0 = policy_gradient_advantages(ret, mask, baseline=b)
    a1 = policy_gradient_advantages(ret, mask, baseline=float(b))
    a2 = policy_gradient_advantages(ret - b, mask)
    torch.testing.assert_close(a0, a1)
    torch.testing.assert_close(a0, a2)
    assert abs(float(a0.sum())) < 1e-3  # the mean baseline centres the batch


def test_invalid_arguments() -> None:
    ret = torch.zeros(2, 4)
    mask = torch.ones(2, 4)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="denom"):
            policy_gradient_advantages(ret, mask, denom=bad)
        with pytest.raises(ValueError, match="clip"):
            policy_gradient_advantages(ret, mask, clip=bad)
    with pytest.raises(ValueError, match="baseline"):
        policy_gradient_advantages(ret, mask, baseline=torch.zeros(4))
    with pytest.raises(ValueError, match="weight"):
        policy_gradient_advantages(ret, mask, weight=torch.zeros(4))
    with pytest.raises(ValueError, match="normalize"):
        policy_gradient_advantages(ret, mask, normalize="batch")
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(torch.zeros(2, 4), torch.zeros(4), mask)
    with pytest.raises(ValueError, match="weighted_returns"):
        mean_baseline(torch.zeros(2, 4, 3), mask)
    with pytest.raises(ValueError, match="student_logits"):
        min_variance_baseline(ret, mask, torch.zeros(1, 4, 3), torch.zeros(2, 4).long())
