"""The embedded arithmetic task: determinism, splits, worked solutions checked by recomputing them
from the question's text, and the accuracy score through the registry and the scorer."""

from __future__ import annotations

import re

import pytest

from ketchup.config import EmbeddedTaskConfig, TaskConfig, parse_section
from ketchup.data.arithmetic import GAINS, LOSSES, MAX_COUNT, generate
from ketchup.data.registry import extract_answer, load_task, task_metric
from ketchup.evaluate.scoring import score_examples, task_metrics

DEFAULT = EmbeddedTaskConfig(n_train=6000, n_validation=300, n_test=500, n_references=8, seed=0)


@pytest.fixture(scope="module")
def default_task():
    return generate(DEFAULT)


def _phrase_pattern(template: str) -> str:
    return re.escape(template).replace(r"\{n\}", r"(\d+)").replace(r"\{friend\}", r"[A-Z][a-z]+")


EVENT = re.compile(
    r"(?:First|Then|Next|Finally) (?:he|she) (?:(?P<gain>"
    + "|".join(_phrase_pattern(t) for t in GAINS)
    + ")|(?P<loss>"
    + "|".join(_phrase_pattern(t) for t in LOSSES)
    + "))\\."
)


def answer_from_question(source: str) -> tuple[int, list[int]]:
    """The answer recomputed from the question's words alone, and every running count."""
    start = int(re.match(r"[A-Z][a-z]+ has (\d+) [a-z]+\.", source).group(1))
    counts = [start]
    for event in EVENT.finditer(source):
        (n,) = [int(x) for x in re.findall(r"\d+", event.group(0))]
        counts.append(counts[-1] + (n if event.group("gain") else -n))
    return counts[-1], counts


def test_same_seed_gives_identical_data_and_another_seed_other_data():
    small = EmbeddedTaskConfig(n_train=50, n_validation=5, n_test=5, n_references=1, seed=0)
    assert generate(small) == generate(small)
    other = generate(EmbeddedTaskConfig(50, 5, 5, 1, seed=1))
    assert [ex["source"] for ex in other["train"]] != [
        ex["source"] for ex in generate(small)["train"]
    ]


def test_known_output_for_seed_0_is_stable():
    # Pins the generator: a change to the templates or the order of the draws shows up here.
    first = generate(EmbeddedTaskConfig(3, 1, 1, 1, seed=0))["train"][0]
    solution = (
        "Jack starts with 15 cards. First he gives 1 of them to Zoe, so 15 - 1 = 14 cards. Then "
        "he gives 4 of them to Zoe, so 14 - 4 = 10 cards. Finally he finds 5 more, so 10 + 5 = "
        "15 cards. #### 15"
    )
    assert first == {
        "id": "arithmetic-train-00000",
        "source": "Jack has 15 cards. First he gives 1 of them to Zoe. Then he gives 4 of them "
        "to Zoe. Finally he finds 5 more. How many cards does Jack have now?",
        "target": solution,
        "references": [solution],
        "meta": {"answer": "15", "steps": 3},
    }


def test_a_split_size_change_leaves_the_other_splits_alone():
    small = generate(EmbeddedTaskConfig(200, 20, 20, 1, seed=0))
    large = generate(EmbeddedTaskConfig(400, 40, 20, 1, seed=0))
    assert large["train"][:200] == small["train"]
    assert large["validation"][:20] == small["validation"]


def test_splits_have_their_sizes_and_no_shared_sources(default_task):
    sources = {split: [ex["source"] for ex in default_task[split]] for split in default_task}
    assert {split: len(s) for split, s in sources.items()} == {
        "train": 6000,
        "validation": 300,
        "test": 500,
    }
    for split, s in sources.items():
        assert len(set(s)) == len(s), split
    assert not set(sources["validation"]) & set(sources["train"])
    assert not set(sources["test"]) & (set(sources["train"]) | set(sources["validation"]))


def test_every_solution_recomputes_from_its_question(default_task):
    # the answer and every intermediate count, from the question's words by a separate parser
    for examples in default_task.values():
        for ex in examples:
            answer, counts = answer_from_question(ex["source"])
            assert len(counts) - 1 == ex["meta"]["steps"] in (3, 4), ex["source"]
            assert all(0 <= c <= MAX_COUNT for c in counts), ex["source"]
            steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+) [a-z]+\.", ex["target"])
            assert [int(a) for a, *_ in steps] == counts[:-1], ex["target"]
            assert [int(c) for *_, c in steps] == counts[1:], ex["target"]
            for a, op, b, c in steps:  # each written step is true arithmetic
                assert int(a) + (int(b) if op == "+" else -int(b)) == int(c)
            assert ex["meta"]["answer"] == str(answer) == extract_answer(ex["target"])
            assert ex["target"].endswith(f"#### {answer}") and ex["references"] == [ex["target"]]


def test_solutions_are_40_to_70_words_and_numbers_stand_before_a_space(default_task):
    lengths = [len(ex["target"].split()) for ex in default_task["train"]]
    assert min(lengths) >= 40 and max(lengths) <= 70
    for ex in default_task["train"][:500]:
        for text in (ex["source"], ex["target"].removesuffix(ex["meta"]["answer"])):
            assert not re.search(r"\d[^\d ]", text), text


def test_answers_are_spread_out(default_task):
    # no answer a model could guess: the most common one is under 10% of the test set
    answers = [ex["meta"]["answer"] for ex in default_task["test"]]
    assert max(answers.count(a) for a in set(answers)) < 0.1 * len(answers)


def test_loaded_through_the_registry_and_scored_by_the_final_answer():
    task = parse_section(
        TaskConfig,
        {"dataset": "arithmetic", "embedded": {"n_train": 30, "n_validation": 4, "n_test": 5}},
        "task",
        "tasks.t",
    )
    assert task_metric(task) == "accuracy"
    splits = load_task("t", task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [30, 4, 5]
    test = splits["test"]
    metrics = task_metrics(task)
    assert [m.name for m in metrics] == ["accuracy", "words"]
    right = [ex["target"] for ex in test]
    # a solution that goes wrong in its first step carries the error to its final answer
    wrong = [re.sub(r"#### (\d+)$", lambda m: f"#### {int(m.group(1)) + 1}", t) for t in right]
    assert [r["correct"] for r in score_examples(metrics, right, test)] == [100.0] * 5
    assert [r["correct"] for r in score_examples(metrics, wrong, test)] == [0.0] * 5
