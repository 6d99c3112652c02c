"""Tiny T5 and GPT-2 architectures, their training texts and tokenizer, for tests on the CPU."""

from __future__ import annotations

import itertools

import pytest

from ketchup.data.tokenizer import train_tokenizer

NAMES = ["The Golden Fork", "Blue Spice", "The Mill", "Cotto", "Zizzi"]
FOODS = ["Italian", "French", "Chinese", "English", "Indian"]
AREAS = ["riverside", "city centre"]
PAIRS = [
    (f"name[{n}] | food[{f}] | area[{a}]", f"{n} serves {f} food in the {a} area.")
    for n, f, a in itertools.product(NAMES, FOODS, AREAS)
]
TEXTS = [text for pair in PAIRS for text in pair]

T5_ARCH = {
    "model_type": "t5",
    "d_model": 32,
    "d_ff": 64,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 2,
    "d_kv": 16,
    "dropout_rate": 0.0,
}
GPT2_ARCH = {
    "model_type": "gpt2",
    "n_embd": 32,
    "n_layer": 1,
    "n_head": 2,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
ARCHS = {"t5": T5_ARCH, "gpt2": GPT2_ARCH}


@pytest.fixture(scope="session")
def pairs() -> list[tuple[str, str]]:
    """(source, target) pairs of a toy restaurant data-to-text task, 50 of them."""
    return PAIRS


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """Every source and target of :func:`pairs`, the tokenizer's training corpus."""
    return TEXTS


@pytest.fixture(scope="session")
def archs() -> dict[str, dict]:
    """Tiny architectures by name ("t5", "gpt2"): one layer, width 32, no dropout."""
    return ARCHS


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request) -> dict:
    """Each tiny architecture in turn; tests using it run once per architecture."""
    return ARCHS[request.param]


@pytest.fixture(scope="module")
def tokenizer():
    """A 300-token BPE tokenizer trained on :func:`texts`."""
    return train_tokenizer(TEXTS, vocab_size=300)
