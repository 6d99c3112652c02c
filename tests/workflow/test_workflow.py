"""The workflow through Snakemake itself: lint, dry runs of every shipped config, bad configs."""

from __future__ import annotations

import base64
import copy
import csv
import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from ketchup.config import parse_config
from ketchup.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(
    *args: str, cwd: Path = ROOT, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def dry_run_in(directory: Path, *configfiles: Path) -> str:
    """`snakemake -n --cores all` in `directory` (with `--configfile` when files are given)."""
    extra = ["--configfile", *map(str, configfiles)] if configfiles else []
    return snakemake("-n", "--cores", "all", "--directory", str(directory), *extra).stdout


@pytest.mark.parametrize("configfile", [None, "configs/smoke.yaml", "configs/paper.yaml"])
def test_dry_run_resolves_the_dag(configfile, tmp_path):
    if configfile is None:
        shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    out = dry_run_in(tmp_path, *([ROOT / configfile] if configfile else []))
    assert "prepare_data" in out
    tasks = yaml.safe_load((ROOT / (configfile or "config.yaml")).read_text())["tasks"]
    for task in tasks:
        assert f"results/{task}/data/train.jsonl" in out
    if configfile == "configs/paper.yaml":
        # the pretrained teacher brings its own vocabulary: no tokenizer is trained
        assert "rule tokenizer" not in out
    else:
        assert "rule tokenizer" in out


def test_local_runs_read_the_default_profile(tmp_path):
    """workflow/profiles/default (through the link profiles/ beside the Snakefile, where Snakemake
    looks) is used without any flag: rerun-incomplete, and the gpu limit from this machine."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    result = snakemake("-n", "--cores", "all", "--directory", str(tmp_path))
    output = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/default for" in output
    assert (ROOT / "profiles" / "default" / "config.v8+.yaml").resolve() == (
        ROOT / "workflow" / "profiles" / "default" / "config.v8+.yaml"
    )


def test_configfile_replaces_the_default_config(tmp_path):
    """--configfile must not merge the embedded task into the paper's study."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    assert "results/restaurants" not in dry_run_in(tmp_path, ROOT / "configs" / "paper.yaml")


@pytest.mark.parametrize("overlay", ["seeds.yaml", "long.yaml"])
def test_overlay_configs_run_on_top_of_the_default(overlay, tmp_path):
    """configs/seeds.yaml and configs/long.yaml hold only what differs from config.yaml, and are
    run as their header says: `--configfile config.yaml configs/<overlay>` (three seeds each)."""
    out = dry_run_in(tmp_path, ROOT / "config.yaml", ROOT / "configs" / overlay)
    # sft, seqkd, kl; seven on-policy methods; ketchup once per K
    systems = 3 + 7 + len(yaml.safe_load((ROOT / "config.yaml").read_text())["distill"]["ks"])
    assert job_counts(out)["distill"] == systems * 3


def test_nested_config_on_the_command_line_is_typed(tmp_path):
    """`--config judge='{...}'`: Snakemake hands every nested leaf over as a string; the workflow
    reads them as YAML, so booleans and numbers validate and the judge joins the DAG."""
    judge = "{enabled: true, base_url: 'http://127.0.0.1:9/v1', model: m, max_examples: 3}"
    out = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "configs" / "smoke.yaml"),
        "--config",
        f"judge={judge}",
    )
    # (a string "true" or "3" would have failed validation before any job)
    assert job_counts(out.stdout).get("judge") == 1, out.stdout + out.stderr


def dry_run_smoke_edited(directory: Path, edit, *args: str) -> str:
    """`snakemake -n` in `directory` on the smoke config after `edit(config)`; its output."""
    config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    edit(config)
    (directory / "edited.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(
        "-n",
        "--cores",
        "2",
        *args,
        "--directory",
        str(directory),
        "--configfile",
        str(directory / "edited.yaml"),
    )
    return out.stdout + out.stderr


