"""Reading the judge's answers: a 1-10 score (pointwise) or a winner A / B / tie (pairwise).

The prompts ask for one line of JSON. Parsing accepts, in this order: a JSON object anywhere in
the answer (code fences and surrounding prose are fine); then the formats of the judge literature,
which judge models fine-tuned on them keep to whatever the prompt says: MT-Bench's `[[7]]`
(`Rating: [[7]]`) and `[[A]]` / `[[B]]` / `[[C]]` (C: a tie), Arena-Hard's `[[A>B]]`, `[[A>>B]]`,
`[[A=B]]`, `[[B>A]]`, `[[B>>A]]`, and Prometheus's `[RESULT] 4` / `[RESULT] A`; then a `Score: n` /
`Winner: A` line; then an answer that is nothing but the score or the verdict. A score is read on
the prompt's 1-10 scale whatever format carries it. Anything else, a score outside 1-10, or two
different values in one answer, is *unparsed*: kept with its raw text, counted, never scored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

SCORE_MIN, SCORE_MAX = 1, 10

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_LINE = re.compile(
    rf"\b(?:score|rating)\b\s*(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*{_NUMBER}(?:\s*/\s*10)?", re.I
)
_LONE_SCORE = re.compile(rf"^\s*{_NUMBER}\s*(?:/\s*10)?\s*\.?\s*$")
_WINNER_LINE = re.compile(
    r"\b(?:winner|verdict|better(?: response)?)\b\s*(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*"
    r"[\"'\[]*\s*(response\s+a|response\s+b|a|b|tie|draw|equal)\b",
    re.I,
)
_LONE_VERDICT = re.compile(
    r"^\s*[\"'\[]*\s*(response\s+a|response\s+b|a|b|tie)\s*[\"'\]]*\.?\s*$", re.I
)
_REASON_LINE = re.compile(r"\breason\b\s*[:=]\s*(.+)", re.I)
# MT-Bench (Zheng et al. 2023): "Rating: [[7]]"; Prometheus (Kim et al. 2024): "[RESULT] 4"
_BRACKET_SCORE = re.compile(rf"\[\[\s*{_NUMBER}\s*(?:/\s*10\s*)?\]\]")
_RESULT_SCORE = re.compile(rf"\[RESULT\]\s*:?\s*\(?\s*{_NUMBER}\b", re.I)
# MT-Bench pairwise "[[A]]" / "[[B]]" / "[[C]]" (tie); Arena-Hard (Li et al. 2024) "[[A>>B]]",
# "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]"; Prometheus relative grading "[RESULT] A"
_BRACKET_VERDICT = re.compile(r"\[\[\s*(A\s*>>?\s*B|B\s*>>?\s*A|A\s*=\s*B|A|B|C)\s*\]\]")
_RESULT_VERDICT = re.compile(r"\[RESULT\]\s*:?\s*\(?\s*(A|B)\b")
_BRACKET_VERDICTS = {"A": "A", "B": "B", "C": "tie", "A>B": "A", "A>>B": "A", "B>A": "B"}
_BRACKET_VERDICTS.update({"B>>A": "B", "A=B": "tie"})

_VERDICTS = {
    "a": "A",
    "response a": "A",
    "b": "B",
    "response b": "B",
    "tie": "tie",
    "draw": "tie",
    "equal": "tie",
}


@dataclass(frozen=True)
class Parsed:
    """`value` is a float score or "A" / "B" / "tie"; None when `ok` is False."""

    ok: bool
    value: float | str | None = None
    reason: str | None = None
    problem: str | None = None


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in `text`, outermost first, left to right."""
    decoder = json.JSONDecoder()
    found, i = [], text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _reason(text: str, objects: list[dict[str, Any]]) -> str | None:
    for obj in objects:
        reason = _lower_keys(obj).get("reason")
        if isinstance(reason, str):
            return reason
    m = _REASON_LINE.search(text)
    return m.group(1).strip() if m else None


def _as_score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _LONE_SCORE.match(value)
        return float(m.group(1)) if m else None
    return None


def _unique(values: list, what: str) -> Parsed | None:
    distinct = sorted(set(values), key=str)
    if len(distinct) > 1:
        return Parsed(False, problem=f"conflicting {what}s: {', '.join(map(str, distinct))}")
    return None


def _verdict(text: str) -> str | None:
    return _VERDICTS.get(re.sub(r"\s+", " ", text.strip().strip("\"'[]").strip().lower()))


def parse_score(text: str | None) -> Parsed:
    """A pointwise answer -> score in [1, 10] (float), or unparsed with the problem."""
    if text is None or not text.strip():
        return Parsed(False, problem="empty answer")
    objects = json_objects(text)
    scores = [_as_score(_lower_keys(o)["score"]) for o in objects if "score" in _lower_keys(o)]
    if scores and any(s is None for s in scores):
        return Parsed(False, problem="the JSON score is not a number")
    if not scores:
        scores = [float(m.group(1)) for m in _BRACKET_SCORE.finditer(text)]
    if not scores:
        scores = [float(m.group(1)) for m in _RESULT_SCORE.finditer(text)]
    if not scores:
        scores = [float(m.group(1)) for m in _SCORE_LINE.finditer(text)]
    if not scores:
        m = _LONE_SCORE.match(text)
        scores = [float(m.group(1))] if m else []
    if not scores:
        return Parsed(False, problem="no score found")
    conflict = _unique(scores, "score")
    if conflict:
        return conflict
    score = scores[0]
    if not (math.isfinite(score) and SCORE_MIN <= score <= SCORE_MAX):
        return Parsed(False, problem=f"score {score:g} outside {SCORE_MIN}-{SCORE_MAX}")
    return Parsed(True, score, _reason(text, objects))


def parse_winner(text: str | None) -> Parsed:
    """A pairwise answer -> "A", "B" or "tie" (by position shown), or unparsed."""
    if text is None or not text.strip():
        return Parsed(False, problem="empty answer")
    objects = json_objects(text)
    raw = [_lower_keys(o)["winner"] for o in objects if "winner" in _lower_keys(o)]
    verdicts = [_verdict(v) if isinstance(v, str) else None for v in raw]
    if verdicts and any(v is None for v in verdicts):
        return Parsed(False, problem=f"the JSON winner {raw[0]!r} is not A, B or tie")
    if not verdicts:
        verdicts = [
            _BRACKET_VERDICTS[re.sub(r"\s+", "", m.group(1))]
            for m in _BRACKET_VERDICT.finditer(text)
        ]
    if not verdicts:
        verdicts = [_BRACKET_VERDICTS[m.group(1)] for m in _RESULT_VERDICT.finditer(text)]
    if not verdicts:
        verdicts = [_verdict(m.group(1)) for m in _WINNER_LINE.finditer(text)]
    if not verdicts:
        m = _LONE_VERDICT.match(text)
        verdicts = [_verdict(m.group(1))] if m else []
    if not verdicts:
        return Parsed(False, problem="no verdict found")
    conflict = _unique(verdicts, "verdict")
    if conflict:
        return conflict
    return Parsed(True, verdicts[0], _reason(text, objects))
