"""`ketchup <verb>`: one verb per workflow stage, each run by one Snakemake rule, paths explicit.

Entry points stay thin: parse arguments, then import the stage lazily and run it, so `ketchup
--help` and the Snakefile stay fast. A stage gets its config section as JSON (`--config-json`),
exactly as the rule's `params:` pass it, and validates it against the schema before doing anything.
By hand, `--configfile FILE --task T [--student S]` takes those sections from a study config
instead (src/ketchup/verb_config.py).
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


def _json(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    """A config section as JSON, as the workflow passes it; by hand, --configfile supplies it."""
    p.add_argument(flag, help=f"{what} as JSON (default: from --configfile)")


def _config_json(p: argparse.ArgumentParser, section: str) -> None:
    _json(p, "--config-json", f"the `{section}` config section (schema defaults filled)")


def _task_json(p: argparse.ArgumentParser) -> None:
    _json(p, "--task-json", "the task's config section (tasks.<name>)")


def _study_config(p: argparse.ArgumentParser, task: bool = True, student: bool = False) -> None:
    """--configfile and the names that pick its sections, in place of the JSON arguments."""
    group = p.add_argument_group(
        "from a study config (in place of the JSON arguments)",
        "`--configfile config.yaml --task NAME` (and --student NAME where a student is trained) "
        "reads every --*-json section from the file, validated with the schema's defaults, as "
        "the workflow's rules pass it; a JSON argument given too wins.",
    )
    group.add_argument(
        "--configfile",
        nargs="+",
        metavar="FILE",
        help="a study config (config.yaml), or several merged in order as Snakemake merges them",
    )
    if task:
        group.add_argument("--task", help="the task's name, as under `tasks:`")
    if student:
        group.add_argument("--student", help="the student's name, as under `students:`")


def _precision(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    from ketchup.models.loading import (
        PRECISIONS,  # no torch: ketchup.models.loading imports it lazily
    )

    p.add_argument(
        flag,
        default="auto",
        choices=PRECISIONS,
        help=f"{what}; auto = bfloat16 on a GPU that supports it, float32 on the CPU",
    )


def _prepare_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="the task's name (as under `tasks:`)")
    _config_json(p, "tasks.<name>")
    p.add_argument("--out-dir", required=True, help="directory for train/validation/test.jsonl")
    _study_config(p, task=False)


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    _config_json(p, "tokenizer")
    p.add_argument("--out-dir", required=True, help="directory for the saved tokenizer")
    _study_config(p, task=False)


def _keep_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep OUT_DIR/checkpoint (optimizer state) and OUT_DIR/best once OUT_DIR/model is "
        "written (by default they are removed then; an interrupted run resumes either way)",
    )


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer directory or hub id (id@revision to pin)"
    )
    _task_json(p)
    _config_json(p, "teacher")
    _keep_checkpoints(p)
    p.add_argument("--out-dir", required=True, help="directory for the model and its logs")
    _study_config(p)


def _teacher_outputs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", required=True, help="teacher model directory or hub id (id@revision to pin)"
    )
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", required=True, choices=["train", "validation", "test"])
    _task_json(p)
    _config_json(p, "teacher")
    p.add_argument("--out", required=True, help="JSONL file of greedy outputs, one per example")
    _study_config(p)


def _distill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", required=True, help="teacher model directory or hub id (id@revision to pin)"
    )
    p.add_argument(
        "--tokenizer", required=True, help="the shared tokenizer (directory, hub id, id@revision)"
    )
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
    _task_json(p)
    _json(p, "--student-json", "the student's config section (students.<name>)")
    _json(p, "--generation-json", "validation decoding (teacher.generation)")
    _precision(p, "--teacher-precision", "the teacher's dtype (teacher.model.precision)")
    _config_json(p, "distill")
    _keep_checkpoints(p)
    p.add_argument("--out-dir", required=True, help="directory for the best checkpoint and logs")
    _study_config(p, student=True)


def _variance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", required=True, help="teacher model directory or hub id (id@revision to pin)"
    )
    p.add_argument("--student", required=True, help="the fixed student checkpoint (directory)")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    _task_json(p)
    _precision(p, "--precision", "the student's compute dtype (students.<s>.model.precision)")
    _precision(p, "--teacher-precision", "the teacher's dtype (teacher.model.precision)")
    _config_json(p, "distill")
    p.add_argument(
        "--out",
        required=True,
        help="CSV: per policy-gradient system, the variance, signal, inverse SNR and cosine of "
        "its trained update, with bootstrap CIs",
    )
    _study_config(p)


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory to generate with")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    _task_json(p)
    _precision(p, "--precision", "the model's dtype (students.<s>.model.precision)")
    _config_json(p, "evaluation")
    p.add_argument("--out", required=True, help="JSONL of outputs (id, output), one per example")
    _study_config(p)


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outputs", required=True, help="JSONL of outputs (id, output)")
    p.add_argument("--data-dir", required=True, help="prepare-data's output directory")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    _task_json(p)
    _json(
        p,
        "--run-json",
        'the run, {"task", "student", "system", "seed"} (the teacher: system "teacher", '
        "student and seed null),",
    )
    p.add_argument("--model", help="the model directory (its validation score is recorded)")
    p.add_argument("--out", required=True, help="per-example scores (CSV); a summary JSON beside")
    _study_config(p, student=True)
    p.add_argument("--system", help="with --configfile: the run's system (teacher, kl, ...)")
    p.add_argument("--seed", type=int, help="with --configfile: the run's seed (a student's)")


def _variance_files(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variance",
        nargs="*",
        default=[],
        help="grad_variance.csv files (results/<study>/<task>/students/<student>/)",
    )


def _tables_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", nargs="+", required=True, help="score summaries (JSON) of every run")
    _variance_files(p)
    p.add_argument(
        "--judge",
        nargs="*",
        default=[],
        help="judge output directories (results/<study>/<task>/judge/<student>)",
    )
    p.add_argument("--out-dir", required=True, help="results/<study>/tables")
    p.add_argument("--study-json", help="the study's whole config as JSON (defaults filled)")
    p.add_argument("--study-config", help="where to write it as YAML (results/<study>/config.yaml)")
    p.add_argument(
        "--index",
        help="the index of every study to rewrite (results/studies.md, from each "
        "results/*/config.yaml)",
    )


def _figures_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="the task whose figures to draw")
    p.add_argument(
        "--scores", nargs="+", required=True, help="score summaries (JSON) of the task's runs"
    )
    _variance_files(p)
    p.add_argument(
        "--kinds",
        nargs="+",
        help="figures to draw: metric_vs_k, grad_variance, training_curves_k, "
        "training_curves_baselines, methods, gain_vs_size (default: all but gain_vs_size)",
    )
    p.add_argument(
        "--judge", nargs="*", default=[], help="the task's judge output directories (win rates)"
    )
    p.add_argument("--out-dir", required=True, help="results/<study>/figures")


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
        "--study",
        default=None,
        help="a finished study's results/<study>/: summarise its benchmarks",
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
    _study_config(p, task=False)
    p.add_argument("--cache", required=True, help="SQLite cache of answers (reruns resume from it)")
    p.add_argument(
        "--templates-dir",
        help="prompt templates to use instead of judge.templates_dir (default: the packaged ones)",
    )
    p.add_argument("--out-dir", required=True, help="directory for judgments, tables and report")


def _fetch_args(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a model's hub id or local directory")
    what.add_argument("--task", help="a task's name (as under `tasks:`), with --task-json")
    p.add_argument("--revision", help="the model's branch, tag or commit (default: main)")
    p.add_argument("--task-json", help="the task's config section as JSON (with --task)")
    p.add_argument("--out", required=True, help="JSON record of what was fetched or found local")


def _check_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "configfile",
        nargs="+",
        help="a study config (config.yaml, configs/paper.yaml), or several merged in order as "
        "Snakemake merges its --configfile list (config.yaml configs/seeds.yaml)",
    )


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--configfile",
        nargs="+",
        required=True,
        help="the study config (several: merged in order, as snakemake --configfile merges them)",
    )
    p.add_argument(
        "--calibration",
        help="the achieved FLOP/s that `ketchup bench --gpu` measured "
        "(results/bench/gpu_calibration.json); without it the throughput is an assumption",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=80.0,
        help="GiB of memory per GPU (default 80: an H100 or A100 80GB); a distill job estimated "
        "above it is refused, naming the keys that would make it fit",
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
        "ketchup.stages.bench:bench_main",
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
        "plan",
        "what a study costs: jobs, GPU-hours and disk per rule, before it runs",
        "Not a workflow stage. Counts the jobs the workflow schedules for CONFIGFILE from "
        "scratch and estimates each rule's compute from parameter counts, tokens and steps (2 N "
        "FLOPs per forward token, 6 N per trained token, lengths at their caps), divided by an "
        "achieved throughput per GPU: an assumption (40% of an H100's bfloat16 peak) unless "
        "--calibration gives the one `ketchup bench --gpu` measured. Also the disk the outputs "
        "take, and the jobs estimated to outlast their rule's runtime.",
        _plan_args,
        "ketchup.ops.plan:plan_main",
    ),
    Verb(
        "fetch",
        "download a hub model or a task's hub dataset into the local cache",
        "Run where the network is (the workflow's local rule `fetch`), before the jobs that read "
        "it offline. A local directory or a task with local files is left alone. Writes OUT, a "
        "JSON record (source local or hub, the revision and commit fetched).",
        _fetch_args,
        "ketchup.stages.fetch:fetch",
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
        "(ketchup.models.loading.load_tokenizer(OUT_DIR) loads it).",
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
        "Writes OUT_DIR/{main,k_grid,variance,paper,provenance}.{md,html,csv,tex} and "
        "OUT_DIR/judge.{md,html}: the main table (mean +- std over "
        "seeds, bootstrap 95% CIs, KETCHUP at its best K by validation against LLMR and the best "
        "non-RL baseline with paired permutation p-values), the K grid with gradient variance "
        "and bias, and ours against the paper's published numbers. With --study-json, the "
        "study's config as YAML in STUDY_CONFIG, and INDEX rewritten to list every study.",
        _tables_args,
        "ketchup.stages.report:tables_stage",
    ),
    Verb(
        "figures",
        "the paper's figures",
        "Writes OUT_DIR/<task>_<student>_<kind>.{png,svg} for each KIND (metric_vs_k, "
        "grad_variance, training_curves_k, training_curves_baselines, methods) and "
        "OUT_DIR/<task>_gain_vs_size.{png,svg}.",
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
        "ceiling or failures); rerun to resume. Exit status 4: most answers could not be parsed "
        "(the warning shows one as the judge wrote it).",
        _judge_args,
        "ketchup.stages.judge:judge_stage",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    from ketchup.provenance import version_of

    parser = argparse.ArgumentParser(
        prog="ketchup",
        description="KETCHUP distillation workflow: one verb per Snakemake rule.",
    )
    # run from a source checkout without an install, the package has no version to show
    version = version_of("ketchup") or "(not installed: run from a source checkout)"
    parser.add_argument("--version", action="version", version=f"ketchup {version}")
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
    from ketchup.data.registry import TaskDataError
    from ketchup.files import CorruptFileError
    from ketchup.models.hub import HubError
    from ketchup.train import progress
    from ketchup.train.signals import DivergedError, Preempted

    bad_input = (
        ConfigError,
        TaskDataError,
        FileNotFoundError,
        CorruptFileError,
        DivergedError,
        HubError,
    )
    output = getattr(args, "out_dir", None) or getattr(args, "out", None)
    progress.set_job(f"ketchup {verb.name}" + (f" {output}" if output else ""))
    try:
        if hasattr(args, "configfile"):
            from ketchup.verb_config import fill_from_config

            fill_from_config(verb.name, args)
        result = getattr(importlib.import_module(module), function)(args)
    except bad_input as e:
        # Bad input or a diverged run, not a bug: one line naming the key, file or step.
        print(f"ketchup {verb.name}: error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"ketchup {verb.name}: {e}", file=sys.stderr)
        return Preempted.exit_code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