def test_a_rule_given_several_gpus_runs_its_verb_under_accelerate(tmp_path):
    def two_gpus(config):
        config["resources"]["distill"]["gpu"] = 2

    out = dry_run_smoke_edited(tmp_path, two_gpus, "-p", "--resources", "gpu=2")
    commands = [line for line in out.splitlines() if "-m ketchup" in line]
    distill = [c for c in commands if " distill " in c]
    two = "python -m ketchup.gpu_slots 2 -- accelerate launch --multi_gpu --num_processes 2"
    assert distill and all(two in c for c in distill)
    # no GPU asked for: the verb as it is, no GPU slot
    teacher = [c for c in commands if " train-teacher " in c]
    assert teacher and all("python -m ketchup train-teacher" in c for c in teacher)
    assert not any("gpu_slots" in c for c in commands if " distill " not in c)


def test_verbs_by_hand_get_the_sections_the_rules_pass(tmp_path):
    """Every job's command in the smoke study, rerun as a user would type it: the --*-json
    sections left out, `--configfile configs/smoke.yaml --task T [--student S]` given instead;
    the verb resolves every section to exactly what the rule passed."""
    import shlex

    from ketchup.cli import build_parser
    from ketchup.verb_config import fill_from_config

    out = snakemake("-n", "-p", "--cores", "1", "--directory", str(tmp_path), "--configfile",
                    str(SMOKE)).stdout  # fmt: skip
    verbs_seen = set()
    for line in out.splitlines():
        if " -m ketchup " not in line:
            continue
        words = shlex.split(line)
        argv = words[words.index("ketchup") + 1 : words.index(">")]
        passed = build_parser().parse_args(argv)
        sections = {k: v for k, v in vars(passed).items() if k.endswith("_json") and v}
        if not sections:  # tables, figures: paths only
            continue
        by_hand = [w for i, w in enumerate(argv) if not (w.endswith("-json") or
                   argv[i - 1].endswith("-json"))]  # fmt: skip
        by_hand += ["--configfile", str(SMOKE)]
        if getattr(build_parser().parse_args(by_hand), "task", "") is None:  # takes --task
            by_hand += ["--task", "restaurants"]
        if argv[0] in ("distill", "score"):
            by_hand += ["--student", "t5-micro"]
        if argv[0] == "score":
            run = json.loads(passed.run_json)
            by_hand += ["--system", run["system"]]
            by_hand += ["--seed", str(run["seed"])] if run["seed"] is not None else []
        resolved = build_parser().parse_args(by_hand)
        fill_from_config(argv[0], resolved)
        assert {k: getattr(resolved, k) for k in sections} == sections, argv[0]
        verbs_seen.add(argv[0])
    assert verbs_seen == {
        "prepare-data", "train-tokenizer", "train-teacher", "teacher-outputs", "distill",
        "grad-variance", "generate", "score",
    }  # fmt: skip


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda c: c["teacher"]["train"].update(lerning_rate=1e-3), "teacher.train.lerning_rate"),
        (lambda c: c["distill"].update(methods=["ketchupp"]), "distill.methods[0]"),
        (lambda c: c["distill"].update(ks=[0]), "distill.ks[0]"),
        (lambda c: c["students"]["t5-tiny"].pop("model"), "students.t5-tiny.model"),
    ],
)
def test_bad_config_fails_before_any_job(edit, key, tmp_path):
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(data)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    result = snakemake("--cores", "1", "--directory", str(tmp_path), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"invalid config: config key '{key}'" in output, output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_smoke_study_runs_end_to_end(tmp_path):
    import os

    run = snakemake(
        "--cores",
        "2",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "configs" / "smoke.yaml"),
        env={**os.environ, "KETCHUP_PROGRESS_SECONDS": "0"},  # a progress line per update
    )
    assert_a_quiet_terminal(run.stdout + run.stderr)
    data = tmp_path / "results" / "restaurants" / "data"
    assert all((data / f"{s}.jsonl").stat().st_size > 0 for s in ("train", "validation", "test"))
    task = tmp_path / "results" / "restaurants"
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
    main_table = (tmp_path / "results" / "tables" / "main.md").read_text()
    labels = ("Teacher", "SeqKD", "LLMR (max value)", "LLMR + min-var (max value)", "KETCHUP (K=")
    for label in (*labels, "GKD", "MiniLLM (no PT loss)", "JS (f-distill)", "seed-aware 95% CI"):
        assert label in main_table, label
    for name in TABLES:
        for ext in ("md", "html", "csv", "tex"):
            assert (tmp_path / "results" / "tables" / f"{name}.{ext}").stat().st_size > 0
    figures = sorted(p.name for p in (tmp_path / "results" / "figures").iterdir())
    assert figures == sorted(
        f"restaurants_t5-micro_{k}.{e}" for k in FIGURE_KINDS for e in ("png", "svg")
    )
    snakemake(
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "configs" / "smoke.yaml"),
        "--report",
        str(tmp_path / "report.html"),
    )
    assert_the_report_shows_tables_figures_and_the_study(tmp_path)
    assert "judge.enabled` is false" in (tmp_path / "results" / "tables" / "judge.md").read_text()

    def dry_run(edit):
        return dry_run_smoke_edited(tmp_path, edit)

    # a finished study reruns nothing
    assert "Nothing to be done" in dry_run(lambda c: None)
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


