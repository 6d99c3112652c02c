"""configs/paper.yaml and configs/paper_qwen.yaml on the CPU: their whole DAG counted, and every
task's data and teacher and one task's every student run.

The configs run as they are, with an overlay that replaces only what a CPU without a hub needs:
the models' paths (the stand-ins of tests/standins.py, loaded by path as a hub id would be), the
datasets' `files` (in each hub dataset's own format), sizes, step counts, one seed, no GPU, and the
judge as a dry run. A dry run counts the jobs of every task, method and K. What runs: each task's
dataset, its teacher outputs and the teacher's scores (every task's loading, prompt and metric),
and on one task per family: for Qwen2 (the decoder-only family, which runs nowhere else end to
end) every method and K, the variance table, the judge and the figures, every job of the task;
for T5 the KL warm start, LLMR and KETCHUP at the config's largest K under the paper's
policy-gradient settings, and the variance table, which measures every K's update (T5 runs every
method in the smoke study). The
tables, which need every task's students, run in the smoke study; the comparison with the
paper's numbers is tested on its own (tests/unit/test_results.py).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import job_counts, snakemake

from ketchup.config import parse_config, read_config_files
from ketchup.files import read_jsonl
from ketchup.report.studies import measured_systems

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"t5": ROOT / "configs" / "paper.yaml", "qwen2": ROOT / "configs" / "paper_qwen.yaml"}
# The task metrics the paper reports, as the score files name them.
METRICS = {
    "xsum": {"rouge1", "rouge2", "rougeL"},
    "europarl_en_nl": {"bleu"},
    "gsm8k": {"accuracy"},
    "dailydialog": {"bleu"},
    "dart": {"bleu"},
}
LENGTHS = {"max_source_length": 96, "max_target_length": 40}
# The task of each family whose students run: T5 on GSM8K (accuracy of the final answer, a
# validation split carved from train), Qwen2 on Europarl EN-NL (BLEU, both splits carved).
FULL_TASK = {"t5": "gsm8k", "qwen2": "europarl_en_nl"}


# T5's students that run: the warm start, LLMR and KETCHUP at its largest K (Qwen2: every one).
def t5_systems(study) -> list[str]:
    return ["kl", "llmr", f"ketchup_k{max(study.distill.ks)}"]


FIGURE_KINDS = (
    "grad_variance", "methods", "metric_vs_k", "training_curves_k", "training_curves_baselines"
)  # fmt: skip

GENERATION = {"max_new_tokens": 40, "batch_size": 16}


def results_root(workdir: Path, study) -> Path:
    """Where a run of `study` in `workdir` writes its results (every path below is found from
    here)."""
    return workdir / "results" / study.study


def standin_overlay(config: dict, family, files: dict) -> dict:
    """What the paper's config needs to run here, and nothing else: model paths, files, sizes,
    step counts, one seed, no GPU, the judge as a dry run."""
    student_train = {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, **LENGTHS}
    return {
        "tasks": {
            name: {
                "files": files[task["dataset"]],
                "max_examples": {"train": 24, "validation": 3, "test": 4},
            }
            for name, task in config["tasks"].items()
        },
        "teacher": {"model": {"name_or_path": str(family.teacher)}, "generation": GENERATION},
        "students": {
            name: {"model": {"name_or_path": str(family.student)}, "train": student_train}
            for name in config["students"]
        },
        "distill": {
            "seeds": [0],
            "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, **LENGTHS},
            "rollout": {"max_new_tokens": 40, "max_source_length": 96},
            "variance": {"rollout_sets": 2, "sources": 3},
        },
        "evaluation": {"generation": GENERATION, "max_source_length": 96},
        "judge": {"enabled": True, "dry_run": True, "model": "dry-run", "max_examples": 3},
        "resources": {
            rule: {"threads": 1, "mem_mb": 1000, "gpu": 0} for rule in config["resources"]
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_paper_config_runs_end_to_end_on_standins(family, paper_standins, tmp_path):
    configfile = CONFIGS[family]
    config = yaml.safe_load(configfile.read_text())
    overlay = tmp_path / "standins.yaml"
    standins = getattr(paper_standins, family)
    overlay.write_text(yaml.safe_dump(standin_overlay(config, standins, paper_standins.files)))
    study = parse_config(read_config_files(configfile, overlay))
    args = (
        "--cores",
        "2",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(configfile),
        str(overlay),
    )

    # the DAG: every task, method and K of the config (one seed)
    jobs = job_counts(snakemake("-n", *args).stdout)
    tasks, systems = list(study.tasks), study.distill.systems
    assert len(systems) == 14  # 10 methods and KETCHUP at 4 K
    n = len(tasks)
    assert jobs == {
        "fetch": 2 + n,  # the teacher, the student and each task's dataset
        "prepare_data": n,
        "teacher_outputs": 2 * n,
        "distill": len(systems) * n,  # the kl warm start is one of the systems
        "grad_variance": n,
        "generate": len(systems) * n,
        "score": (len(systems) + 1) * n,  # and the teacher
        "judge": n,
        "figures": n,
        "tables": 1,
        "all": 1,
    }, jobs
    full = FULL_TASK[family]
    every = family == "qwen2"
    run_systems = systems if every else t5_systems(study)
    started = time.monotonic()
    # targets first: --configfile takes every word after it
    run = snakemake(*targets(tmp_path, study, full, run_systems, every), *args, timeout=3600)
    seconds = time.monotonic() - started
    print(
        f"{configfile.name}: {job_total(run.stdout + run.stderr)} jobs (every task's teacher, "
        f"{len(run_systems)} students on {full}) in {seconds:.0f} s"
    )
    assert "localrule fetch:" in run.stdout + run.stderr  # where Snakemake runs, with the network

    assert_paper_outputs(tmp_path, study, full, run_systems, every)
    ran = {
        "fetch": 2 + n,
        "prepare_data": n,
        "teacher_outputs": n + 1,  # every task's test split, the train split of `full`
        "distill": len(run_systems),
        "grad_variance": 1,
        "generate": len(run_systems),
        "score": n + len(run_systems),
        "judge": int(every),
        "figures": int(every),
    }
    left = job_counts(snakemake("-n", *args).stdout)  # only what was not asked for remains
    expected = {rule: count - ran.get(rule, 0) for rule, count in jobs.items()}
    assert left == {rule: count for rule, count in expected.items() if count}, left


def targets(workdir: Path, study, full: str, systems: list[str], every: bool) -> list[str]:
    """Every task's teacher scores, the scores of `systems` on `full` and its variance table;
    with `every` (all its students) also its judge and figures."""
    results = results_root(workdir, study).relative_to(workdir)
    student = next(iter(study.students))
    files = [results / task / "scores" / "teacher.json" for task in study.tasks]
    files += [results / full / "scores" / student / s / "seed0.json" for s in systems]
    files += [results / full / "students" / student / "grad_variance.csv"]
    if every:
        files += [results / full / "judge" / student / "dry_run.json"]
        files += [results / "figures" / f"{full}_{student}_{kind}.png" for kind in FIGURE_KINDS]
    return [str(f) for f in files]


def job_total(log: str) -> int:
    """The number of jobs a Snakemake run says it did ("N of N steps (100%) done")."""
    done = [line for line in log.splitlines() if "steps (100%) done" in line]
    return int(done[-1].split(" of ")[0]) if done else 0


def assert_paper_outputs(workdir: Path, study, full: str, systems: list[str], every: bool) -> None:
    """What a run of a paper config on the stand-ins must have written: every task's data,
    teacher outputs and teacher scores, and the students `systems` of `full`."""
    results = results_root(workdir, study)
    for path in (results / "hub").iterdir():  # local paths, resolved and left alone
        assert json.loads(path.read_text())["source"] == "local", path
    student = next(iter(study.students))
    for task in study.tasks:
        splits = ("train", "test") if task == full else ("test",)  # train: the students' input
        data = {s: read_jsonl(results / task / "data" / f"{s}.jsonl") for s in splits}
        for split, rows in data.items():
            outputs = read_jsonl(results / task / "teacher" / "outputs" / f"{split}.jsonl")
            assert [r["id"] for r in outputs] == [r["id"] for r in rows]
            resolved = (
                results / task / "teacher" / "outputs" / f"teacher-outputs-{split}.config.json"
            )
            used = json.loads(resolved.read_text())["config"]["max_source_length"]
            assert used == study.evaluation.max_source_length  # what the students read
        runs = ["teacher"] + ([f"{student}/{s}/seed0" for s in systems] if task == full else [])
        for run in runs:
            summary = json.loads((results / task / "scores" / f"{run}.json").read_text())
            assert summary["n_examples"] == len(data["test"]), (task, run)
            assert METRICS[study.tasks[task].dataset] <= set(summary["metrics"]), summary
    for system in systems:  # every update made, from the warm start for on-policy ones
        log = read_jsonl(results / full / "students" / student / system / "seed0" / "log.jsonl")
        losses = [r["loss"] for r in log if r["kind"] == "train"]
        warm = system not in ("sft", "seqkd", "kl")
        assert len(losses) == (study.distill.train if warm else study.students[student].train).steps
        assert all(math.isfinite(x) for x in losses), (full, system, losses)
    with (results / full / "students" / student / "grad_variance.csv").open() as f:
        measured = [r["system"] for r in csv.DictReader(f)]
    assert measured == measured_systems(study.distill), measured
    if not every:
        return
    judge = results / full / "judge" / student
    assert read_jsonl(judge / "prompts.jsonl") and (judge / "dry_run.json").is_file()
    figures = {p.name for p in (results / "figures").iterdir()}
    assert figures == {f"{full}_{student}_{k}.{e}" for k in FIGURE_KINDS for e in ("png", "svg")}


def test_paper_standin_tokenizers_are_those_of_their_families(paper_standins):
    """The stand-ins load by path as the hub's models do: T5's SentencePiece tokenizer (pad 0,
    EOS 1, unk 2, 100 extra ids after the pieces, EOS appended) and Qwen2's byte-level BPE (EOS
    and pad <|endoftext|>, no BOS, nothing appended, the ChatML template); teacher and student of
    a family share one, and their logits cover it (padded past it, as the hub's models)."""
    from transformers import Qwen2Tokenizer, T5Tokenizer

    from ketchup.models.loading import load_model, load_tokenizer

    sentence = "Ann has 3 apples.\n#### 3"
    t5 = load_tokenizer(str(paper_standins.t5.teacher))
    assert isinstance(t5, T5Tokenizer)
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_ids_to_tokens(len(t5) - 1) == "<extra_id_0>"
    assert sum(token.startswith("<extra_id_") for token in t5.get_vocab()) == 100
    assert t5(sentence)["input_ids"][-1] == 1
    qwen = load_tokenizer(str(paper_standins.qwen2.teacher))
    assert isinstance(qwen, Qwen2Tokenizer)
    assert qwen.eos_token == qwen.pad_token == "<|endoftext|>" and qwen.bos_token is None
    assert qwen.decode(qwen(sentence)["input_ids"]) == sentence
    chat = qwen.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.startswith("<|im_start|>system\n") and "<|im_start|>user\nhi<|im_end|>" in chat
    for family, tok in (("t5", t5), ("qwen2", qwen)):
        for role in ("teacher", "student"):
            path = getattr(getattr(paper_standins, family), role)
            assert load_tokenizer(str(path)).get_vocab() == tok.get_vocab()
            assert load_model(str(path)).config.vocab_size > len(tok)
