"""`ketchup <verb>`: one verb per workflow stage, each run by one Snakemake rule, paths explicit.

Entry points stay thin: parse arguments, then import the stage lazily and run it, so `ketchup
--help` and the Snakefile stay fast. A stage gets its config section as JSON (`--config-json`),
exactly as the rule's `params:` pass it, and validates it against the schema before doing anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    target: str  # "module:function" taking the parsed args


def _config_json(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument(
        "--config-json",
        required=True,
        help=f"the `{section}` config section as JSON (defaults filled from the schema)",
    )


def _prepare_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="the task's name (as under `tasks:`)")
    _config_json(p, "tasks.<name>")
    p.add_argument("--out-dir", required=True, help="directory for train/validation/test.jsonl")


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    _config_json(p, "tokenizer")
    p.add_argument("--out-dir", required=True, help="directory for the saved tokenizer")


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id")
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    _config_json(p, "teacher")
    p.add_argument("--out-dir", required=True, help="directory for the model and its logs")


def _teacher_outputs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher model directory or hub id")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", required=True, choices=["train", "validation", "test"])
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    _config_json(p, "teacher")
    p.add_argument("--out", required=True, help="JSONL file of greedy outputs, one per example")


def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher model directory or hub id")
    p.add_argument("--tokenizer", required=True, help="the shared tokenizer (directory or hub id)")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument(
        "--teacher-outputs", help="the teacher's train outputs (JSONL; every method but sft)"
    )
    p.add_argument(
        "--method",
        required=True,
        help="the system: sft, seqkd, kl, js, tvd, llmr, llmr_mean, llmr_minvar, gkd, minillm, "
        "or ketchup_k<K> (e.g. ketchup_k4)",
    )
    p.add_argument(
        "--warm-start", help="the kl student's model directory (every method but sft/seqkd/kl)"
    )
    p.add_argument("--seed", type=int, required=True, help="seed of the student's init and data")
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    p.add_argument("--student-json", required=True, help="the student's config section as JSON")
    p.add_argument(
        "--generation-json", required=True, help="validation decoding (teacher.generation)"
    )
    _config_json(p, "distill")
    p.add_argument("--out-dir", required=True, help="directory for the best checkpoint and logs")


def _variance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher model directory or hub id")
    p.add_argument("--student", required=True, help="the fixed student checkpoint (directory)")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    _config_json(p, "distill")
    p.add_argument("--out", required=True, help="CSV: per K, gradient variance and bias vs K = 1")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory to generate with")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    _config_json(p, "evaluation")
    p.add_argument("--out", required=True, help="JSONL of outputs (id, output), one per example")


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outputs", required=True, help="JSONL of outputs (id, output)")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--task-json", required=True, help="the task's config section as JSON")
    p.add_argument(
        "--run-json",
        required=True,
        help='the run: {"task", "student", "system", "seed"} (the teacher: system "teacher", '
        "student and seed null)",
    )
    p.add_argument("--model", help="the model directory (its validation score is recorded)")
    p.add_argument("--out", required=True, help="per-example scores (CSV); a summary JSON beside")


def _variance_files(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variance",
        nargs="*",
        default=[],
        help="grad_variance.csv files (results/<task>/students/<student>/)",
    )


def _tables_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", nargs="+", required=True, help="score summaries (JSON) of every run")
    _variance_files(p)
    p.add_argument(
        "--judge",
        nargs="*",
        default=[],
        help="judge output directories (results/<task>/judge/<student>)",
    )
    p.add_argument("--out-dir", required=True, help="results/tables")


def _figures_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="the task whose figures to draw")
    p.add_argument(
        "--scores", nargs="+", required=True, help="score summaries (JSON) of the task's runs"
    )
    _variance_files(p)
    p.add_argument(
        "--kinds",
        nargs="+",
        help="figures to draw: metric_vs_k, grad_variance, training_curves, methods, gain_vs_size "
        "(default: all but gain_vs_size)",
    )
    p.add_argument(
        "--judge", nargs="*", default=[], help="the task's judge output directories (win rates)"
    )
    p.add_argument("--out-dir", required=True, help="results/figures")


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ks", default="1,4,16", help="KETCHUP's K values (1 = LLMR)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rollouts per update (default 16; with --gpu: the largest that fits, searched)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="rollout length")
    p.add_argument("--repeats", type=int, default=5, help="timed updates per configuration")
    p.add_argument("--student-width", type=int, default=64)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--teacher-width", type=int, default=128)
    p.add_argument("--teacher-layers", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    p.add_argument("--no-trl", action="store_true", help="leave TRL out (not installed)")
    p.add_argument("--out", default="results/bench/update.csv", help="CSV of the table")
    p.add_argument(
        "--study", default=None, help="a finished study's results/: summarise its benchmarks"
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="KETCHUP's update (K = 4) at the paper's sizes on a GPU, random weights, 512-token "
        "sources, 64-token rollouts: flan-t5-xl -> t5-base and Qwen1.5-4B -> Qwen1.5-0.5B (beside "
        "TRL's DistillationTrainer); writes gpu.csv and gpu_phases.csv beside --out",
    )
    p.add_argument("--pairs", default="t5,qwen", help="with --gpu: the pairs to run (t5, qwen)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="with --gpu: the batch search's limit (default 4096)",
    )
    p.add_argument(
        "--batch-seconds",
        type=float,
        default=8.0,
        help="with --gpu: stop doubling the batch once one update takes this long",
    )
    p.add_argument(
        "--toy",
        action="store_true",
        help="with --gpu: tiny models of the same families instead, on whatever device there "
        "is (to try the mode on a CPU in seconds)",
    )


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="the task's examples (prepare-data's test.jsonl)")
    p.add_argument(
        "--system",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a system's outputs (JSONL: id, output); repeat for every system",
    )
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A:B",
        help="a pairwise comparison of system A against B (both orders); repeat for more",
    )
    p.add_argument(
        "--task-kind",
        default="data-to-text",
        choices=["summarization", "translation", "dialogue", "data-to-text", "math"],
        help="picks the pointwise / pairwise rubric (default: data-to-text)",
    )
    p.add_argument(
        "--scores",
        nargs="*",
        default=[],
        help="score summaries (JSON) of one task and student: then a pair may name `ketchup` "
        "(its best K by validation) and `baseline` (the best non-RL baseline by validation)",
    )
    _config_json(p, "judge")
    p.add_argument("--cache", required=True, help="SQLite cache of answers (reruns resume from it)")
    p.add_argument("--templates-dir", help="prompt templates to use instead of the packaged ones")
    p.add_argument("--out-dir", required=True, help="directory for judgments, tables and report")


def _check_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "configfile",
        nargs="+",
        help="a study config (config.yaml, configs/paper.yaml), or several merged in order as "
        "Snakemake merges its --configfile list (config.yaml configs/seeds.yaml)",
    )


VERBS: tuple[Verb, ...] = (
    Verb(
        "bench",
        "time one distillation update beside TRL and the paper's one-at-a-time loop",
        "Not a workflow stage. Prints a table (updates/s, examples/s, tokens/s, min/median/max "
        "over repeats, ratios) and the share of each phase of our update, and writes OUT and "
        "OUT_phases.csv. Needs `pip install trl` unless --no-trl. With --study DIR: wall time, "
        "job time and peak memory of a finished study from its Snakemake benchmark files.",
        _bench_args,
        "ketchup.bench:bench_main",
    ),
    Verb(
        "check-config",
        "validate a study config against the schema and the typed config",
        "Reads CONFIGFILE (several: merged in order), fills the schema's defaults and reports the "
        "first problem by key name.",
        _check_config_args,
        "ketchup.config:check_config_main",
    ),
    Verb(
        "prepare-data",
        "load or generate a task's splits",
        "Writes OUT_DIR/{train,validation,test}.jsonl (id, source, target, references, meta) and "
        "OUT_DIR/prepare-data.config.json.",
        _prepare_data_args,
        "ketchup.stages.data:prepare_data",
    ),
    Verb(
        "train-tokenizer",
        "train a BPE tokenizer on a task's training split",
        "Reads DATA_DIR/train.jsonl; writes a transformers tokenizer to OUT_DIR "
        "(AutoTokenizer.from_pretrained(OUT_DIR) loads it).",
        _tokenizer_args,
        "ketchup.stages.data:train_tokenizer_stage",
    ),
    Verb(
        "train-teacher",
        "fine-tune the teacher on the task (mode: finetune)",
        "Reads DATA_DIR/{train,validation}.jsonl; writes the best checkpoint by validation metric "
        "to OUT_DIR/model, the per-step log OUT_DIR/log.jsonl and checkpoints for resuming.",
        _teacher_args,
        "ketchup.stages.teacher:train_teacher",
    ),
    Verb(
        "teacher-outputs",
        "greedy teacher outputs for one split",
        "Reads DATA_DIR/SPLIT.jsonl; writes OUT (JSONL: id, output) from batched greedy decoding.",
        _teacher_outputs_args,
        "ketchup.stages.teacher:teacher_outputs",
    ),
    Verb(
        "distill",
        "distil a student with one method (and one K)",
        "Trains the student on DATA_DIR with METHOD; writes the best checkpoint by validation "
        "metric to OUT_DIR/model, the per-step log OUT_DIR/log.jsonl and a resumable checkpoint.",
        _distill_args,
        "ketchup.stages.distill:distill",
    ),
    Verb(
        "grad-variance",
        "gradient variance and bias of the K-step estimator on shared rollouts",
        "Draws distill.variance.rollout_sets rollout sets from STUDENT on the first "
        "distill.variance.sources validation sources, computes the policy gradient (no baseline) "
        "for K = 1 and every K of distill.ks on the same rollouts, and writes OUT (CSV: k, "
        "variance = trace of the covariance, relative variance, bias norm and cosine to K = 1).",
        _variance_args,
        "ketchup.stages.variance:grad_variance",
    ),
    Verb(
        "generate",
        "generate outputs for a split",
        "Writes OUT (JSONL: id, output) from MODEL on DATA_DIR/SPLIT.jsonl, batched, with "
        "evaluation.generation (greedy unless num_beams > 1).",
        _generate_args,
        "ketchup.stages.results:generate_outputs",
    ),
    Verb(
        "score",
        "score outputs with the task metric, per example",
        "Writes OUT (CSV, one row per example: the task metrics' per-example columns, from "
        "which every corpus metric is recomputed exactly) and OUT with .json (the run, its "
        "metrics on the split, sacreBLEU signatures, the model's validation score).",
        _score_args,
        "ketchup.stages.results:score_outputs",
    ),
    Verb(
        "tables",
        "the paper's tables",
        "Writes OUT_DIR/{main,k_grid,paper}.{md,csv,tex}: the main table (mean +- std over "
        "seeds, bootstrap 95% CIs, KETCHUP at its best K by validation against LLMR and the best "
        "non-RL baseline with paired permutation p-values), the K grid with gradient variance "
        "and bias, and ours against the paper's published numbers.",
        _tables_args,
        "ketchup.stages.report:tables_stage",
    ),
    Verb(
        "figures",
        "the paper's figures",
        "Writes OUT_DIR/<task>_<student>_<kind>.{png,svg} for each KIND (metric_vs_k, "
        "grad_variance, training_curves, methods) and OUT_DIR/<task>_gain_vs_size.{png,svg}.",
        _figures_args,
        "ketchup.stages.report:figures_stage",
    ),
    Verb(
        "judge",
        "LLM-as-judge through an OpenAI-compatible endpoint",
        "Rates each SYSTEM's outputs on the first judge.max_examples ids of DATA pointwise (1-10 "
        "under the TASK_KIND rubric) and compares each PAIR A:B in both presentation orders. "
        "Answers are cached in CACHE, so a rerun sends only what is missing. Writes under OUT_DIR "
        "judgments.jsonl, pairwise_examples.jsonl, pointwise_summary.csv, pairwise_summary.csv "
        "(bootstrap 95% CIs), report.md and judge.config.json; with judge.dry_run, prompts.jsonl "
        "and dry_run.json (token estimate) without calling the endpoint. The API key is read from "
        "the variable judge.api_key_env names. Exit status 3: some judgments were left (time "
        "ceiling or failures); rerun to resume.",
        _judge_args,
        "ketchup.judge.stage:judge_stage",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ketchup",
        description="KETCHUP distillation workflow: one verb per Snakemake rule.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        p = sub.add_parser(
            verb.name, help=verb.summary, description=f"{verb.summary}. {verb.description}"
        )
        verb.arguments(p)
        p.set_defaults(_verb=verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verb: Verb = args._verb
    module, function = verb.target.split(":")
    from ketchup.config import ConfigError
    from ketchup.files import CorruptFileError
    from ketchup.signals import DivergedError, Preempted
    from ketchup.tasks import TaskDataError

    try:
        result = getattr(importlib.import_module(module), function)(args)
    except (ConfigError, TaskDataError, FileNotFoundError, CorruptFileError, DivergedError) as e:
        # Bad input or a diverged run, not a bug: one line naming the key, file or step.
        print(f"ketchup {verb.name}: error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"ketchup {verb.name}: {e}", file=sys.stderr)
        return Preempted.exit_code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
