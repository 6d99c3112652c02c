"""Per-example scores: every corpus metric recomputed from them equals the library's own score."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu

from ketchup.config import TaskConfig, from_dict, section_schema, validate_with_defaults
from ketchup.data.registry import task_selection_metric
from ketchup.evaluate.metrics import rouge_scores, validation_score
from ketchup.evaluate.scoring import (
    ACCURACY,
    BLEU,
    CHRF,
    ROUGE,
    SLOT_ERROR_RATE,
    WORDS,
    metric_table,
    primary_metric,
    reference_streams,
    score_examples,
    task_metrics,
)

WORDS_POOL = [
    "the",
    "a",
    "cheap",
    "cafe",
    "near",
    "river",
    "serves",
    "italian",
    "food",
    "family",
    "friendly",
    "is",
    "and",
    "in",
]


def _corpus(seed: int, n: int = 30):
    rng = random.Random(seed)

    def sentence():
        return " ".join(rng.choice(WORDS_POOL) for _ in range(rng.randint(0, 12)))

    outputs = [sentence() for _ in range(n)]
    examples = [
        {"id": f"e{i}", "references": [sentence() or "x" for _ in range(rng.randint(1, 4))]}
        for i in range(n)
    ]
    return outputs, examples


def _task(**kwargs) -> TaskConfig:
    data = validate_with_defaults(dict(kwargs), section_schema("task"))
    return from_dict(TaskConfig, data, "task")


@pytest.mark.parametrize("seed", range(5))
def test_corpus_bleu_and_chrf_from_per_example_statistics_match_sacrebleu(seed):
    outputs, examples = _corpus(seed)
    rows = score_examples([BLEU, CHRF], outputs, examples)
    streams = reference_streams([ex["references"] for ex in examples])
    assert BLEU.value(metric_table(BLEU, rows)) == pytest.approx(
        sacrebleu.corpus_bleu(outputs, streams).score
    )
    assert CHRF.value(metric_table(CHRF, rows)) == pytest.approx(
        sacrebleu.corpus_chrf(outputs, streams).score
    )
    # a subset's corpus score is the library's score on that subset (what the bootstrap uses)
    idx = np.arange(0, len(outputs), 3)
    sub_streams = reference_streams([examples[i]["references"] for i in idx])
    assert BLEU.value(metric_table(BLEU, rows)[idx]) == pytest.approx(
        sacrebleu.corpus_bleu([outputs[i] for i in idx], sub_streams).score
    )


def test_rouge_accuracy_slot_error_and_length_columns():
    outputs, examples = _corpus(7, n=12)
    rows = score_examples(ROUGE, outputs, examples)
    expected = rouge_scores(outputs, [ex["references"] for ex in examples])
    for metric in ROUGE:
        assert metric.value(metric_table(metric, rows)) == pytest.approx(expected[metric.name])

    gsm = [{"id": "a", "references": ["#### 42"], "meta": {"answer": "42"}}] * 2
    rows = score_examples([ACCURACY], ["so #### 42", "#### 41"], gsm)
    assert [r["correct"] for r in rows] == [100.0, 0.0]
    assert ACCURACY.value(metric_table(ACCURACY, rows)) == 50.0

    record = {"name": "Ivy Cottage", "food": "Italian", "area": "riverside"}
    d2t = [{"id": "r", "references": ["x"], "meta": record}]
    text = "Ivy Cottage serves Italian food by the riverside."
    rows = score_examples([SLOT_ERROR_RATE, WORDS], [text], d2t)
    assert rows[0]["ser"] == 0.0 and rows[0]["words"] == 8
    rows = score_examples([SLOT_ERROR_RATE], ["Ivy Cottage."], d2t)
    assert rows[0]["ser"] == pytest.approx(100 * 2 / 3)


def test_task_metrics_by_task():
    embedded = task_metrics(_task(dataset="embedded"))
    assert [m.name for m in embedded] == ["bleu", "chrf", "ser", "words"]
    assert primary_metric(_task(dataset="xsum")).name == "rouge1"
    assert [m.name for m in task_metrics(_task(dataset="gsm8k"))] == ["accuracy", "words"]
    assert SLOT_ERROR_RATE.higher_is_better is False and WORDS.higher_is_better is None


def test_selection_metric_is_the_first_reported_score_unless_configured():
    assert task_selection_metric(_task(dataset="xsum")) == "rouge1"
    assert task_selection_metric(_task(dataset="embedded")) == "bleu"
    assert task_selection_metric(_task(dataset="arithmetic")) == "accuracy"
    assert task_selection_metric(_task(dataset="xsum", selection_metric="rouge2")) == "rouge2"
    outputs = ["the cheap cottage", "a pub"]
    examples = [{"references": ["the cheap cottage near"]}, {"references": ["a pub by the river"]}]
    rouge = rouge_scores(outputs, [ex["references"] for ex in examples])
    assert validation_score("rouge", outputs, examples) == rouge["rouge1"]
    assert validation_score("rouge2", outputs, examples) == rouge["rouge2"]


def test_missing_column_and_length_mismatch_are_named():
    with pytest.raises(KeyError, match="bleu_hyp_len"):
        metric_table(BLEU, [{"id": "a", "words": 3}])
    with pytest.raises(ValueError, match="outputs: 1 items but examples: 2"):
        score_examples([WORDS], ["a"], [{"id": "a"}, {"id": "b"}])
    assert np.isnan(WORDS.value(np.zeros((0, 1))))