@pytest.mark.slow
def test_a_study_killed_at_a_random_point_resumes(tmp_path):
    """The whole smoke workflow SIGKILLed (process group: Snakemake and its jobs) at a random
    moment. While it runs, a second invocation in the same directory is refused by Snakemake's
    lock. After the kill every file under results/ is whole (what looks complete is complete);
    the next plain run removes the dead run's lock, leaves the finished jobs' outputs alone
    (same modification times), redoes the rest, resuming training from checkpoints, and ends."""
    import os
    import random
    import signal
    import time

    delay = float(os.environ.get("KETCHUP_KILL_AFTER_S") or random.uniform(5, 60))
    print(f"killing the study {delay:.1f} s after it took its lock (KETCHUP_KILL_AFTER_S)")
    work = tmp_path / "work"
    args = ("--cores", "2", "--directory", str(work), "--configfile", str(SMOKE))
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that one kill reaches every job
        )
    try:
        owner = work / ".snakemake" / "locks" / "ketchup-owner.json"
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

    results = work / "results"
    incomplete = snakemake_records(work, "incomplete")
    finished = {}
    for path in results.rglob("*"):
        if path.is_file():
            assert_whole(path)
            if is_output(path, results) and not any(p in incomplete for p in (path, *path.parents)):
                finished[path] = path.stat().st_mtime_ns
    interrupted = [
        d.parent
        for d in results.glob("*/students/*/*/seed*/checkpoint")
        if not (d.parent / "model").exists()
    ]
    print(
        f"at the kill: {len(finished)} finished output files, {len(incomplete)} marked "
        f"incomplete, training interrupted after a checkpoint in {interrupted}"
    )

    rerun = snakemake(*args)
    assert "removed the lock of an earlier Snakemake run" in rerun.stdout + rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert (results / "tables" / "main.md").is_file()
    assert "Nothing to be done" in snakemake("-n", *args).stdout
    for out_dir in interrupted:
        job_log = results / "restaurants" / "logs" / f"distill_{'_'.join(out_dir.parts[-3:])}.log"
        assert "resuming from" in job_log.read_text(), job_log


TABLES = ("main", "k_grid", "variance", "paper", "provenance")
FIGURE_KINDS = (
    "grad_variance", "methods", "metric_vs_k", "training_curves_baselines", "training_curves_k"
)  # fmt: skip


def assert_a_quiet_terminal(output: str) -> None:
    """No job's shell command (the profile does not print them), a progress line from a long
    job (which job, step N of M), and one last line that says where the results are."""
    assert "--config-json" not in output and "python -m ketchup" not in output
    job = "ketchup distill results/restaurants/students/t5-micro/ketchup_k4/seed0"
    assert f"{job}: train 6/6 (100%)" in output, output[-3000:]
    last = next(line for line in output.splitlines() if line.startswith("ketchup: tables in"))
    assert "results/tables/ (main, k_grid, variance, paper, provenance: md html csv tex" in last
    assert "5 figures in results/figures/" in last and "--report report.html" in last


