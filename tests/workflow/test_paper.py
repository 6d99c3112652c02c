"""configs/paper.yaml and configs/paper_qwen.yaml through their whole DAG on the CPU.

The configs run as they are, with an overlay that replaces only what a CPU without a hub needs:
the models' paths (the stand-ins of tests/standins.py, loaded by path as a hub id would be), the
datasets' `files` (in each hub dataset's own format), sizes, step counts, one seed, no GPU, and the
judge as a dry run. Every task, method and K of the configs runs.
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
    started = time.monotonic()
    run = snakemake(*args, timeout=3600)  # hundreds of jobs, each a Python start-up
    seconds = time.monotonic() - started
    print(f"{configfile.name}: {sum(jobs.values())} jobs in {seconds:.0f} s")
    assert "localrule fetch:" in run.stdout + run.stderr  # where Snakemake runs, with the network

    assert_paper_outputs(tmp_path, study)
    assert "Nothing to be done" in snakemake("-n", *args).stdout


def assert_paper_outputs(workdir: Path, study) -> None:
    """What a finished run of a paper config on the stand-ins must have written."""
    results = results_root(workdir, study)
    tasks, systems = list(study.tasks), study.distill.systems
    for path in (results / "hub").iterdir():  # local paths, resolved and left alone
        assert json.loads(path.read_text())["source"] == "local", path
    student = next(iter(study.students))
    for task in tasks:
        data = {s: read_jsonl(results / task / "data" / f"{s}.jsonl") for s in ("train", "test")}
        for split, rows in data.items():
            outputs = read_jsonl(results / task / "teacher" / "outputs" / f"{split}.jsonl")
            assert [r["id"] for r in outputs] == [r["id"] for r in rows]
            resolved = (
                results / task / "teacher" / "outputs" / f"teacher-outputs-{split}.config.json"
            )
            used = json.loads(resolved.read_text())["config"]["max_source_length"]
            assert used == study.evaluation.max_source_length  # what the students read
        for run in ["teacher", *(f"{student}/{system}/seed0" for system in systems)]:
            summary = json.loads((results / task / "scores" / f"{run}.json").read_text())
            assert summary["n_examples"] == len(data["test"]), (task, run)
            assert METRICS[study.tasks[task].dataset] <= set(summary["metrics"]), summary
        for system in systems:  # every update made, from the warm start for on-policy ones
            log = read_jsonl(results / task / "students" / student / system / "seed0" / "log.jsonl")
            losses = [r["loss"] for r in log if r["kind"] == "train"]
            warm = system not in ("sft", "seqkd", "kl")
            assert (
                len(losses)
                == (study.distill.train if warm else study.students[student].train).steps
            )
            assert all(math.isfinite(x) for x in losses), (task, system, losses)
        with (results / task / "students" / student / "grad_variance.csv").open() as f:
            measured = [r["system"] for r in csv.DictReader(f)]
        assert measured == measured_systems(study.distill), measured
        judge = results / task / "judge" / student
        assert read_jsonl(judge / "prompts.jsonl") and (judge / "dry_run.json").is_file()
    figures = {p.name for p in (results / "figures").iterdir()}
    kinds = ("grad_variance", "methods", "metric_vs_k", "training_curves_k")
    kinds += ("training_curves_baselines",)
    assert figures == {
        f"{t}_{student}_{k}.{e}" for t in tasks for k in kinds for e in ("png", "svg")
    }

    # the comparison with the paper's published numbers: a row per system it reports, per task
    with (results / "tables" / "paper.csv").open() as f:
        compared = {(row["task"], row["system"]) for row in csv.DictReader(f)}
    paper_tasks = [
        t for t in tasks if study.tasks[t].dataset in ("xsum", "europarl_en_nl", "gsm8k")
    ]
    assert len(paper_tasks) == 3
    for task in paper_tasks:
        # SeqKD, KL, JS, TVD, LLMR and its two baselines, KETCHUP at its best K
        assert len({s for t, s in compared if t == task}) == 8, compared
    main = (results / "tables" / "main.md").read_text()
    assert all(label in main for label in ("Teacher", "SeqKD", "KETCHUP (best K)", "MiniLLM"))
