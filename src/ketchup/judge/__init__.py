"""LLM-as-judge: pointwise 1-10 ratings and position-balanced pairwise comparisons of outputs.

Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, ...) through the official `openai` client.
Modules, one concept each:

    prompts    versioned templates (templates/*.txt), task rubrics, the token estimate
    parsing    reading a score or a verdict out of an answer; unparsed answers are kept, not scored
    cache      the SQLite cache of raw answers, keyed by judge, template version, decoding, prompt
    client     the API key from the environment, retries with backoff, the total-time ceiling
    protocols  the requests of each protocol, combining the two pairwise orders, the summaries
    stats      seeded bootstrap confidence intervals
    stage      `run_judge` (library) and `judge_stage` (the `ketchup judge` verb), the files written
"""

from __future__ import annotations

from ketchup.judge.cache import JudgeCache, cache_key
from ketchup.judge.parsing import Parsed, parse_score, parse_winner
from ketchup.judge.prompts import (
    RUBRICS,
    TASK_KINDS,
    Template,
    estimate_tokens,
    load_template,
    load_templates,
    parse_template,
)
from ketchup.judge.protocols import COMBINATION_RULE, combine_orders, outcome_for_a
from ketchup.judge.stage import JudgeResult, judge_stage, run_judge
from ketchup.math.stats import mean_ci, rate_cis

__all__ = [
    "COMBINATION_RULE",
    "RUBRICS",
    "TASK_KINDS",
    "JudgeCache",
    "JudgeResult",
    "Parsed",
    "Template",
    "cache_key",
    "combine_orders",
    "estimate_tokens",
    "judge_stage",
    "load_template",
    "load_templates",
    "mean_ci",
    "outcome_for_a",
    "parse_score",
    "parse_template",
    "parse_winner",
    "rate_cis",
    "run_judge",
]