class HtmlTables(HTMLParser):
    """Every <table> of an HTML page as a list of rows, each a list of cell texts."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def report_results(report: Path) -> tuple[dict, str]:
    """The results Snakemake's HTML report embeds ({path: entry}) and its workflow description."""
    page = report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", page, re.S).group(1))
    description = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", page, re.S).group(1))
    return results, description


def embedded_file(entry: dict) -> str:
    """The file a report entry embeds (a base64 data URI)."""
    return base64.b64decode(entry["data_uri"].split(";base64,", 1)[1]).decode()


def assert_the_report_shows_tables_figures_and_the_study(workdir: Path) -> None:
    results, description = report_results(workdir / "report.html")
    # the tables: HTML (the report shows it inline, not as a download), with the table's rows
    for name in (*TABLES, "judge"):
        entry = results[f"results/tables/{name}.html"]
        assert entry["mime_type"] == "text/html" and entry["caption"].strip(), name
        tables = HtmlTables(embedded_file(entry)).tables
        if name == "judge":
            assert not tables  # the judge is off: the page says how to enable it
            assert "judge.enabled" in embedded_file(entry)
            continue
        assert tables and all(t[0] for t in tables), name  # each with its header
        markdown = (workdir / "results" / "tables" / f"{name}.md").read_text()
        md_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
        assert sum(len(t) for t in tables) == len(md_rows), name  # every row, the header too
    main = HtmlTables(embedded_file(results["results/tables/main.html"])).tables[0]
    assert main[0][0] == "System" and main[1][0] == "Teacher"
    assert any(row[0].startswith("KETCHUP (K=") for row in main)
    assert not any(path.endswith(".md") for path in results)  # no download-only duplicates
    # the figures, each with its caption
    for kind in FIGURE_KINDS:
        entry = results[f"results/figures/restaurants_t5-micro_{kind}.png"]
        caption = (ROOT / "workflow" / "report" / f"{kind}.rst").read_text().split()
        assert entry["mime_type"] == "image/png"
        assert " ".join(caption[:4]) in " ".join(entry["caption"].split()), kind
    # the workflow description: what ran and the config
    for text in ("What ran", "restaurants", "t5-micro", "K grid: 2, 4", "sft, seqkd, kl, js, tvd",
                 "The config", "n_train&quot;: 300"):  # fmt: skip
        assert text in description, text


def snakemake_records(workdir: Path, kind: str) -> set[Path]:
    """The output paths Snakemake keeps a record of in .snakemake/<kind>/: "incomplete" (jobs
    that started and did not finish) or "metadata" (outputs of finished jobs)."""
    import base64

    marks = workdir / ".snakemake" / kind
    paths = set()
    for mark in marks.rglob("*") if marks.exists() else ():
        if mark.is_file() and mark.name != "migration_underway":
            encoded = "".join(p.lstrip("@") for p in mark.relative_to(marks).parts)
            paths.add(workdir / base64.urlsafe_b64decode(encoded).decode())
    return paths


def is_output(path: Path, results: Path) -> bool:
    """A file a rule declares (not a log, a checkpoint, a temporary or the judge's answer cache,
    which outlive a job on purpose)."""
    parts = path.relative_to(results).parts
    scratch = {"logs", "benchmarks", "checkpoint", "best"}
    kept = path.name in ("log.jsonl", "cache.sqlite")
    return not (scratch & set(parts) or path.name.startswith(".") or kept)


def assert_every_file_is_declared(workdir: Path) -> None:
    """Every file a job leaves under results/ is an output Snakemake knows (or inside one), so an
    interrupted job's files are all marked incomplete and redone: a file written beside a rule's
    outputs but not declared would survive the kill and look finished."""
    results = workdir / "results"
    recorded = snakemake_records(workdir, "metadata")
    undeclared = [
        path.relative_to(results)
        for path in sorted(results.rglob("*"))
        if path.is_file()
        and is_output(path, results)
        and not any(p in recorded for p in (path, *path.parents))
    ]
    assert not undeclared, f"written by a job but no rule's output: {undeclared}"


