"""The README's commands and docs/methods.md's losses-as-a-library example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

README = (ROOT / "README.md").read_text()
METHODS = (ROOT / "docs" / "methods.md").read_text()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_library_example_runs_and_trains():
    blocks = _python_blocks(METHODS)
    assert blocks, "docs/methods.md has no ```python example"
    namespace: dict = {}
    exec(compile(blocks[0], "docs/methods.md", "exec"), namespace)  # noqa: S102 (our own docs)
    loss, student_logits = namespace["loss"], namespace["student_logits"]
    assert loss.dim() == 0 and student_logits.grad is not None
    assert float(student_logits.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    "command",
    [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . "
        "&& snakemake --cores all",
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest',
    ],
)
def test_the_two_commands_are_the_readmes_and_ci_runs_the_second(command):
    assert command in README
    if "pytest" in command:
        assert command in (ROOT / ".ci" / "run").read_text()
