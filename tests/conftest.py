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


# The paper's configs and the stand-in family their models are replaced by.
PAPER_CONFIGS = {
    "t5": ROOT / "configs" / "paper.yaml",
    "qwen2": ROOT / "configs" / "paper_qwen.yaml",
}


@pytest.fixture(scope="session")
def paper_standins(tmp_path_factory):
    """Tiny stand-ins of the paper's hub models (T5 v1.1 / T5, Qwen2) and datasets in the hub's
    row formats (tests/standins.py), each family trained on its config's prompts; built once."""
    import torch
    import yaml
    from standins import build

    prompts = {
        family: {
            t["dataset"]: t.get("prompt")
            for t in yaml.safe_load(path.read_text())["tasks"].values()
        }
        for family, path in PAPER_CONFIGS.items()
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only wait on a busy machine
    try:
        return build(tmp_path_factory.mktemp("standins"), prompts)
    finally:
        torch.set_num_threads(threads)


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


# The longest test files, longest first (measured by .ci/run's --durations): a worker that takes
# one of them last would end long after the others.
LONGEST_FIRST = {"test_smoke_study": 0, "test_paper": 1, "test_slurm": 2, "test_workflow": 3}


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first (each module's tests kept together, in their order), so that
    pytest-xdist's workers start the long ones early and end together. Tests marked `gpu` need a
    CUDA device: skipped without one, so that a marker expression that replaces the default
    `-m 'not gpu'` (`pytest -m "not slow"`) still passes on a CPU."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: (
            item.module.__name__ not in slow_modules,
            LONGEST_FIRST.get(item.module.__name__, len(LONGEST_FIRST)),
        )
    )
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_tests:
        item.add_marker(skip)
