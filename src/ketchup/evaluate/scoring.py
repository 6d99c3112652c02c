"""Per-example scores of a task's outputs, and the task's metrics recomputed from them.

Every metric is a function of per-example columns, so any statistic over any subset or resample of
the examples (bootstrap intervals, permutation tests) is recomputed exactly without regenerating:

- BLEU-4 and chrF are corpus metrics: each example keeps sacreBLEU's sufficient statistics (n-gram
  matches and totals, lengths), the corpus score is sacreBLEU's own formula on their sums, and is
  identical to `sacrebleu.corpus_bleu` / `corpus_chrf` on the same outputs.
- ROUGE-1/2/L F1 (stemmed, best reference per example), exact-match accuracy (GSM8K answer
  extraction), the slot error rate (embedded data-to-text) and the output length in words are
  means of one per-example column.

Pure: no files and no models; `ketchup score` (stages/results.py) does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np

from ketchup.config import TaskConfig

NGRAM_ORDER = 4
BLEU_COLUMNS = (
    "bleu_hyp_len",
    "bleu_ref_len",
    *(f"bleu_correct_{n}" for n in range(1, NGRAM_ORDER + 1)),
    *(f"bleu_total_{n}" for n in range(1, NGRAM_ORDER + 1)),
)
CHRF_CHAR_ORDER = 6
# sacreBLEU's chrF statistics: per character n-gram order, (hypothesis, reference, matching) counts
CHRF_COLUMNS = tuple(
    f"chrf_{n}_{part}" for n in range(1, CHRF_CHAR_ORDER + 1) for part in ("hyp", "ref", "match")
)


@dataclass(frozen=True)
class Metric:
    """One column of the results tables, computed from per-example score columns."""

    name: str  # key in files: bleu, chrf, rouge1, rouge2, rougeL, accuracy, ser, words
    label: str  # what a table header shows
    columns: tuple[str, ...]  # the per-example columns it reads, in this order
    higher_is_better: bool | None  # None: descriptive only (output length)
    corpus: Literal["bleu", "chrf"] | None = None  # None: the mean of its single column

    def value(self, table: np.ndarray) -> float:
        """The metric on these rows (a rows x len(columns) array); NaN on no rows."""
        if len(table) == 0:
            return float("nan")
        if self.corpus is None:
            return float(table[:, 0].mean())
        sums = [int(round(s)) for s in table.sum(axis=0)]
        return float(_sacrebleu_metric(self.corpus)._compute_score_from_stats(sums).score)


BLEU = Metric("bleu", "BLEU", BLEU_COLUMNS, True, corpus="bleu")
CHRF = Metric("chrf", "chrF", CHRF_COLUMNS, True, corpus="chrf")
ROUGE = tuple(
    Metric(kind, f"ROUGE-{kind[5:]}", (kind,), True) for kind in ("rouge1", "rouge2", "rougeL")
)
ACCURACY = Metric("accuracy", "Accuracy", ("correct",), True)
SLOT_ERROR_RATE = Metric("ser", "SER %", ("ser",), False)
WORDS = Metric("words", "Words", ("words",), None)

# every metric by name (the keys of a score summary's "metrics")
METRICS: dict[str, Metric] = {
    m.name: m for m in (BLEU, CHRF, *ROUGE, ACCURACY, SLOT_ERROR_RATE, WORDS)
}
METRICS_BY_TASK_METRIC: dict[str, tuple[Metric, ...]] = {
    "bleu": (BLEU, CHRF),
    "rouge": ROUGE,
    "accuracy": (ACCURACY,),
}


@cache
def _sacrebleu_metric(kind: str):
    from sacrebleu.metrics import BLEU as SacreBLEU
    from sacrebleu.metrics import CHRF as SacreCHRF

    return SacreBLEU() if kind == "bleu" else SacreCHRF()


def task_metrics(task: TaskConfig) -> tuple[Metric, ...]:
    """The metrics a task reports: its own (`task_metric`), the slot error rate for the embedded
    data-to-text task, and the output length."""
    from ketchup.data.registry import task_metric

    metrics = METRICS_BY_TASK_METRIC[task_metric(task)]
    if task.dataset == "embedded":
        metrics += (SLOT_ERROR_RATE,)
    return (*metrics, WORDS)


def primary_metric(task: TaskConfig) -> Metric:
    """The metric a task is selected and compared on (the first column: BLEU, ROUGE-1, accuracy)."""
    return task_metrics(task)[0]


def signatures(metrics: Sequence[Metric]) -> dict[str, str]:
    """sacreBLEU's signature of each corpus metric among `metrics` (for the results files)."""
    return {m.name: str(_sacrebleu_metric(m.corpus).get_signature()) for m in metrics if m.corpus}


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacreBLEU's layout: one stream per reference position, None where an example has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def score_examples(
    metrics: Sequence[Metric], outputs: Sequence[str], examples: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per example: its id and every column that `metrics` read."""
    if len(outputs) != len(examples):
        raise ValueError(f"outputs: {len(outputs)} items but examples: {len(examples)}")
    rows: list[dict[str, Any]] = [{"id": ex["id"]} for ex in examples]
    if not rows:
        return rows
    references = [ex["references"] for ex in examples]
    names = {m.name for m in metrics}
    for metric in metrics:
        if metric.corpus:
            stats = _sacrebleu_metric(metric.corpus)._extract_corpus_statistics(
                list(outputs), reference_streams(references)
            )
            for row, values in zip(rows, stats, strict=True):
                row.update(zip(metric.columns, (int(v) for v in values), strict=True))
    if names & {"rouge1", "rouge2", "rougeL"}:
        from rouge_score import rouge_scorer

        kinds = [m.name for m in ROUGE if m.name in names]
        scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
        for row, output, refs in zip(rows, outputs, references, strict=True):
            best = scorer.score_multi(list(refs), output)
            row.update({kind: 100.0 * best[kind].fmeasure for kind in kinds})
    if "accuracy" in names:
        from ketchup.data.registry import extract_answer

        for row, output, ex in zip(rows, outputs, examples, strict=True):
            gold = ex["meta"].get("answer")
            row["correct"] = 100.0 * (gold is not None and extract_answer(output) == gold)
    if "ser" in names:
        from ketchup.data.embedded import slot_error_rate

        for row, output, ex in zip(rows, outputs, examples, strict=True):
            row["ser"] = 100.0 * slot_error_rate(ex["meta"], output)
    if "words" in names:
        for row, output in zip(rows, outputs, strict=True):
            row["words"] = len(output.split())
    return rows


def metric_table(metric: Metric, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """The rows x columns array a metric is computed from; a clear error for a missing column."""
    missing = [c for c in metric.columns if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"score rows have no column {missing[0]!r} (needed by {metric.label})")
    return np.array([[float(row[c]) for c in metric.columns] for row in rows], dtype=float)
