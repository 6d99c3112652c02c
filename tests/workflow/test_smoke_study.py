"""The smoke study end to end through Snakemake: killed at a random point, resumed, and then
everything a finished study holds (its own file, so that pytest-xdist runs it beside the
workflow's other tests)."""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess

import pytest
import yaml
from test_workflow import (
    FIGURE_KINDS,
    ROOT,
    SMOKE,
    SNAKEMAKE,
    TABLES,
    a_second_study_leaves_the_first_alone,
    assert_a_quiet_terminal,
    assert_every_file_is_declared,
    assert_the_report_shows_tables_figures_and_the_study,
    assert_whole,
    dry_run_smoke_edited,
    is_output,
    job_counts,
    run_the_judge_on_the_finished_study,
    snakemake,
    snakemake_records,
)

from ketchup.config import parse_config
from ketchup.files import read_jsonl


@pytest.mark.slow
def test_smoke_study_killed_at_a_random_point_resumes_and_runs_end_to_end(tmp_path):
    """The whole smoke workflow SIGKILLed (process group: Snakemake and its jobs) at a random
    moment early in the study. While it runs, a second invocation in the same directory is
    refused by Snakemake's lock. After the kill every file under results/ is whole (what looks
    complete is complete); the next plain run removes the dead run's lock, leaves the finished
    jobs' outputs alone (same modification times), redoes the rest, resuming training from
    checkpoints, and ends. Then everything a finished study holds is checked: every output, the
    tables, figures and report, what a changed config reruns, the judge, a second study."""
    import os
    import random
    import signal
    import time

    delay = float(os.environ.get("KETCHUP_KILL_AFTER_S") or random.uniform(5, 25))
    print(f"killing the study {delay:.1f} s after it took its lock (KETCHUP_KILL_AFTER_S)")
    args = ("--cores", "2", "--directory", str(tmp_path), "--configfile", str(SMOKE))
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that one kill reaches every job
        )
    try:
        owner = tmp_path / ".snakemake" / "locks" / "ketchup-owner.json"
        deadline = time.monotonic() + 600
        while not owner.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the study never took its lock"
            time.sleep(0.1)
        locked_at = time.monotonic()
        second = snakemake(*args, check=False)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        time.sleep(max(0.0, delay - (time.monotonic() - locked_at)))
        assert first.poll() is None, f"the study ended within {delay:.1f} s, before the kill"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    results = tmp_path / "results"
    study = results / "smoke"
    incomplete = snakemake_records(tmp_path, "incomplete")
    finished = {}
    for path in results.rglob("*"):
        if path.is_file():
            assert_whole(path)
            if is_output(path, results) and not any(p in incomplete for p in (path, *path.parents)):
                finished[path] = path.stat().st_mtime_ns
    interrupted = [
        d.parent
        for d in study.glob("*/students/*/*/seed*/checkpoint")
        if not (d.parent / "model").exists()
    ]
    print(
        f"at the kill: {len(finished)} finished output files, {len(incomplete)} marked "
        f"incomplete, training interrupted after a checkpoint in {interrupted}"
    )

    # a progress line per update
    run = snakemake(*args, env={**os.environ, "KETCHUP_PROGRESS_SECONDS": "0"})
    assert "removed the lock of an earlier Snakemake run" in run.stdout + run.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    for out_dir in interrupted:
        job_log = study / "restaurants" / "logs" / f"distill_{'_'.join(out_dir.parts[-3:])}.log"
        assert "resuming from" in job_log.read_text(), job_log
    assert_a_quiet_terminal(run.stdout + run.stderr)
    study = tmp_path / "results" / "smoke"
    data = study / "restaurants" / "data"
    assert all((data / f"{s}.jsonl").stat().st_size > 0 for s in ("train", "validation", "test"))
    task = study / "restaurants"
    assert (task / "tokenizer" / "tokenizer.json").is_file()
    assert (task / "teacher" / "model" / "train-teacher.config.json").is_file()
    for split in ("train", "test"):
        rows = read_jsonl(task / "teacher" / "outputs" / f"{split}.jsonl")
        source_ids = [row["id"] for row in read_jsonl(data / f"{split}.jsonl")]
        assert [row["id"] for row in rows] == source_ids
    evals = [row for row in read_jsonl(task / "teacher" / "log.jsonl") if row["kind"] == "eval"]
    assert evals, "the teacher was never validated"
    config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    systems = parse_config(copy.deepcopy(config)).distill.systems
    assert len(systems) == 12  # every method of the paper and its peers, ketchup at two K
    for system in systems:
        student = task / "students" / "t5-micro" / system / "seed0"
        resolved = json.loads((student / "model" / "distill.config.json").read_text())
        assert resolved["system"] == system
        log = read_jsonl(student / "log.jsonl")
        losses = [r["loss"] for r in log if r["kind"] == "train"]
        assert all(math.isfinite(x) for x in losses), (system, losses)
        if system in ("sft", "seqkd", "kl"):
            assert len(losses) == 20 and losses[-1] < losses[0], (system, losses)
        else:  # six updates from the warm start, which is scored first
            assert len(losses) == 6 and len(set(losses)) > 1, (system, losses)
            assert log[0]["kind"] == "eval" and log[0]["step"] == 0
            assert resolved["warm_start"].endswith("students/t5-micro/kl/seed0/model")
    with (task / "students" / "t5-micro" / "grad_variance.csv").open() as f:
        table = list(csv.DictReader(f))
    # every policy-gradient system's trained update, on the same rollout sets
    assert [r["system"] for r in table] == [
        "llmr", "llmr_mean", "llmr_minvar", "ketchup_k2", "ketchup_k4"
    ]  # fmt: skip
    assert all(float(r["variance"]) > 0 for r in table)
    for r in table:  # the interval brackets the estimate (up to rounding in the resamples)
        assert float(r["variance_low"]) <= float(r["variance"]) * (1 + 1e-9)
        assert float(r["variance"]) <= float(r["variance_high"]) * (1 + 1e-9)

    # results: every run scored on every test example, the tables and figures, the HTML report
    test_ids = [row["id"] for row in read_jsonl(data / "test.jsonl")]
    for run in ["teacher", *(f"t5-micro/{system}/seed0" for system in systems)]:
        summary = json.loads((task / "scores" / f"{run}.json").read_text())
        assert summary["n_examples"] == len(test_ids) and summary["validation"] is not None
        with (task / "scores" / f"{run}.csv").open() as f:
            assert [row["id"] for row in csv.DictReader(f)] == test_ids
    main_table = (study / "tables" / "main.md").read_text()
    labels = ("Teacher", "SeqKD", "LLMR (max value)", "LLMR + min-var (max value)", "KETCHUP (K=")
    for label in (*labels, "GKD", "MiniLLM (no PT loss)", "JS (f-distill)", "seed-aware 95% CI"):
        assert label in main_table, label
    for name in TABLES:
        for ext in ("md", "html", "csv", "tex"):
            assert (study / "tables" / f"{name}.{ext}").stat().st_size > 0
    figures = sorted(p.name for p in (study / "figures").iterdir())
    assert figures == sorted(
        f"restaurants_t5-micro_{k}.{e}" for k in FIGURE_KINDS for e in ("png", "svg")
    )
    # disk: finished training jobs keep model/ and their step log; no optimizer checkpoint, no
    # best/ copy of model/, no temporary
    assert sorted(p.name for p in (task / "teacher").iterdir()) == ["log.jsonl", "model", "outputs"]
    scratch = [
        p for p in study.rglob("*") if p.name in ("checkpoint", "best") or p.suffix == ".tmp"
    ]
    assert not scratch, scratch
    # the study's config as it ran (defaults filled in), and the index of studies listing it
    ran = copy.deepcopy(config)
    parse_config(ran)
    assert yaml.safe_load((study / "config.yaml").read_text()) == ran
    assert "| `smoke` | restaurants |" in (tmp_path / "results" / "studies.md").read_text()
    snakemake(
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "configs" / "smoke.yaml"),
        "--report",
        str(tmp_path / "report.html"),
    )
    assert_the_report_shows_tables_figures_and_the_study(tmp_path)
    assert "judge.enabled` is false" in (study / "tables" / "judge.md").read_text()

    def dry_run(edit):
        return dry_run_smoke_edited(tmp_path, edit)

    # a finished study reruns nothing, on more GPUs too (the count is read when a job runs)
    assert "Nothing to be done" in dry_run(lambda c: None)
    more_gpus = ("--set-resources", "distill:gpu=2", "--resources", "gpu=2")
    assert "Nothing to be done" in dry_run_smoke_edited(tmp_path, lambda c: None, *more_gpus)
    # adding a K adds its job (and the variance table, which has a row per K), nothing else
    # (tables and figures summarise every run: they are redone whenever a run is)
    report = {"tables": 1, "figures": 1, "all": 1}
    jobs = job_counts(dry_run(lambda c: c["distill"].update(ks=[2, 4, 8])))
    assert jobs == {"distill": 1, "grad_variance": 1, "generate": 1, "score": 1, **report}, jobs
    # adding a seed adds that seed's jobs: each system and its warm start
    jobs = job_counts(dry_run(lambda c: c["distill"].update(seeds=[0, 1])))
    assert jobs == {"distill": 12, "generate": 12, "score": 12, **report}, jobs
    # retuning one method reruns that method only
    jobs = job_counts(dry_run(lambda c: c["distill"].update(gkd={"beta": 0.9})))
    assert jobs == {"distill": 1, "generate": 1, "score": 1, **report}, jobs
    # changed test decoding regenerates and rescores the students, trains nothing
    jobs = job_counts(dry_run(lambda c: c["evaluation"]["generation"].update(max_new_tokens=50)))
    assert jobs == {"generate": 12, "score": 12, **report}, jobs
    # a changed teacher setting reruns the teacher and what depends on it, nothing upstream;
    # sft learns from references only, so it is the one student left alone
    jobs = job_counts(dry_run(lambda c: c["teacher"]["train"].update(learning_rate=3e-3)))
    assert jobs == {
        "teacher": 1,
        "teacher_outputs": 2,
        "distill": 11,
        "grad_variance": 1,
        "generate": 11,
        "score": 12,
        **report,
    }, jobs
    # last (it changes the study's config): the judge against a local server
    run_the_judge_on_the_finished_study(tmp_path)
    assert_every_file_is_declared(tmp_path)
    a_second_study_leaves_the_first_alone(tmp_path)
