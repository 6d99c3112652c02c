"""Judge prompts: versioned templates, per-task rubrics, and the token estimate of a prompt.

A template file (`templates/<protocol>.txt`) starts with a line `version: <name>`; the rest is the
prompt with `$placeholders` (string.Template; `$$` is a literal dollar). The version is part of the
cache key, so bumping it re-asks every judgment made with the old one; any change of the rendered
text (a rubric, an output, the references) changes the key as well.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).with_name("templates")
PROTOCOLS: tuple[str, ...] = ("pointwise", "pairwise")
TASK_KINDS: tuple[str, ...] = ("summarization", "translation", "dialogue", "data-to-text", "math")
DEFAULT_TASK_KIND = "data-to-text"
# References shown to the judge (the embedded task has eight; three are enough to calibrate).
MAX_REFERENCES = 3
TOKEN_ESTIMATE = "ceil(characters / 4)"

TASK_NAMES: dict[str, str] = {
    "summarization": "news summarization",
    "translation": "machine translation",
    "dialogue": "dialogue response generation",
    "data-to-text": "data-to-text generation",
    "math": "math word problem solving",
}

RUBRICS: dict[str, str] = {
    "summarization": (
        "faithfulness and coverage. A good summary states only what the input article supports "
        "(no invented or contradicted facts) and covers its main point. Penalise hallucinated "
        "facts most, then missing the main point, then redundancy."
    ),
    "translation": (
        "adequacy and fluency. A good translation conveys the full meaning of the source "
        "(nothing added, nothing dropped, nothing mistranslated) in fluent, grammatical text in "
        "the target language. Penalise meaning errors most, then omissions, then disfluency."
    ),
    "dialogue": (
        "coherence. A good response follows naturally from the dialogue history, is relevant "
        "to the last turn, is consistent with what was said before, and is fluent. Penalise "
        "off-topic or contradictory responses most, then generic ones."
    ),
    "data-to-text": (
        "faithfulness to the data. A good text states every attribute of the input record, "
        "correctly, and invents nothing that the record does not contain. Penalise invented or "
        "wrong attributes most, then missing attributes, then disfluency."
    ),
    "math": (
        "correctness. A good solution reaches the correct final answer through valid reasoning. "
        "A wrong final answer scores at most 3 whatever the reasoning; a correct answer with "
        "flawed reasoning scores at most 7."
    ),
}


class TemplateError(ValueError):
    """A template file without its version line or with unknown placeholders."""


@dataclass(frozen=True)
class Template:
    protocol: str
    version: str
    text: str

    def render(self, **values: str) -> str:
        try:
            return string.Template(self.text).substitute(values)
        except (KeyError, ValueError) as e:
            raise TemplateError(f"template {self.version}: bad placeholder {e}") from None


def parse_template(protocol: str, text: str, where: str = "<text>") -> Template:
    first, _, body = text.partition("\n")
    key, sep, version = first.partition(":")
    if key.strip() != "version" or not sep or not version.strip():
        raise TemplateError(f"{where}: the first line must be 'version: <name>'")
    return Template(protocol, version.strip(), body.strip("\n") + "\n")


def template_file(protocol: str, directory: str | Path | None = None) -> Path:
    """Where the template of `protocol` is: in `directory`, or among the packaged templates."""
    if protocol not in PROTOCOLS:
        raise TemplateError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return Path(directory or TEMPLATE_DIR) / f"{protocol}.txt"


def template_files(directory: str | Path | None = None) -> list[Path]:
    """Every template file a judge run reads (the workflow's inputs of the judge job)."""
    return [template_file(p, directory) for p in PROTOCOLS]


def load_template(protocol: str, directory: str | Path | None = None) -> Template:
    """The template of `protocol` from `directory` (default: the packaged templates)."""
    path = template_file(protocol, directory)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such template")
    return parse_template(protocol, path.read_text(encoding="utf-8"), str(path))


def load_templates(directory: str | Path | None = None) -> dict[str, Template]:
    return {p: load_template(p, directory) for p in PROTOCOLS}


def check_task_kind(kind: str) -> str:
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")
    return kind


def _references(example: dict[str, Any]) -> str:
    refs = [r for r in example.get("references") or [] if isinstance(r, str) and r.strip()]
    if not refs and example.get("target"):
        refs = [example["target"]]
    return "\n".join(f"- {r}" for r in refs[:MAX_REFERENCES]) or "(none)"


def _common(example: dict[str, Any], kind: str) -> dict[str, str]:
    check_task_kind(kind)
    return {
        "task_name": TASK_NAMES[kind],
        "rubric": RUBRICS[kind],
        "source": str(example["source"]),
        "references": _references(example),
    }


def pointwise_prompt(template: Template, example: dict[str, Any], output: str, kind: str) -> str:
    return template.render(**_common(example, kind), output=output)


def pairwise_prompt(
    template: Template, example: dict[str, Any], first: str, second: str, kind: str
) -> str:
    """`first` is shown as Response A, `second` as Response B."""
    return template.render(**_common(example, kind), output_a=first, output_b=second)


def estimate_tokens(text: str) -> int:
    """A rough token count, ceil(characters / 4) (the usual rule of thumb for English BPE)."""
    return math.ceil(len(text) / 4)
