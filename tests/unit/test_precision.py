"""Mixed precision: the losses stay float32 under a bfloat16 autocast, and `auto` is float32 on the
CPU."""

from __future__ import annotations

import pytest
import torch

from ketchup.math.divergences import forward_kl
from ketchup.math.objectives import (
    MiniLLM,
    Reinforce,
    fdistill_objective,
    gkd_objective,
    minillm_objective,
    policy_gradient_objective,
)
from ketchup.math.policy_gradient import Sampler
from ketchup.models.precision import MixedPrecision, own_dtype

B, T, V = 3, 6, 11
SETTINGS = Reinforce(normalize="std", clip=2.0, uniform_ce=0.1)
PG = {"settings": SETTINGS, "sampler": Sampler(top_k=4)}
ROWS = torch.tensor([True, False, True])  # f-distill: student samples and teacher sequences

OBJECTIVES = {
    "ketchup_k2": lambda s, t, y, m: policy_gradient_objective(
        s, t, y, m, k=2, value="max", baseline="none", sequence_end="released", **PG
    ),
    "llmr_soft_mean": lambda s, t, y, m: policy_gradient_objective(
        s, t, y, m, k=1, value="soft", baseline="mean", **PG
    ),
    "llmr_minvar": lambda s, t, y, m: policy_gradient_objective(
        s, t, y, m, k=1, value="max", baseline="minvar", **PG
    ),
    "minillm": lambda s, t, y, m: minillm_objective(s, t, y, m, MiniLLM()),
    "gkd": lambda s, t, y, m: gkd_objective(s, t, m),
    "js": lambda s, t, y, m: fdistill_objective("js", s, t, m, ROWS),
    "tvd": lambda s, t, y, m: fdistill_objective("tvd", s, t, m, ROWS),
    "kl": lambda s, t, y, m: (forward_kl(s, t, m), {}),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_losses_are_float32_math_under_a_bfloat16_autocast(name):
    """bfloat16 logits, as a student under autocast and a bfloat16 teacher give them, inside the
    autocast region: the loss, its statistics and its gradient are those of float32 arithmetic on
    the same values (an op that autocast casts down, a matmul say, would make them differ)."""
    g = torch.Generator().manual_seed(1)
    student = (torch.randn(B, T, V, generator=g) * 3).bfloat16()
    teacher = (torch.randn(B, T, V, generator=g) * 3).bfloat16()
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])

    half = student.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = OBJECTIVES[name](half, teacher, tokens, mask)
    full = student.float().requires_grad_()
    expected, expected_stats = OBJECTIVES[name](full, teacher.float(), tokens, mask)

    assert loss.dtype == torch.float32
    assert torch.equal(loss, expected), (float(loss), float(expected))
    assert stats == expected_stats
    loss.backward()
    expected.backward()
    # the float32 gradient, rounded to bfloat16 once per use of the logits in the loss
    scale = float(full.grad.abs().max())
    torch.testing.assert_close(half.grad.float(), full.grad, rtol=1e-2, atol=1e-2 * scale)


def test_auto_is_float32_on_the_cpu_and_a_half_dtype_autocasts():
    model = torch.nn.Linear(4, 4)
    auto = MixedPrecision.for_model(model, "auto")
    assert auto.name == "float32" and not auto.enabled and auto.grad_scaler() is None
    with auto.autocast():
        assert model(torch.ones(1, 4)).dtype == torch.float32

    bf16 = MixedPrecision.for_model(model, "bfloat16")
    assert bf16.grad_scaler() is None  # bfloat16 has float32's range: no loss scaling
    with bf16.autocast():
        assert model(torch.ones(1, 4)).dtype == torch.bfloat16
    assert bf16.record(model) == {"weights": "float32", "compute": "bfloat16"}
    assert MixedPrecision.for_model(model, "float16").grad_scaler() is not None


def test_a_frozen_model_keeps_its_own_dtype_inside_an_autocast_region():
    teacher = torch.nn.Linear(4, 4)  # a float32 teacher beside a bfloat16 student
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with own_dtype(teacher):
            assert teacher(torch.ones(1, 4)).dtype == torch.float32
        with own_dtype(teacher, enabled=False):
            assert teacher(torch.ones(1, 4)).dtype == torch.bfloat16
