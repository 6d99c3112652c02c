"""The two judging protocols: the requests they send and how answers become results.

Pointwise: one request per (system, example); the answer is a 1-10 score under the task rubric.

Pairwise: for a pair A:B, two requests per example, one with A shown first (order "AB") and one
with B shown first (order "BA"), to cancel position bias. Each answer names the better *position*;
it is mapped back to an outcome for system A (win / tie / loss). The two orders are combined by
adding win = +1, tie = 0, loss = -1: a positive sum is a win for A, a negative sum a loss, zero a
tie. So A wins if it wins both orders or wins one and ties the other; inconsistent orders (A wins
one, loses the other) are a tie. If either order is unparsed (or not judged) the example has no
outcome and is counted as unparsed (not judged), not as a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ketchup.evaluate.judge.parsing import parse_score, parse_winner
from ketchup.evaluate.judge.prompts import Template, pairwise_prompt, pointwise_prompt
from ketchup.math.stats import mean_ci, rate_cis

ORDERS = ("AB", "BA")  # AB: system A is shown as Response A; BA: system B is shown first
OUTCOME_VALUE = {"win": 1, "tie": 0, "loss": -1}
COMBINATION_RULE = (
    "each order gives A win (+1), tie (0) or loss (-1); the sum over both orders decides: "
    "> 0 win, < 0 loss, 0 tie (A wins both, or wins one and ties the other = win; "
    "inconsistent orders = tie); an example with an unparsed or unjudged order has no outcome"
)

# Parse status of a request / an example
OK, UNPARSED, NOT_JUDGED = "ok", "unparsed", "not_judged"

KeyFn = Callable[[str, list[dict[str, str]]], str]  # (template version, messages) -> cache key


@dataclass(frozen=True)
class JudgeRequest:
    protocol: str
    id: str
    template_version: str
    messages: list[dict[str, str]] = field(hash=False)
    key: str
    system: str | None = None  # pointwise
    system_a: str | None = None  # pairwise: the pair is always (A, B) as given on the CLI
    system_b: str | None = None
    order: str | None = None  # pairwise: "AB" or "BA"

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def describe(self) -> dict[str, Any]:
        """The identifying fields of a judgments / prompts row."""
        row: dict[str, Any] = {"protocol": self.protocol}
        if self.protocol == "pointwise":
            row["system"] = self.system
        else:
            row.update(system_a=self.system_a, system_b=self.system_b, order=self.order)
        row.update(id=self.id, template_version=self.template_version, key=self.key)
        return row


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def pointwise_requests(
    examples: Sequence[dict[str, Any]],
    outputs: dict[str, dict[str, str]],
    template: Template,
    kind: str,
    key_fn: KeyFn,
) -> list[JudgeRequest]:
    requests = []
    for system, by_id in outputs.items():
        for ex in examples:
            messages = _messages(pointwise_prompt(template, ex, by_id[ex["id"]], kind))
            requests.append(
                JudgeRequest(
                    "pointwise",
                    ex["id"],
                    template.version,
                    messages,
                    key_fn(template.version, messages),
                    system=system,
                )
            )
    return requests


def pairwise_requests(
    examples: Sequence[dict[str, Any]],
    outputs: dict[str, dict[str, str]],
    pairs: Sequence[tuple[str, str]],
    template: Template,
    kind: str,
    key_fn: KeyFn,
) -> list[JudgeRequest]:
    requests = []
    for a, b in pairs:
        for ex in examples:
            out_a, out_b = outputs[a][ex["id"]], outputs[b][ex["id"]]
            for order, (first, second) in zip(
                ORDERS, [(out_a, out_b), (out_b, out_a)], strict=True
            ):
                messages = _messages(pairwise_prompt(template, ex, first, second, kind))
                requests.append(
                    JudgeRequest(
                        "pairwise",
                        ex["id"],
                        template.version,
                        messages,
                        key_fn(template.version, messages),
                        system_a=a,
                        system_b=b,
                        order=order,
                    )
                )
    return requests


def outcome_for_a(verdict: str, order: str) -> str:
    """A position verdict ("A" / "B" / "tie", by position shown) -> win / tie / loss for A."""
    if verdict == "tie":
        return "tie"
    a_shown_as = "A" if order == "AB" else "B"
    return "win" if verdict == a_shown_as else "loss"


def combine_orders(first: str, second: str) -> str:
    """Two per-order outcomes for A -> the example's outcome (see the module docstring)."""
    total = OUTCOME_VALUE[first] + OUTCOME_VALUE[second]
    return "win" if total > 0 else "loss" if total < 0 else "tie"


