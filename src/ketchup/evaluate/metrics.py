"""Task metrics, computed offline with the libraries HF `evaluate` wraps (sacreBLEU, rouge-score).

`validation_score` is the single number that model selection maximises (the paper's protocol:
keep the checkpoint with the best validation metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def corpus_bleu(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (sacreBLEU defaults: 13a tokenisation, exp smoothing) with multiple references.

    Examples may have different numbers of references: sacreBLEU takes one stream per reference
    position, with None where an example has fewer.
    """
    import sacrebleu

    from ketchup.evaluate.scoring import reference_streams

    if len(outputs) != len(references):
        raise ValueError(f"outputs: {len(outputs)} items but references: {len(references)}")
    if not outputs:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(outputs), reference_streams(references)).score)


def rouge_scores(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x 100 with stemming; with several references, the best per example."""
    from rouge_score import rouge_scorer

    if len(outputs) != len(references):
        raise ValueError(f"outputs: {len(outputs)} items but references: {len(references)}")
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for output, refs in zip(outputs, references, strict=True):
        best = scorer.score_multi(list(refs), output)
        for kind in kinds:
            totals[kind] += best[kind].fmeasure
    n = max(len(outputs), 1)
    return {kind: 100.0 * total / n for kind, total in totals.items()}


def answer_accuracy(outputs: Sequence[str], gold: Sequence[str | None]) -> float:
    """Exact match of the extracted final answer (GSM8K), x 100."""
    from ketchup.data.registry import extract_answer

    if not outputs:
        return 0.0
    hits = sum(g is not None and extract_answer(o) == g for o, g in zip(outputs, gold, strict=True))
    return 100.0 * hits / len(outputs)


SELECTION_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "accuracy")


def validation_score(metric: str, outputs: Sequence[str], examples: Sequence[dict[str, Any]]):
    """The model-selection number (higher is better): `metric` is one of SELECTION_METRICS, or a
    task metric family, which selects by its first reported metric (bleu -> BLEU, rouge ->
    ROUGE-1, as the released KETCHUP code selects, accuracy -> accuracy)."""
    import sacrebleu

    from ketchup.data.catalog import first_reported
    from ketchup.evaluate.scoring import reference_streams

    references = [ex["references"] for ex in examples]
    metric = first_reported(metric)
    if metric == "bleu":
        return corpus_bleu(outputs, references)
    if metric == "chrf":
        return float(sacrebleu.corpus_chrf(list(outputs), reference_streams(references)).score)
    if metric in ("rouge1", "rouge2", "rougeL"):
        return rouge_scores(outputs, references)[metric]
    if metric == "accuracy":
        return answer_accuracy(outputs, [ex["meta"].get("answer") for ex in examples])
    raise ValueError(f"metric: unknown {metric!r}; known: {', '.join(SELECTION_METRICS)}, rouge")
