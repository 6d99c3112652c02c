"""The `ketchup judge` stage: inputs, the run (or dry run), and the files it writes.

`run_judge` is the library entry point; `judge_stage` parses the CLI arguments and calls it.
`judge.enabled` decides whether the workflow runs this stage; the verb itself always runs.

Files under OUT_DIR (all written atomically):
    judgments.jsonl          one row per request: system(s), id, protocol, order, raw answer,
                             parsed score / verdict and outcome for A, status ok / unparsed /
                             not_judged (with the error)
    pairwise_examples.jsonl  one row per (pair, example): both orders and the combined outcome
    pointwise_summary.csv    system, n, mean score, 95% CI, n unparsed, n not judged
    pairwise_summary.csv     A, B, n, win / tie / loss rates with 95% CIs, n unparsed, not judged
    report.md                the two tables, the combination rule, the CI method
    judge.config.json        the resolved config and inputs (the key's variable name, never the key)
A dry run writes prompts.jsonl (every exact request with its token estimate), dry_run.json (the
totals) and judge.config.json, and neither creates a client nor sends anything.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ketchup.evaluate.judge.client as judge_client
from ketchup.config import ConfigError, JudgeConfig, parse_section, to_dict
from ketchup.data.registry import TaskDataError
from ketchup.evaluate.judge.cache import JudgeCache, cache_key, cached_keys
from ketchup.evaluate.judge.prompts import (
    DEFAULT_TASK_KIND,
    TASK_KINDS,
    TOKEN_ESTIMATE,
    Template,
    check_task_kind,
    estimate_tokens,
    load_templates,
)
from ketchup.evaluate.judge.protocols import (
    COMBINATION_RULE,
    NOT_JUDGED,
    UNPARSED,
    JudgeRequest,
    judgment_row,
    pairwise_examples,
    pairwise_requests,
    pairwise_summary,
    pointwise_requests,
    pointwise_summary,
)
from ketchup.files import (
    csv_text,
    read_jsonl,
    resolved_config_name,
    write_json,
    write_jsonl,
    write_resolved_config,
    write_text,
)
from ketchup.math.stats import METHOD as CI_METHOD

STAGE = "judge"
EXIT_INCOMPLETE = 3
# More than this share of the answers unparsed: the judge does not answer in a format the parser
# reads, and its tables would be nearly empty; the run fails (exit EXIT_UNPARSED) saying so.
UNPARSED_LIMIT = 0.5
EXIT_UNPARSED = 4
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

JUDGMENTS = "judgments.jsonl"
PAIRWISE_EXAMPLES = "pairwise_examples.jsonl"
POINTWISE_CSV = "pointwise_summary.csv"
PAIRWISE_CSV = "pairwise_summary.csv"
REPORT = "report.md"
PROMPTS = "prompts.jsonl"
DRY_RUN = "dry_run.json"
CONFIG = resolved_config_name(STAGE)
# Every file a judge run writes (the workflow declares them as the job's outputs), all but the
# answer cache, which outlives a run on purpose; the first is the one tables and figures wait for.
ANSWER_FILES = (REPORT, POINTWISE_CSV, PAIRWISE_CSV, JUDGMENTS, PAIRWISE_EXAMPLES, CONFIG)
DRY_RUN_FILES = (DRY_RUN, PROMPTS, CONFIG)

POINTWISE_COLUMNS = [
    "system",
    "n",
    "mean_score",
    "ci_low",
    "ci_high",
    "n_unparsed",
    "n_not_judged",
]
PAIRWISE_COLUMNS = [
    "system_a",
    "system_b",
    "n",
    *(f"{label}_{x}" for label in ("win", "tie", "loss") for x in ("rate", "ci_low", "ci_high")),
    "n_unparsed",
    "n_not_judged",
]


@dataclass
class JudgeResult:
    out_dir: Path
    dry_run: bool
    n_requests: int  # judgments (rows), both pairwise orders counted
    n_prompts: int  # distinct prompts (cache keys): what a cold run sends
    n_cached: int  # distinct prompts answered before this run
    n_sent: int = 0  # distinct prompts sent in this run
    n_unparsed: int = 0
    n_not_judged: int = 0
    not_judged_reasons: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    unparsed_example: str | None = None  # one unparsed answer's raw text

    @property
    def complete(self) -> bool:
        return self.n_not_judged == 0

    @property
    def unparsed_share(self) -> float:
        """The share of the answers received that could not be parsed (0 with none)."""
        answered = self.n_requests - self.n_not_judged
        return self.n_unparsed / answered if answered else 0.0

    @property
    def mostly_unparsed(self) -> bool:
        return self.unparsed_share > UNPARSED_LIMIT


# ----------------------------------------------------------------------------------------------
# Inputs


def parse_system(text: str) -> tuple[str, str]:
    """'NAME=FILE' -> (name, file)."""
    name, sep, path = text.partition("=")
    if not sep or not NAME.match(name) or not path:
        raise ConfigError(f"--system {text!r}: expected NAME=FILE (NAME: letters, digits, _.-)")
    return name, path


def parse_pair(text: str) -> tuple[str, str]:
    """'A:B' -> (a, b)."""
    a, sep, b = text.partition(":")
    if not sep or not NAME.match(a) or not NAME.match(b):
        raise ConfigError(f"--pair {text!r}: expected A:B, two system names")
    if a == b:
        raise ConfigError(f"--pair {text!r}: a system cannot be compared with itself")
    return a, b


def load_examples(path: str | Path, max_examples: int | None) -> list[dict[str, Any]]:
    """The first `max_examples` rows of the data file (the same ids for every system)."""
    rows = read_jsonl(path)
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        for key in ("id", "source"):
            if key not in row:
                raise TaskDataError(f"{path}, row {i}: missing field {key!r}")
        if row["id"] in seen:
            raise TaskDataError(f"{path}, row {i}: duplicate id {row['id']!r}")
        seen.add(row["id"])
    if not rows:
        raise TaskDataError(f"{path}: no examples")
    return rows[:max_examples] if max_examples else rows


def load_outputs(path: str | Path, ids: Sequence[str], system: str) -> dict[str, str]:
    """id -> output of one system, for `ids`; every id must be there."""
    outputs: dict[str, str] = {}
    for i, row in enumerate(read_jsonl(path), start=1):
        if "id" not in row or not isinstance(row.get("output"), str):
            raise TaskDataError(f"{path} (system {system}), row {i}: needs 'id' and 'output' text")
        if row["id"] in outputs and outputs[row["id"]] != row["output"]:
            raise TaskDataError(f"{path} (system {system}): two outputs for id {row['id']!r}")
        outputs[row["id"]] = row["output"]
    missing = [i for i in ids if i not in outputs]
    if missing:
        raise TaskDataError(
            f"{path} (system {system}): no output for {len(missing)} of the {len(ids)} judged "
            f"ids, e.g. {', '.join(map(repr, missing[:3]))}"
        )
    return {i: outputs[i] for i in ids}


# ----------------------------------------------------------------------------------------------
# The run


def build_requests(
    cfg: JudgeConfig,
    examples: Sequence[dict[str, Any]],
    outputs: dict[str, dict[str, str]],
    pairs: Sequence[tuple[str, str]],
    task_kind: str,
    templates: dict[str, Template],
) -> list[JudgeRequest]:
    decoding = judge_client.decoding(cfg)

    def key_fn(version: str, messages: list[dict[str, str]]) -> str:
        return cache_key(
            model=cfg.model,
            base_url=cfg.base_url,
            template_version=version,
            decoding=decoding,
            messages=messages,
        )

    requests: list[JudgeRequest] = []
    if "pointwise" in cfg.protocols:
        requests += pointwise_requests(examples, outputs, templates["pointwise"], task_kind, key_fn)
    if "pairwise" in cfg.protocols:
        requests += pairwise_requests(
            examples, outputs, pairs, templates["pairwise"], task_kind, key_fn
        )
    return requests


def _check_inputs(cfg: JudgeConfig, outputs: dict, pairs: Sequence[tuple[str, str]]) -> None:
    if not cfg.model:
        raise ConfigError("config key 'judge.model': required to judge (the judge model's name)")
    if not outputs:
        raise ConfigError("no systems to judge: give --system NAME=FILE at least once")
    for a, b in pairs:
        for name in (a, b):
            if name not in outputs:
                raise ConfigError(
                    f"--pair {a}:{b}: no system {name!r}; systems: {', '.join(outputs)}"
                )
    if len(set(pairs)) != len(pairs):
        raise ConfigError("--pair: the same pair is given twice")


def run_judge(
    cfg: JudgeConfig,
    *,
    examples: Sequence[dict[str, Any]],
    outputs: dict[str, dict[str, str]],
    pairs: Sequence[tuple[str, str]] = (),
    task_kind: str = DEFAULT_TASK_KIND,
    cache_path: str | Path,
    out_dir: str | Path,
    templates: dict[str, Template] | None = None,
    inputs: dict[str, Any] | None = None,
    backoff_s: float = 0.5,
    progress: bool = True,
    log=print,
) -> JudgeResult:
    """Judge `outputs` (system -> id -> text) on `examples` and write the results to `out_dir`.

    Examples beyond `cfg.max_examples` are dropped (the first N, the same for every system).
    Raises ConfigError for a bad config or a missing API key variable; a run that leaves requests
    unjudged (time ceiling, failures) still writes everything and returns complete == False.
    """
    check_task_kind(task_kind)
    pairs = [tuple(p) for p in pairs]
    _check_inputs(cfg, outputs, pairs)
    if "pairwise" in cfg.protocols and not pairs:
        log("judge: pairwise protocol on but no --pair given; only pointwise is run")
    examples = list(examples)[: cfg.max_examples]
    ids = [ex["id"] for ex in examples]
    outputs = {s: {i: by_id[i] for i in ids} for s, by_id in outputs.items()}
    templates = templates or load_templates()
    out_dir = Path(out_dir)
    requests = build_requests(cfg, examples, outputs, pairs, task_kind, templates)
    unique = {r.key: r for r in requests}  # identical prompts are asked once
    resolved = {
        "task_kind": task_kind,
        "systems": list(outputs),
        "pairs": [f"{a}:{b}" for a, b in pairs],
        "n_examples": len(examples),
        "templates": {p: t.version for p, t in templates.items()},
        "cache": str(cache_path),
        **(inputs or {}),
    }

    if cfg.dry_run:
        return _dry_run(cfg, requests, unique, cache_path, out_dir, resolved, log)

    api_key = judge_client.api_key_from_env(cfg)  # before anything is written
    start = time.monotonic()
    result = JudgeResult(out_dir, False, len(requests), len(unique), 0)
    answers: dict[str, str] = {}
    failures: dict[str, judge_client.Failure] = {}
    with JudgeCache(cache_path) as cache:
        answers.update(cache.get_many(list(unique)))
        result.n_cached = len(answers)
        todo = [(k, r.messages) for k, r in unique.items() if k not in answers]
        log(
            f"judge: {len(requests)} judgments, {len(unique)} distinct prompts, "
            f"{result.n_cached} cached, {len(todo)} to send to {cfg.model} "
            f"({cfg.base_url or 'OpenAI'}), {cfg.concurrency} at a time"
        )
        if todo:
            client = judge_client.JudgeClient(cfg, api_key, backoff_s=backoff_s)
            bar = _progress(len(todo), progress)

            def on_result(key: str, outcome) -> None:
                if isinstance(outcome, judge_client.Answer):
                    request = unique[key]
                    cache.put(  # committed at once: an interrupted run loses nothing answered
                        key,
                        outcome.text,
                        model=cfg.model,
                        base_url=cfg.base_url,
                        template_version=request.template_version,
                        decoding=judge_client.decoding(cfg),
                        messages=request.messages,
                        usage=outcome.usage,
                    )
                    answers[key] = outcome.text
                    result.n_sent += 1
                else:
                    failures[key] = outcome
                    result.n_sent += int(outcome.attempts > 0)
                bar.update(1)

            try:
                judge_client.send_all(
                    client, todo, concurrency=cfg.concurrency, on_result=on_result
                )
            finally:
                bar.close()

    rows = []
    for r in requests:
        failure = failures.get(r.key)
        error = None if failure is None else f"{failure.reason}: {failure.error}"
        rows.append(judgment_row(r, answers.get(r.key), error))
    for key, failure in failures.items():
        n = sum(r.key == key for r in requests)
        result.not_judged_reasons[failure.reason] += n
    unparsed = [row for row in rows if row["status"] == UNPARSED]
    result.n_unparsed = len(unparsed)
    result.unparsed_example = unparsed[0]["raw"] if unparsed else None
    result.n_not_judged = sum(row["status"] == NOT_JUDGED for row in rows)
    result.elapsed_s = time.monotonic() - start
    _write_results(cfg, rows, outputs, pairs, ids, out_dir, resolved, result)
    return result


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="judge", unit="req", disable=not enabled, file=sys.stderr)


def _dry_run(cfg, requests, unique, cache_path, out_dir, resolved, log) -> JudgeResult:
    cached = cached_keys(cache_path, list(unique))
    decoding = judge_client.decoding(cfg)
    rows, seen = [], set()
    for r in requests:
        tokens = sum(estimate_tokens(m["content"]) for m in r.messages)
        rows.append(
            {
                **r.describe(),
                "request": {"model": cfg.model, "messages": r.messages, **decoding},
                "prompt_tokens_estimate": tokens,
                "cached": r.key in cached,
                "duplicate": r.key in seen,
            }
        )
        seen.add(r.key)
    to_send = [row for row in rows if not row["cached"] and not row["duplicate"]]
    prompt_tokens = sum(row["prompt_tokens_estimate"] for row in to_send)
    totals = {
        "n_requests": len(requests),
        "n_distinct_prompts": len(unique),
        "n_cached": len(cached),
        "n_to_send": len(to_send),
        "prompt_tokens_estimate": prompt_tokens,
        "max_completion_tokens": len(to_send) * cfg.max_tokens,
        "max_total_tokens_estimate": prompt_tokens + len(to_send) * cfg.max_tokens,
        "token_estimate": TOKEN_ESTIMATE,
    }
    write_jsonl(out_dir / PROMPTS, rows)
    write_json(out_dir / DRY_RUN, totals)
    write_resolved_config(out_dir, STAGE, to_dict(cfg), **resolved)
    log(
        f"judge (dry run): {len(requests)} judgments, {len(to_send)} prompts to send, about "
        f"{prompt_tokens:,} prompt tokens ({TOKEN_ESTIMATE}) + at most "
        f"{totals['max_completion_tokens']:,} completion tokens; written to {out_dir / PROMPTS}"
    )
    return JudgeResult(out_dir, True, len(requests), len(unique), len(cached))


# ----------------------------------------------------------------------------------------------
# Outputs


def _fmt_ci(value: float, lo: float, hi: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def render_report(
    cfg: JudgeConfig,
    resolved: dict[str, Any],
    point: Sequence[dict[str, Any]],
    pair: Sequence[dict[str, Any]],
    n_requests: int,
    n_unparsed: int,
    n_not_judged: int,
) -> str:
    templates = ", ".join(resolved["templates"][p] for p in cfg.protocols)
    lines = [
        "# LLM-as-judge",
        "",
        f"- Judge: `{cfg.model}` at `{cfg.base_url or judge_client.OPENAI_BASE_URL}` "
        f"(temperature {cfg.temperature:g}, max_tokens {cfg.max_tokens})",
        f"- Task kind: {resolved['task_kind']}; templates: {templates}",
        f"- Examples per system: {resolved['n_examples']} (the first ids of the data file)",
        f"- Judgments: {n_requests}; unparsed: {n_unparsed}; not judged: {n_not_judged}",
    ]
    if n_not_judged:
        lines += [
            "",
            f"**Incomplete:** {n_not_judged} judgments were not made; rerunning resumes from "
            "the cache and sends only those.",
        ]
    if "pointwise" in cfg.protocols:
        lines += [
            "",
            "## Pointwise (score 1-10, mean with 95% CI)",
            "",
            "| system | n | mean score | unparsed | not judged |",
            "|---|---:|---|---:|---:|",
        ]
        for r in point:
            ci = _fmt_ci(r["mean_score"], r["ci_low"], r["ci_high"], 2)
            lines.append(
                f"| {r['system']} | {r['n']} | {ci} | {r['n_unparsed']} | {r['n_not_judged']} |"
            )
    if "pairwise" in cfg.protocols and pair:
        lines += [
            "",
            "## Pairwise (A vs B, both presentation orders; rates with 95% CI)",
            "",
            "| A | B | n | win | tie | loss | unparsed | not judged |",
            "|---|---|---:|---|---|---|---:|---:|",
        ]
        for r in pair:
            rates = [
                _fmt_ci(r[f"{x}_rate"], r[f"{x}_ci_low"], r[f"{x}_ci_high"], 2)
                for x in ("win", "tie", "loss")
            ]
            lines.append(
                f"| {r['system_a']} | {r['system_b']} | {r['n']} | {' | '.join(rates)} | "
                f"{r['n_unparsed']} | {r['n_not_judged']} |"
            )
        lines += ["", f"Combining the two orders: {COMBINATION_RULE}."]
    lines += [
        "",
        f"Confidence intervals: {CI_METHOD}. Unparsed answers are kept with their raw text in "
        f"{JUDGMENTS} and never scored.",
        "",
    ]
    return "\n".join(lines)


def _write_results(cfg, rows, outputs, pairs, ids, out_dir, resolved, result) -> None:
    point = pointwise_summary(rows, list(outputs)) if "pointwise" in cfg.protocols else []
    examples = pairwise_examples(rows, pairs, ids) if "pairwise" in cfg.protocols else []
    pair = pairwise_summary(examples, pairs) if "pairwise" in cfg.protocols else []
    write_jsonl(out_dir / JUDGMENTS, rows)
    write_jsonl(out_dir / PAIRWISE_EXAMPLES, examples)
    write_text(out_dir / POINTWISE_CSV, csv_text(point, POINTWISE_COLUMNS))
    write_text(out_dir / PAIRWISE_CSV, csv_text(pair, PAIRWISE_COLUMNS))
    report = render_report(
        cfg, resolved, point, pair, len(rows), result.n_unparsed, result.n_not_judged
    )
    write_text(out_dir / REPORT, report)
    write_resolved_config(out_dir, STAGE, to_dict(cfg), **resolved)


def resolve_pairs(
    pairs: Sequence[tuple[str, str]], score_files: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str]]:
    """Pairs with `ketchup` / `baseline` replaced by the systems the validation scores select
    (KETCHUP's best K, the best non-RL baseline), as the results tables select them. A pair whose
    alias selects nothing (no such runs) is left out, with a note."""
    if not score_files:
        return list(pairs)
    from ketchup.report.results import collect, load_run

    cells = collect([load_run(path) for path in score_files])
    if len(cells) != 1:
        raise ConfigError(f"--scores: expected the runs of one task and student, got {len(cells)}")
    aliases = {"ketchup": cells[0].best_k_system(), "baseline": cells[0].best_baseline()}
    resolved = []
    for pair in pairs:
        a, b = (aliases.get(name, name) for name in pair)
        if a is None or b is None:
            print(f"judge: pair {pair[0]}:{pair[1]} left out: no runs to select from")
        elif a not in names or b not in names:
            raise ConfigError(f"--pair {pair[0]}:{pair[1]} selects {a}:{b}; give both as --system")
        else:
            resolved.append((a, b))
    return list(dict.fromkeys(resolved))


# ----------------------------------------------------------------------------------------------
# CLI


def judge_stage(args) -> int:
    """`ketchup judge`: 0 when every judgment was made, 3 when some were left (rerun resumes)."""
    cfg = parse_section(JudgeConfig, args.config_json, "judge", "judge")
    systems = [parse_system(s) for s in args.system]
    names = [name for name, _ in systems]
    if len(set(names)) != len(names):
        raise ConfigError(f"--system: a name is given twice ({', '.join(names)})")
    pairs = resolve_pairs([parse_pair(p) for p in args.pair or []], args.scores, names)
    if args.task_kind not in TASK_KINDS:
        raise ConfigError(f"--task-kind {args.task_kind!r}: known kinds: {', '.join(TASK_KINDS)}")
    examples = load_examples(args.data, cfg.max_examples)
    ids = [ex["id"] for ex in examples]
    outputs = {name: load_outputs(path, ids, name) for name, path in systems}
    templates_dir = args.templates_dir or cfg.templates_dir
    templates = load_templates(templates_dir) if templates_dir else None
    inputs = {
        "data": str(args.data),
        "system_files": dict(systems),
        "templates_dir": templates_dir,
    }
    result = run_judge(
        cfg,
        examples=examples,
        outputs=outputs,
        pairs=pairs,
        task_kind=args.task_kind,
        cache_path=args.cache,
        out_dir=args.out_dir,
        templates=templates,
        inputs=inputs,
    )
    if result.dry_run:
        return 0
    print(
        f"judge: {result.n_requests - result.n_not_judged} of {result.n_requests} judgments made "
        f"({result.n_cached} prompts from the cache, {result.n_sent} sent), "
        f"{result.n_unparsed} unparsed, in {result.elapsed_s:.1f} s; results in {result.out_dir}"
    )
    if not result.complete:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(result.not_judged_reasons.items()))
        ceiling = (
            f" (max_total_s = {cfg.max_total_s:g} s)"
            if judge_client.CEILING in result.not_judged_reasons
            else ""
        )
        print(
            f"ketchup judge: {result.n_not_judged} of {result.n_requests} judgments were left "
            f"not judged: {reasons}{ceiling}. What was judged is written to {result.out_dir} and "
            f"every answer is cached in {args.cache}; a rerun resumes from the cache and sends "
            "only the missing requests.",
            file=sys.stderr,
        )
    if result.mostly_unparsed:
        print(unparsed_warning(result, args.cache), file=sys.stderr)
        return EXIT_UNPARSED
    return 0 if result.complete else EXIT_INCOMPLETE


def unparsed_warning(result: JudgeResult, cache: str | Path) -> str:
    """One line: how many answers could not be read, and one of them as the judge wrote it."""
    answered = result.n_requests - result.n_not_judged
    example = " ".join((result.unparsed_example or "").split())
    if len(example) > 300:
        example = example[:300] + "..."
    return (
        f"ketchup judge: warning: {result.n_unparsed} of {answered} answers "
        f"({result.unparsed_share:.0%}) could not be parsed, so the judge tables are mostly "
        f"empty; one answer as the judge wrote it: {example!r}. The parser reads JSON "
        '({"score": 7} / {"winner": "A"}), Score: / Winner: lines, MT-Bench [[7]] / [[A]] / '
        "[[C]], Arena-Hard [[A>B]] and Prometheus [RESULT] 4; use a judge model (or prompt "
        f"templates, judge.templates_dir) that answers so. The answers stay cached in {cache}."
    )
