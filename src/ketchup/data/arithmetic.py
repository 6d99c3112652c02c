"""The embedded arithmetic task: GSM8K-style word problems with worked solutions, made from a seed.

A problem is a person, a kind of item, a starting count and three or four events, each adding or
taking away a small number of items; the question asks how many are left. The target is a worked
solution of one sentence per event, each ending in the running count, then the GSM8K answer line:

    source: Mia has 12 shells. First she finds 5 more. Then she gives 3 of them to Tom.
            Finally she sells 4 of them. How many shells does Mia have now?
    target: Mia starts with 12 shells. First she finds 5 more, so 12 + 5 = 17 shells. Then she
            gives 3 of them to Tom, so 17 - 3 = 14 shells. Finally she sells 4 of them, so
            14 - 4 = 10 shells. #### 10

Every step computes on the previous step's result, so one wrong sum early in a solution carries
to its final answer: a model's own mistakes compound over its output, which is the exposure bias
that on-policy distillation is meant to correct, and the task is scored by the exact match of the
final answer (`metric: accuracy`, read after '####' as for GSM8K). Solutions are 40 to 70 words.
Every number stands before a space, never against punctuation, so that a word-level tokenizer
gives a number one token wherever it occurs.

Counts stay between 0 and MAX_COUNT and each event moves them by 1 to MAX_CHANGE, so the sums a
model must learn are about two hundred facts, and test problems (whose sources never occur in
training or validation) recombine them. Everything is a function of the seed through
`random.Random` streams seeded by strings, so the data are the same on every machine.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING

from ketchup.data.draws import distinct_draws, random_stream

if TYPE_CHECKING:
    from ketchup.config import EmbeddedTaskConfig

MIN_EVENTS = 3
MAX_EVENTS = 4
MIN_START = 5
MAX_START = 15
MAX_COUNT = 20  # a running count never leaves [0, MAX_COUNT]
MAX_CHANGE = 5  # an event adds or takes away 1 .. MAX_CHANGE items
# Each event opens with the word of its place, in the question and in the solution alike, so the
# solution's k-th step finds the question's k-th event by that word.
ORDER = {3: ("First", "Then", "Finally"), 4: ("First", "Then", "Next", "Finally")}

# (name, pronoun)
PEOPLE: tuple[tuple[str, str], ...] = (
    ("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"),
    ("Sam", "He"), ("Ivy", "She"), ("Max", "He"), ("Lily", "She"), ("Ben", "He"),
    ("Emma", "She"), ("Jack", "He"), ("Nora", "She"), ("Omar", "He"), ("Ruby", "She"),
    ("Finn", "He"),
)  # fmt: skip
ITEMS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "books", "coins", "shells", "cards", "pencils",
    "stamps", "cookies", "balloons", "eggs",
)  # fmt: skip
# Events as the question tells them and the solution repeats them; {n} the change, {friend} a name.
GAINS: tuple[str, ...] = (
    "buys {n} more",
    "finds {n} more",
    "gets {n} more from {friend}",
    "wins {n} more",
)
LOSSES: tuple[str, ...] = (
    "gives {n} of them to {friend}",
    "loses {n} of them",
    "sells {n} of them",
    "uses {n} of them",
)

DEFAULT_PROMPT = "{source}"


def sample_problem(rng: random.Random) -> dict:
    """One problem: who, what, the starting count and the events as (sign, change, phrase)."""
    name, pronoun = rng.choice(PEOPLE)
    friend = rng.choice([p for p, _ in PEOPLE if p != name])
    start = count = rng.randint(MIN_START, MAX_START)
    events = []
    for _ in range(rng.randint(MIN_EVENTS, MAX_EVENTS)):
        gain = rng.random() < 0.5
        if count + 1 > MAX_COUNT:
            gain = False
        elif count - 1 < 0:
            gain = True
        room = MAX_COUNT - count if gain else count
        n = rng.randint(1, min(MAX_CHANGE, room))
        phrase = rng.choice(GAINS if gain else LOSSES).format(n=n, friend=friend)
        events.append((1 if gain else -1, n, phrase))
        count += n if gain else -n
    return {
        "name": name,
        "pronoun": pronoun,
        "item": rng.choice(ITEMS),
        "start": start,
        "events": events,
    }


def question(problem: dict) -> str:
    """The word problem: the start, one sentence per event, the question."""
    p = problem
    parts = [f"{p['name']} has {p['start']} {p['item']}."]
    order = ORDER[len(p["events"])]
    pronoun = p["pronoun"].lower()
    events = zip(order, p["events"], strict=True)
    parts += [f"{o} {pronoun} {phrase}." for o, (_, _, phrase) in events]
    parts.append(f"How many {p['item']} does {p['name']} have now?")
    return " ".join(parts)


def solve(problem: dict) -> tuple[str, int]:
    """The worked solution (one step per event, then '#### <answer>') and the answer."""
    p = problem
    count = p["start"]
    parts = [f"{p['name']} starts with {count} {p['item']}."]
    pronoun = p["pronoun"].lower()
    for o, (sign, n, phrase) in zip(ORDER[len(p["events"])], p["events"], strict=True):
        result = count + sign * n
        op = "+" if sign > 0 else "-"
        parts.append(f"{o} {pronoun} {phrase}, so {count} {op} {n} = {result} {p['item']}.")
        count = result
    parts.append(f"#### {count}")
    return " ".join(parts), count


def generate(cfg: EmbeddedTaskConfig) -> dict[str, list[dict]]:
    """The task's splits in the example format, a deterministic function of `cfg`.

    `cfg.n_train`, `n_validation` and `n_test` problems with distinct sources; a validation or test
    source never occurs in training, and a test source never in validation. Each split draws from
    its own stream, so a larger split starts with the problems of a smaller one. One reference per
    problem, its worked solution (`cfg.n_references` is the restaurant task's); `meta.answer` is
    the final count, which accuracy is scored against.
    """
    sizes = {"train": cfg.n_train, "validation": cfg.n_validation, "test": cfg.n_test}
    seen: set[str] = set()  # membership only: sources of the splits drawn so far
    out: dict[str, list[dict]] = {}
    for split in ("train", "validation", "test"):
        rng = random_stream("arithmetic", cfg.seed, split)
        problems = distinct_draws(
            functools.partial(sample_problem, rng),
            question,
            sizes[split],
            f"arithmetic {split} problems",
            exclude=seen,
        )
        examples: list[dict] = []
        for i, problem in enumerate(problems):
            solution, answer = solve(problem)
            examples.append(
                {
                    "id": f"arithmetic-{split}-{i:05d}",
                    "source": question(problem),
                    "target": solution,
                    "references": [solution],
                    "meta": {"answer": str(answer), "steps": len(problem["events"])},
                }
            )
        seen |= {example["source"] for example in examples}
        out[split] = examples
    return out