def assert_whole(path: Path) -> None:
    """Parse the file by its kind: a file cut short by the kill fails here."""
    from safetensors.torch import load_file

    if any(p.startswith(".") and p.endswith(".tmp") for p in path.parts) or path.suffix == ".log":
        return  # in a temporary (never read) or a job's console log
    if path.suffix == ".jsonl" and path.name != "log.jsonl":  # the step log is append-only
        read_jsonl(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".csv":
        with path.open() as f:
            rows = list(csv.reader(f))
        assert rows and len({len(r) for r in rows}) == 1, path
    elif path.suffix == ".safetensors":
        load_file(str(path))


def run_the_judge_on_the_finished_study(tmp_path: Path) -> None:
    """Enable the judge against a local OpenAI-compatible server: only the judge, tables and
    figures run; the judge's tables and win-rate figure join results/; a rerun sends nothing."""
    import os
    import threading

    from fake_openai_server import FakeOpenAI

    lock, pointwise_hits = threading.Lock(), []

    def answer(prompt: str, hit: int) -> str:
        if "Output to judge:" in prompt:
            with lock:  # the server answers requests on several threads
                pointwise_hits.append(hit)
                first = len(pointwise_hits) == 1
            if first:
                return "I cannot rate this."  # counted as unparsed, never scored
            return f'{{"score": {3 + hit % 5}, "reason": "ok"}}'
        return json.dumps({"winner": "A" if hit % 3 else "tie", "reason": "scripted"})

    server = FakeOpenAI(answer)
    try:
        config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
        config["judge"] = {
            "enabled": True,
            "base_url": server.base_url,
            "model": "scripted",
            "api_key_env": "KETCHUP_TEST_JUDGE_KEY",
            "max_examples": 4,
        }
        (tmp_path / "judge.yaml").write_text(yaml.safe_dump(config))
        args = (
            "--cores",
            "2",
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "judge.yaml"),
        )
        env = {**os.environ, "KETCHUP_TEST_JUDGE_KEY": "sk-test-secret"}
        assert job_counts(snakemake("-n", *args, env=env).stdout) == {
            "judge": 1,
            "tables": 1,
            "figures": 1,
            "all": 1,
        }
        snakemake(*args, env=env)
        sent = len(server.requests)
        judge = tmp_path / "results" / "restaurants" / "judge" / "t5-micro"
        judgments = read_jsonl(judge / "judgments.jsonl")
        # 13 systems (teacher + 12) x 4 examples pointwise, 2 pairs x 4 examples x 2 orders;
        # identical prompts (the micro students often write the same text) are sent once
        assert len(judgments) == 13 * 4 + 2 * 4 * 2
        assert sent == len({j["key"] for j in judgments}), sent
        with (judge / "pairwise_summary.csv").open() as f:
            pairs = {(r["system_a"], r["system_b"]) for r in csv.DictReader(f)}
        best_k = next(
            line
            for line in (tmp_path / "results" / "tables" / "main.md").read_text().splitlines()
            if "KETCHUP (K=" in line
        )
        k = best_k.split("KETCHUP (K=")[1].split(")")[0]
        assert ("ketchup_k" + k, "llmr") in pairs and len(pairs) == 2, pairs
        table = (tmp_path / "results" / "tables" / "judge.md").read_text()
        assert "Pointwise" in table and "unparsed: 1" in table, table
        page = (tmp_path / "results" / "tables" / "judge.html").read_text()
        pointwise, pairwise = HtmlTables(page).tables
        assert pointwise[0][:3] == ["system", "n", "mean score"] and len(pointwise) == 1 + 13
        assert pairwise[0][:2] == ["A", "B"] and len(pairwise) == 1 + 2
        assert (
            tmp_path / "results" / "figures" / "restaurants_t5-micro_judge_win_rates.png"
        ).is_file()
        for path in (tmp_path / "results").rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".csv", ".log"):
                assert "sk-test-secret" not in path.read_text(errors="ignore"), path
        # a rerun of the judge (forced) answers everything from the cache
        snakemake(*args, "--forcerun", "judge", env=env)
        assert len(server.requests) == sent
    finally:
        server.close()


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table of a dry run, as {rule: count}."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts
