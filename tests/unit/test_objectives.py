"""The on-policy losses against naive per-token formulas written out here: the policy gradient
of LLMR / KETCHUP (every weight, baseline and sequence end), MiniLLM term by term, f-distill's
JS and TVD half by half, and GKD."""

from __future__ import annotations

import math

import pytest
import torch

from ketchup.math.objectives import (
    MiniLLM,
    Reinforce,
    fdistill_objective,
    gkd_objective,
    minillm_objective,
    policy_gradient_objective,
    taken_log_probs,
)
from ketchup.math.policy_gradient import Sampler
from ketchup.math.returns import kstep_returns, kstep_returns_from_values, taken_q_and_values

B, T, V = 3, 6, 7
NO_WEIGHT = Reinforce(weight="none")
FULL = Sampler()
TOP3 = Sampler(top_k=3)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, V, generator=g, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=g) * 2
    # tokens among the student's 3 most likely, so that a top-3 sampler could have drawn them
    top3 = student.detach().topk(3, dim=-1).indices
    pick = torch.randint(0, 3, (B, T, 1), generator=g)
    tokens = top3.gather(-1, pick).squeeze(-1)
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


def naive_q(student, tokens, b, t, sampler):
    """The sampler's probability of the taken token, written out."""
    z = student[b, t].detach() / sampler.temperature
    if sampler.top_k:
        kth = sorted(z.tolist(), reverse=True)[sampler.top_k - 1]
        z = torch.where(z >= kth, z, -math.inf)
    return float(z.softmax(-1)[tokens[b, t]])


def naive_loss(
    student,
    returns,
    tokens,
    mask,
    *,
    baseline=None,
    weight="pi",
    sampler=FULL,
    std=False,
    clip=None,
    scope="batch",
):
    """-(1/N) sum_t clip((w_t G_t - b rho_t) / s) log pi_t, with b "mean", "minvar" or None,
    over all tokens (scope "batch"), or per row and then the mean over rows ("sequence")."""
    logp = student.log_softmax(-1)
    rows = [[(b, t) for t in range(int(mask[b].sum()))] for b in range(B)]
    groups = [c for row in rows for c in row] if scope == "batch" else None
    groups = [groups] if groups is not None else [row for row in rows if row]
    losses, bases = [], []
    for cells in groups:
        pi = {c: float(logp[c[0], c[1], tokens[c]].detach().exp()) for c in cells}
        rho = {c: pi[c] / naive_q(student, tokens, *c, sampler) for c in cells}
        w = {c: {"pi": pi[c], "ratio": rho[c], "none": 1.0}[weight] for c in cells}
        u = {c: w[c] * float(returns[c]) for c in cells}
        if baseline == "mean":
            base = sum(u.values()) / len(cells)
        elif baseline == "minvar":
            p = student.detach().softmax(-1)
            g = {c: 1 - 2 * pi[c] + float((p[c] ** 2).sum()) for c in cells}
            base = sum(rho[c] * g[c] * u[c] for c in cells) / sum(rho[c] ** 2 * g[c] for c in cells)
        else:
            base = 0.0
        num = {c: u[c] - base * rho[c] for c in cells}
        scale = 1.0
        if std:
            mean = sum(num.values()) / len(cells)
            scale = math.sqrt(sum((x - mean) ** 2 for x in num.values()) / (len(cells) - 1))
        total = 0.0
        for c in cells:
            adv = num[c] / scale
            if clip is not None:
                adv = max(-clip, min(clip, adv))
            total = total - adv * logp[c[0], c[1], tokens[c]]
        losses.append(total / len(cells))
        bases += [base] * len(cells)
    return sum(losses) / len(losses), sum(bases) / len(bases)


def _pg(student, teacher, tokens, mask, **kwargs):
    kwargs.setdefault("k", 2)
    kwargs.setdefault("value", "max")
    kwargs.setdefault("baseline", "none")
    kwargs.setdefault("sampler", FULL)
    return policy_gradient_objective(student, teacher, tokens, mask, **kwargs)


def _assert_same(loss, expected, student):
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    (got,) = torch.autograd.grad(loss, student, retain_graph=True)
    (want,) = torch.autograd.grad(expected, student, retain_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 16])
@pytest.mark.parametrize("value", ["max", "soft"])
def test_policy_gradient_loss_and_gradient_match_the_naive_formula(batch, k, value):
    student, teacher, tokens, mask = batch
    loss, stats = _pg(student, teacher, tokens, mask, k=k, value=value)
    returns = naive_returns(teacher, tokens, mask, k, value)
    expected, _ = naive_loss(student, returns, tokens, mask)
    _assert_same(loss, expected, student)
    m = mask.bool()
    assert stats["return_mean"] == pytest.approx(float(returns[m].mean()), rel=1e-5)
    # the one-step reward is what each token earns, whatever K the loss uses
    ones = naive_returns(teacher, tokens, mask, 1, value)
    rewards = ones - torch.nn.functional.pad(ones[:, 1:], (0, 1))
    assert stats["reward_mean"] == pytest.approx(float(rewards[m].mean()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("weight", ["pi", "ratio", "none"])
@pytest.mark.parametrize("baseline", ["none", "mean", "minvar"])
@pytest.mark.parametrize("sampler", [FULL, TOP3, Sampler(temperature=0.7)])
def test_weights_and_baselines_match_the_naive_formula(batch, weight, baseline, sampler):
    student, teacher, tokens, mask = batch
    loss, stats = _pg(
        student,
        teacher,
        tokens,
        mask,
        baseline=baseline,
        sampler=sampler,
        settings=Reinforce(weight=weight),
    )
    returns = naive_returns(teacher, tokens, mask, 2, "max")
    expected, base = naive_loss(
        student, returns, tokens, mask, baseline=baseline, weight=weight, sampler=sampler
    )
    _assert_same(loss, expected, student)
    assert stats["baseline"] == pytest.approx(base, rel=1e-5, abs=1e-6)


def test_normalisation_and_clipping(batch):
    student, teacher, tokens, mask = batch
    returns = naive_returns(teacher, tokens, mask, 2, "max")
    settings = Reinforce(weight="pi", normalize="std", clip=0.5)
    loss, stats = _pg(student, teacher, tokens, mask, baseline="mean", settings=settings)
    expected, _ = naive_loss(
        student, returns, tokens, mask, baseline="mean", weight="pi", std=True, clip=0.5
    )
    _assert_same(loss, expected, student)
    assert 0 < stats["clipped_share"] < 1
    with pytest.raises(ValueError, match="baseline"):
        _pg(student, teacher, tokens, mask, baseline="x")


@pytest.mark.parametrize("baseline", ["none", "mean", "minvar"])
def test_the_sequence_scope_is_the_released_codes_one_sequence_per_batch(batch, baseline):
    """scope "sequence": each rollout's own baseline, std and token mean, then the mean over
    rollouts (the released code's batch of 1 with gradient accumulation)."""
    student, teacher, tokens, mask = batch
    returns = naive_returns(teacher, tokens, mask, 2, "max")
    settings = Reinforce(weight="pi", normalize="std", clip=0.5, scope="sequence")
    loss, stats = _pg(student, teacher, tokens, mask, baseline=baseline, settings=settings)
    expected, base = naive_loss(
        student,
        returns,
        tokens,
        mask,
        baseline=baseline,
        weight="pi",
        std=True,
        clip=0.5,
        scope="sequence",
    )
    _assert_same(loss, expected, student)
    assert stats["baseline"] == pytest.approx(base, rel=1e-5, abs=1e-6)
    batch_scope, _ = _pg(
        student, teacher, tokens, mask, baseline=baseline, settings=Reinforce(weight="pi")
    )
    assert batch_scope.item() != pytest.approx(loss.item())


def test_a_kept_cut_row_bootstraps_from_the_teachers_value_after_it(batch):
    """`cut`: rows that the length cap cut (not finished) take V(s_L) from the teacher's logits
    after their last token; finished rows keep V(s_L) = 0."""
    student, teacher, tokens, mask = batch
    after = torch.randn(B, V, generator=torch.Generator().manual_seed(9)) * 2
    finished = torch.tensor([False, True, False])
    loss, stats = _pg(student, teacher, tokens, mask, cut=(after, finished))
    q, values = taken_q_and_values(teacher, tokens, mask, "max")
    q_after = after - after.mean(-1, keepdim=True)
    cut_values = torch.where(finished, 0.0, q_after.max(-1).values)
    returns = kstep_returns_from_values(q, values, mask, 2, cut_values=cut_values)
    expected, _ = naive_loss(student, returns, tokens, mask)
    _assert_same(loss, expected, student)
    plain, _ = _pg(student, teacher, tokens, mask)
    assert plain.item() != pytest.approx(loss.item())


def test_the_released_sequence_end_reaches_the_loss(batch):
    student, teacher, tokens, mask = batch
    returns = kstep_returns(teacher, tokens, mask, 2, sequence_end="released")
    loss, stats = _pg(student, teacher, tokens, mask, sequence_end="released")
    expected, _ = naive_loss(student, returns, tokens, mask)
    _assert_same(loss, expected, student)
    other, _ = _pg(student, teacher, tokens, mask)
    assert other.item() != pytest.approx(loss.item())


def test_uniform_cross_entropy_is_added_with_its_coefficient(batch):
    student, teacher, tokens, mask = batch
    plain, _ = _pg(student, teacher, tokens, mask, k=1)
    regular, stats = _pg(student, teacher, tokens, mask, k=1, settings=Reinforce(uniform_ce=0.1))
    ce = -student.log_softmax(-1).mean(-1)[mask.bool()].mean()
    assert stats["uniform_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert regular.item() == pytest.approx(plain.item() + 0.1 * ce.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# MiniLLM, term by term
# --------------------------------------------------------------------------------------------


def naive_minillm(student, teacher, tokens, mask, s: MiniLLM):
    logp_s = student.log_softmax(-1)
    logp_t = teacher.log_softmax(-1)
    cells = [(b, t) for b in range(B) for t in range(int(mask[b].sum()))]
    lengths = {b: int(mask[b].sum()) for b in range(B)}
    r = {c: float((logp_t - logp_s).detach()[c[0], c[1], tokens[c]]) for c in cells}
    adv = {}
    for b, t in cells:
        rtg = sum(r[(b, i)] for i in range(t, lengths[b]))
        adv[(b, t)] = rtg / (lengths[b] - t) if s.length_norm else rtg
    if s.whiten:
        mean = sum(adv.values()) / len(cells)
        var = sum((a - mean) ** 2 for a in adv.values()) / (len(cells) - 1)
        adv = {c: (a - mean) / math.sqrt(var + 1e-8) for c, a in adv.items()}
    pg = 0.0
    for c in cells:
        lp = logp_s[c[0], c[1], tokens[c]]
        p_s, p_t = float(lp.detach().exp()), float(logp_t[c[0], c[1], tokens[c]].exp())
        w = p_s / (s.teacher_mix * p_t + (1 - s.teacher_mix) * p_s)
        ratio = torch.exp(lp - lp.detach()) * w
        clipped = torch.clamp(ratio, 1 - s.clip_ratio, 1 + s.clip_ratio)
        pg = pg + torch.maximum(-adv[c] * ratio, -adv[c] * clipped)
    loss = pg / len(cells)
    if s.single_step:
        kl = 0.0
        for b, t in cells:
            p = logp_s[b, t].exp()
            kl = kl + (p * (logp_s[b, t] - logp_t[b, t])).sum()
        loss = loss + kl / len(cells)
    return loss, r


@pytest.mark.parametrize(
    "settings",
    [
        MiniLLM(),
        MiniLLM(teacher_mix=0.0, length_norm=False, whiten=False, single_step=False),
        MiniLLM(teacher_mix=0.5, clip_ratio=0.05),
    ],
)
def test_minillm_matches_its_terms_written_out(batch, settings):
    student, teacher, tokens, mask = batch
    loss, stats = minillm_objective(student, teacher, tokens, mask, settings)
    expected, r = naive_minillm(student, teacher, tokens, mask, settings)
    _assert_same(loss, expected, student)
    assert stats["reward_mean"] == pytest.approx(sum(r.values()) / len(r), rel=1e-5)


def test_minillm_ppo_clip_binds_on_mixed_sampling_weights(batch):
    """With teacher mixing the weights leave [1 - eps, 1 + eps] for some tokens, and there the
    clipped branch (no gradient) is taken when it is the larger loss."""
    student, teacher, tokens, mask = batch
    _, stats = minillm_objective(student, teacher, tokens, mask, MiniLLM(clip_ratio=0.05))
    assert 0 < stats["clipped_share"] <= 1
    _, plain = minillm_objective(student, teacher, tokens, mask, MiniLLM(teacher_mix=0.0))
    assert plain["weight_mean"] == pytest.approx(1.0) and plain["clipped_share"] == 0.0


def test_minillm_on_the_teacher_leaves_only_the_ppo_term_at_zero(batch):
    student, teacher, tokens, mask = batch
    same = teacher.clone().requires_grad_(True)
    loss, stats = minillm_objective(same, teacher, tokens, mask, MiniLLM(whiten=False))
    assert stats["reward_mean"] == 0.0 and stats["single_step"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# f-distill and GKD
# --------------------------------------------------------------------------------------------


def naive_fdistill(name, student, teacher, mask, student_rows, beta):
    ps, pt = student.softmax(-1), teacher.softmax(-1)
    halves = {True: [], False: []}
    for b in range(B):
        for t in range(int(mask[b].sum())):
            if name == "tvd":
                d = 0.5 * (ps[b, t] - pt[b, t]).abs().sum()
            else:
                m = beta * ps[b, t] + (1 - beta) * pt[b, t]
                p = ps[b, t] if student_rows[b] else pt[b, t]
                d = (p * (p.log() - m.log())).sum()
            halves[bool(student_rows[b])].append(d)
    mean = {k: sum(v) / len(v) if v else 0.0 for k, v in halves.items()}
    if name == "tvd":
        beta = 0.5  # the reference's _tvd_symm_step: fixed halves, whatever JS's beta
    return beta * mean[True] + (1 - beta) * mean[False]


@pytest.mark.parametrize("name", ["js", "tvd"])
@pytest.mark.parametrize("beta", [0.5, 0.3])
def test_fdistill_halves_match_the_reference_formula(batch, name, beta):
    student, teacher, _, mask = batch
    rows = torch.tensor([True, False, True])
    loss, stats = fdistill_objective(name, student, teacher, mask, rows, beta=beta)
    expected = naive_fdistill(name, student, teacher, mask, rows, beta)
    _assert_same(loss, expected, student)
    assert stats["divergence"] == pytest.approx(loss.item())


def test_fdistill_weighs_its_halves_not_its_tokens(batch):
    """Row 0 has 6 tokens, row 2 has 2: as halves they weigh 0.5 each all the same."""
    student, teacher, _, mask = batch
    mask = torch.tensor([[1] * 6, [0] * 6, [1] * 2 + [0] * 4])
    rows = torch.tensor([True, False, False])
    loss, _ = fdistill_objective("tvd", student, teacher, mask, rows)
    tvd = 0.5 * (student.softmax(-1) - teacher.softmax(-1)).abs().sum(-1)
    want = 0.5 * tvd[0].mean() + 0.5 * tvd[2, :2].mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    same, _ = fdistill_objective("js", teacher.clone(), teacher, mask, rows)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_gkd_is_the_generalized_jsd_and_vanishes_on_the_teacher(batch):
    student, teacher, _, mask = batch
    loss, stats = gkd_objective(student, teacher, mask, beta=0.5)
    ps, pt = student.softmax(-1), teacher.softmax(-1)
    mix = 0.5 * ps + 0.5 * pt
    jsd = 0.5 * (pt * (pt.log() - mix.log())).sum(-1) + 0.5 * (ps * (ps.log() - mix.log())).sum(-1)
    assert loss.item() == pytest.approx(float(jsd[mask.bool()].mean()), rel=1e-5)
    same, _ = gkd_objective(teacher.clone(), teacher, mask)
    assert same.item() == pytest.approx(0.0, abs=1e-6) and stats["divergence"] > 0


def test_taken_log_probs_ignore_padding_ids(batch):
    student, _, tokens, mask = batch
    padded = torch.where(mask.bool(), tokens, -100)  # ids at padding may be anything
    lp = taken_log_probs(student, padded, mask)
    assert torch.all(lp[~mask.bool()] == 0)
    want = student.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(lp[mask.bool()], want[mask.bool()])