def judgment_row(request: JudgeRequest, answer: str | None, error: str | None) -> dict[str, Any]:
    """One row of judgments.jsonl; `answer` None means not judged (with `error`)."""
    row = request.describe()
    if answer is None:
        row.update(status=NOT_JUDGED, raw=None)
        if request.protocol == "pointwise":
            row.update(score=None)
        else:
            row.update(verdict=None, outcome=None)
        row.update(reason=None, problem=None, error=error)
        return row
    if request.protocol == "pointwise":
        parsed = parse_score(answer)
        score = parsed.value if parsed.ok else None
        row.update(status=OK if parsed.ok else UNPARSED, raw=answer, score=score)
    else:
        parsed = parse_winner(answer)
        verdict = parsed.value if parsed.ok else None
        outcome = outcome_for_a(verdict, request.order) if parsed.ok else None
        row.update(
            status=OK if parsed.ok else UNPARSED, raw=answer, verdict=verdict, outcome=outcome
        )
    row.update(reason=parsed.reason, problem=parsed.problem, error=None)
    return row


def pointwise_summary(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[dict]:
    table = []
    for system in systems:
        mine = [r for r in rows if r["protocol"] == "pointwise" and r["system"] == system]
        scores = [r["score"] for r in mine if r["status"] == OK]
        mean, lo, hi = mean_ci(scores)
        table.append(
            {
                "system": system,
                "n": len(scores),
                "mean_score": mean,
                "ci_low": lo,
                "ci_high": hi,
                "n_unparsed": sum(r["status"] == UNPARSED for r in mine),
                "n_not_judged": sum(r["status"] == NOT_JUDGED for r in mine),
            }
        )
    return table


def pairwise_examples(
    rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]], ids: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (pair, example): both orders' outcomes and the combined outcome."""
    by = {
        (r["system_a"], r["system_b"], r["id"], r["order"]): r
        for r in rows
        if r["protocol"] == "pairwise"
    }
    result = []
    for a, b in pairs:
        for id_ in ids:
            ab, ba = by[(a, b, id_, "AB")], by[(a, b, id_, "BA")]
            statuses = {ab["status"], ba["status"]}
            if NOT_JUDGED in statuses:
                status, outcome = NOT_JUDGED, None
            elif UNPARSED in statuses:
                status, outcome = UNPARSED, None
            else:
                status, outcome = OK, combine_orders(ab["outcome"], ba["outcome"])
            result.append(
                {
                    "system_a": a,
                    "system_b": b,
                    "id": id_,
                    "outcome_ab": ab["outcome"],
                    "outcome_ba": ba["outcome"],
                    "outcome": outcome,
                    "status": status,
                }
            )
    return result


def pairwise_summary(
    examples: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]]
) -> list[dict]:
    table = []
    for a, b in pairs:
        mine = [e for e in examples if e["system_a"] == a and e["system_b"] == b]
        outcomes = [e["outcome"] for e in mine if e["status"] == OK]
        rates = rate_cis(outcomes)
        row: dict[str, Any] = {"system_a": a, "system_b": b, "n": len(outcomes)}
        for label in ("win", "tie", "loss"):
            rate, lo, hi = rates[label]
            row.update({f"{label}_rate": rate, f"{label}_ci_low": lo, f"{label}_ci_high": hi})
        row["n_unparsed"] = sum(e["status"] == UNPARSED for e in mine)
        row["n_not_judged"] = sum(e["status"] == NOT_JUDGED for e in mine)
        table.append(row)
    return table
