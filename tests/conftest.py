"""Shared fixtures: the repository root and the study configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests with one intra-op thread, restoring the previous count afterwards."""
    # Tests on tiny tensors and models gain nothing from intra-op threads, and on a busy machine
    # with few cores the waiting threads make them several times slower. torch is imported here,
    # not at the top, so that test modules without it do not pay for importing it.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
