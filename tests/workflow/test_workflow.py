"""The workflow through Snakemake itself: lint, dry runs of every shipped config, bad configs."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from ketchup.files import read_jsonl
from ketchup.report.studies import INDEX as STUDIES_INDEX

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(
    *args: str,
    cwd: Path = ROOT,
    check: bool = True,
    env: dict | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
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


@pytest.mark.parametrize(
    "configfile", [None, "configs/smoke.yaml", "configs/paper.yaml", "configs/paper_qwen.yaml"]
)
def test_dry_run_resolves_the_dag(configfile, tmp_path):
    if configfile is None:
        shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    out = dry_run_in(tmp_path, *([ROOT / configfile] if configfile else []))
    assert "prepare_data" in out
    config = yaml.safe_load((ROOT / (configfile or "config.yaml")).read_text())
    for task in config["tasks"]:
        assert f"results/{config['study']}/{task}/data/train.jsonl" in out
    if configfile and configfile.startswith("configs/paper"):
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
    out = dry_run_in(tmp_path, ROOT / "configs" / "paper.yaml")
    assert "results/paper/xsum/" in out and "restaurants" not in out


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


def test_gpus_come_from_the_job_not_the_parsed_config(tmp_path):
    """`--set-resources distill:gpu=2` (what a profile's set-resources does too) with the config
    saying 0: the distill jobs' commands, as `-p` prints them, take 2 GPU slots and run as 2
    data-parallel processes; every other job keeps its 0 from the config."""
    out = dry_run_smoke_edited(
        tmp_path, lambda c: None, "-p", "--set-resources", "distill:gpu=2", "--resources", "gpu=2"
    )
    commands = [line for line in out.splitlines() if "-m ketchup" in line]
    distill = [c for c in commands if " distill " in c]
    assert distill and all(
        "python -m ketchup.ops.gpu_slots 2 --rule distill --data-parallel -- "
        "python -m ketchup distill " in c
        for c in distill
    )
    teacher = [c for c in commands if " train-teacher " in c]
    assert teacher and all(
        "python -m ketchup.ops.gpu_slots 0 --rule teacher --data-parallel -- python -m ketchup "
        "train-teacher" in c
        for c in teacher
    )
    generate = [c for c in commands if " generate " in c]
    assert generate and all(
        "python -m ketchup.ops.gpu_slots 0 --rule generate -- python -m" in c for c in generate
    )


def test_a_gpu_job_is_one_slurm_task_holding_its_gpus(tmp_path):
    """The sbatch line snakemake-executor-plugin-slurm builds for a distill job given 2 GPUs,
    from the resources the workflow gives the job: one task holding both GPUs (no
    --ntasks-per-gpu, which would start the job's command once per GPU, each with one, and
    gpu_slots' processes twice), while a job without GPUs is --ntasks=1."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    out = dry_run_smoke_edited(
        tmp_path, lambda c: None, "--set-resources", "distill:gpu=2", "--resources", "gpu=2"
    )

    def job_resources(rule: str) -> dict:
        block = out[out.index(f"rule {rule}:") :]
        line = next(x for x in block.splitlines() if x.strip().startswith("resources:"))
        pairs = (item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
        return {k: int(v) if v.isdigit() else v for k, v in pairs}

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def sbatch(resources: dict) -> str:
        job = SimpleNamespace(resources=Resources(resources), threads=1)
        params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "c"}
        return get_submit_command(job, {**params, "account": "", "partition": "", "workdir": ""})

    distill = job_resources("distill")
    assert distill["gpu"] == 2 and distill["tasks"] == 0, distill
    assert "--ntasks" not in sbatch(distill)
    # the pitfall itself, so that this test can fail: a task per GPU
    assert "--ntasks-per-gpu=1" in sbatch({**distill, "tasks": 1})
    assert "--ntasks=1" in sbatch(job_resources("score"))


def gpu_distill(config):
    config["resources"]["distill"]["gpu"] = 1


def test_set_resources_runs_a_gpu_rule_on_the_cpu(tmp_path):
    """With no GPU shown, a dry run warns once and names the fix; with the fix,
    --set-resources distill:gpu=0, the warning is gone and the distill jobs get no GPU slot."""
    config = yaml.safe_load(SMOKE.read_text())
    gpu_distill(config)
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    args = ["-n", "-p", "--directory", str(tmp_path), "--configfile", str(tmp_path / "gpu.yaml")]
    out = snakemake(*args, env=env)
    printed = out.stdout + out.stderr
    assert (
        "this machine shows 0 GPU(s), fewer than the config asks for in rules distill " in printed
    )
    assert "--set-resources distill:gpu=0" in printed

    out = snakemake(*args, "--set-resources", "distill:gpu=0", env=env)
    printed = out.stdout + out.stderr
    assert "fewer than the config asks for" not in printed
    distill = [line for line in printed.splitlines() if " distill --teacher" in line]
    assert distill and all(
        "python -m ketchup.ops.gpu_slots 0 --rule distill --data-parallel -- "
        "python -m ketchup distill" in c
        for c in distill
    )


def test_a_gpu_job_on_a_machine_without_one_stops_with_one_line(tmp_path):
    """The smoke study with the teacher on a GPU, on a machine that shows none: Snakemake would
    lower the job's gpu to 0 and run it on the CPU without a word; the run stops before its first
    job instead, with the line that names the fix, and no traceback."""
    config = yaml.safe_load(SMOKE.read_text())
    config["resources"]["teacher"]["gpu"] = 1
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    args = ["--cores", "1", "--directory", str(tmp_path), "--configfile"]
    result = snakemake(*args, str(tmp_path / "gpu.yaml"), env=env, check=False)
    printed = result.stdout + result.stderr
    assert result.returncode != 0
    assert "fewer than the config asks for in rules teacher" in printed
    assert "--set-resources teacher:gpu=0" in printed
    assert "Traceback" not in printed and "RuntimeError" not in printed
    assert not (tmp_path / "results").exists()  # no job ran


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
        if not sections or argv[0] == "tables":  # paths, and for tables the config it records
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


def test_pinned_revisions_reach_every_job_that_loads_from_the_hub(tmp_path):
    """`revision:` of the paper's hub teacher, student and a dataset: in the jobs' commands
    (their params, so that a new revision reruns them): the teacher as `id@revision`, the
    student and the task in their config sections."""
    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    config["teacher"]["model"]["revision"] = "7d6315d"
    config["students"]["t5-base"]["model"]["revision"] = "a9723ea"
    config["tasks"]["gsm8k"]["revision"] = "e53f048"
    (tmp_path / "pinned.yaml").write_text(yaml.safe_dump(config))
    args = ("-n", "-p", "--directory", str(tmp_path), "--configfile", str(tmp_path / "pinned.yaml"))
    commands = [line for line in snakemake(*args).stdout.splitlines() if "-m ketchup" in line]
    teacher = [c for c in commands if " teacher-outputs " in c or " distill " in c]
    assert teacher and all("--teacher google/flan-t5-xl@7d6315d " in c for c in teacher)
    distill = [c for c in commands if " distill " in c]
    assert all("--tokenizer google/flan-t5-xl@7d6315d " in c for c in distill)
    assert all('"revision":"a9723ea"' in c for c in distill)
    gsm8k = [c for c in commands if "prepare-data --task gsm8k " in c]
    assert len(gsm8k) == 1 and '"revision":"e53f048"' in gsm8k[0]


def test_an_overlay_given_alone_stops_with_one_line(tmp_path):
    """`--configfile configs/seeds.yaml` without config.yaml: one line saying to put config.yaml
    first, not the schema's "'tasks': missing"."""
    seeds = ROOT / "configs" / "seeds.yaml"
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(seeds), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"{seeds} has no tasks, teacher, students: it changes config.yaml, so give both, "
        f"config.yaml first: --configfile config.yaml {seeds}"
    ) in output.splitlines(), output
    assert "missing" not in output


@pytest.mark.parametrize(
    "key,value,problem",
    [
        ("d_model", "many", "expected an integer, got 'many'"),
        ("num_heads", -7, "-7 is not allowed; a size or count must be at least 1"),
        ("d_kv", [1, 2], "expected an integer, got [1, 2]"),
    ],
)
def test_a_bad_architecture_value_is_refused_by_the_dry_run(tmp_path, key, value, problem):
    """Values inside `architecture:` are checked with the rest of the config: `snakemake -n`
    refuses them in one line naming the key, before the teacher job would fail on them."""

    def bad(config):
        config["teacher"]["model"]["architecture"][key] = value

    config = yaml.safe_load(SMOKE.read_text())
    bad(config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    args = ("-n", "--directory", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"))
    result = snakemake(*args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    line = f"invalid config: config key 'teacher.model.architecture.{key}': {problem}"
    assert any(x.startswith(line) for x in output.splitlines()), output


@pytest.mark.slow
def test_every_file_a_job_reads_is_an_input(tmp_path):
    """A study on your own data files (`files:`), with a pretrained teacher and student in
    local directories and the judge reading its templates from judge.templates_dir: every
    output present and up to date (made by hand and `--touch`: no job runs). Each kind of file
    a job reads is edited in turn; the dry run then reruns exactly the jobs that read it and
    those downstream of them."""
    for split in ("train", "validation", "test"):
        rows = [{"q": f"{split} question {i}", "a": f"answer {i}"} for i in range(4)]
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    for model in ("teacher", "student"):
        directory = tmp_path / "models" / model
        (directory / ".cache").mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (directory / name).write_text("{}")
        (directory / ".cache" / "download.lock").write_text("")
    shutil.copytree(
        ROOT / "src" / "ketchup" / "evaluate" / "judge" / "templates", tmp_path / "templates"
    )
    config = {
        "study": "inputs",
        "tasks": {
            "mine": {
                "dataset": "file",
                "files": {s: f"data/{s}.jsonl" for s in ("train", "validation", "test")},
                "source_field": "q",
                "target_field": "a",
            }
        },
        "teacher": {"mode": "prompted", "model": {"name_or_path": "models/teacher"}},
        "students": {"s": {"model": {"name_or_path": "models/student"}}},
        "distill": {"methods": ["sft", "kl", "llmr"], "seeds": [0]},
        "judge": {
            "enabled": True,
            "model": "m",
            "protocols": ["pointwise"],
            "templates_dir": "templates",
        },
    }
    (tmp_path / "inputs.yaml").write_text(yaml.safe_dump(config))
    args = ("--directory", str(tmp_path), "--configfile", str(tmp_path / "inputs.yaml"))
    summary = snakemake("--summary", *args).stdout.splitlines()
    header = next(i for i, line in enumerate(summary) if line.startswith("output_file"))
    for line in summary[header + 1 :]:
        path = tmp_path / line.split("\t")[0]
        if path.name in ("model", "tokenizer"):  # directory() outputs
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def reruns_after(edit) -> dict[str, int]:
        snakemake("--touch", "--cores", "1", *args)  # every output newer than every input
        edit()
        return job_counts(snakemake("-n", *args).stdout)

    def append(path: Path, text: str):
        return lambda: path.open("a").write(text)

    report = {"judge": 1, "tables": 1, "figures": 1, "all": 1}
    students = {"distill": 3, "generate": 3, "grad_variance": 1}
    everything = {"prepare_data": 1, "teacher_outputs": 2, "score": 4, **students, **report}
    row = json.dumps({"q": "one more", "a": "row"}) + "\n"
    assert reruns_after(append(tmp_path / "data" / "validation.jsonl", row)) == everything
    # the student's pretrained files: the students initialised from them (sft, kl) and what
    # starts from kl (llmr, the variance table)
    student = tmp_path / "models" / "student" / "model.safetensors"
    assert reruns_after(append(student, " ")) == {"score": 3, **students, **report}
    # the teacher's (also the tokenizer of every student): its outputs and every student
    teacher = tmp_path / "models" / "teacher" / "tokenizer.json"
    assert reruns_after(append(teacher, " ")) == {
        "teacher_outputs": 2,
        "score": 4,
        **students,
        **report,
    }
    template = tmp_path / "templates" / "pointwise.txt"
    assert reruns_after(append(template, "Be strict.\n")) == report
    # hidden files of a model directory (a download's lock, a cache) are not the model's
    hidden = tmp_path / "models" / "teacher" / ".cache" / "download.lock"
    assert reruns_after(append(hidden, "x")) == {}


def a_second_study_leaves_the_first_alone(workdir: Path) -> None:
    """Another study (another name, another teacher, fewer methods) run in the same directory
    writes under results/<its name>/ only: every file of the first is as it was (content and
    modification time), the first still has nothing to do, and the index lists both."""
    import hashlib

    def files(study: Path) -> dict[Path, tuple[int, str]]:
        return {
            p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(study.rglob("*"))
            if p.is_file()
        }

    results = workdir / "results"
    before = files(results / "smoke")
    config = yaml.safe_load(SMOKE.read_text())
    config["study"] = "smoke-b"
    config["teacher"]["train"]["steps"] = 20
    config["distill"].update(methods=["sft"], ks=[2])
    (workdir / "b.yaml").write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", "--directory", str(workdir), "--configfile", str(workdir / "b.yaml"))
    assert files(results / "smoke") == before
    second = results / "smoke-b"
    assert (second / "tables" / "main.md").is_file()
    assert (second / "restaurants" / "teacher" / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in results.iterdir()) == ["smoke", "smoke-b", "studies.md"]
    index = (results / "studies.md").read_text()
    for study in ("smoke", "smoke-b"):
        assert f"| `{study}` | restaurants |" in index
        assert f"[config.yaml]({study}/config.yaml)" in index
    first = ("-n", "--directory", str(workdir), "--configfile", str(workdir / "judge.yaml"))
    assert "Nothing to be done" in snakemake(*first).stdout


TABLES = ("main", "k_grid", "variance", "sizes", "paper", "provenance")
FIGURE_KINDS = (
    "grad_variance", "methods", "metric_vs_k", "training_curves_baselines", "training_curves_k"
)  # fmt: skip


def assert_a_quiet_terminal(output: str) -> None:
    """No job's shell command (the profile does not print them), a progress line from a long
    job (which job, step N of M), and one last line that says where the results are."""
    assert "--config-json" not in output and "python -m ketchup" not in output
    job = "ketchup distill results/smoke/restaurants/students/t5-micro/ketchup_k4/seed0"
    assert f"{job}: train 6/6 (100%)" in output, output[-3000:]
    last = next(line for line in output.splitlines() if line.startswith("ketchup: tables in"))
    tables = "main, k_grid, variance, sizes, paper, provenance: md html csv tex"
    assert f"results/smoke/tables/ ({tables}" in last
    assert "5 figures in results/smoke/figures/" in last and "--report report.html" in last


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
        entry = results[f"results/smoke/tables/{name}.html"]
        assert entry["mime_type"] == "text/html" and entry["caption"].strip(), name
        tables = HtmlTables(embedded_file(entry)).tables
        if name == "judge":
            assert not tables  # the judge is off: the page says how to enable it
            assert "judge.enabled" in embedded_file(entry)
            continue
        assert tables and all(t[0] for t in tables), name  # each with its header
        markdown = (workdir / "results" / "smoke" / "tables" / f"{name}.md").read_text()
        md_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
        assert sum(len(t) for t in tables) == len(md_rows), name  # every row, the header too
    main = HtmlTables(embedded_file(results["results/smoke/tables/main.html"])).tables[0]
    assert main[0][0] == "System" and main[1][0] == "Teacher"
    assert any(row[0].startswith("KETCHUP (K=") for row in main)
    assert not any(path.endswith(".md") for path in results)  # no download-only duplicates
    # the figures, each with its caption
    for kind in FIGURE_KINDS:
        entry = results[f"results/smoke/figures/restaurants_t5-micro_{kind}.png"]
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
    """A file a rule declares (not a log, a checkpoint, a temporary, the judge's answer cache,
    which outlive a job on purpose, or the index of studies, which every study's tables job
    rewrites)."""
    parts = path.relative_to(results).parts
    scratch = {"logs", "benchmarks", "checkpoint", "best"}
    kept = path.name in ("log.jsonl", "cache.sqlite") or parts == (STUDIES_INDEX,)
    hidden = any(part.startswith(".") for part in parts)  # a temporary, or inside one
    return not (scratch & set(parts) or hidden or kept)


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
        study = tmp_path / "results" / "smoke"
        judge = study / "restaurants" / "judge" / "t5-micro"
        judgments = read_jsonl(judge / "judgments.jsonl")
        # 13 systems (teacher + 12) x 4 examples pointwise, 2 pairs x 4 examples x 2 orders;
        # identical prompts (the micro students often write the same text) are sent once
        assert len(judgments) == 13 * 4 + 2 * 4 * 2
        assert sent == len({j["key"] for j in judgments}), sent
        with (judge / "pairwise_summary.csv").open() as f:
            pairs = {(r["system_a"], r["system_b"]) for r in csv.DictReader(f)}
        best_k = next(
            line
            for line in (study / "tables" / "main.md").read_text().splitlines()
            if "KETCHUP (K=" in line
        )
        k = best_k.split("KETCHUP (K=")[1].split(")")[0]
        assert ("ketchup_k" + k, "llmr") in pairs and len(pairs) == 2, pairs
        table = (study / "tables" / "judge.md").read_text()
        assert "Pointwise" in table and "unparsed: 1" in table, table
        page = (study / "tables" / "judge.html").read_text()
        pointwise, pairwise = HtmlTables(page).tables
        assert pointwise[0][:3] == ["system", "n", "mean score"] and len(pointwise) == 1 + 13
        assert pairwise[0][:2] == ["A", "B"] and len(pairwise) == 1 + 2
        assert (study / "figures" / "restaurants_t5-micro_judge_win_rates.png").is_file()
        for path in (tmp_path / "results").rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".csv", ".log"):
                assert "sk-test-secret" not in path.read_text(errors="ignore"), path
        # a rerun of the judge (forced) answers everything from the cache
        snakemake(*args, "--forcerun", "judge", env=env)
        assert len(server.requests) == sent
    finally:
        server.close()


QWEN2_TINY = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def decoder_only_variant(config):
    """A decoder-only study from paper.yaml: a fine-tuned Qwen2 teacher and a student built from
    scratch (tokenizer and teacher jobs), a hub student, the judge, and on-policy methods
    without kl among the methods (their warm starts are extra distill jobs)."""
    config["tasks"] = {name: config["tasks"][name] for name in ("gsm8k", "dailydialog")}
    config["teacher"] = {
        "mode": "finetune",
        "model": {"architecture": {**QWEN2_TINY, "num_hidden_layers": 4}},
    }
    config["students"] = {
        "qwen-tiny": {"model": {"architecture": QWEN2_TINY}},
        "qwen-half-b": {"model": {"name_or_path": "Qwen/Qwen1.5-0.5B"}},
    }
    config["distill"].update(methods=["sft", "seqkd", "ketchup", "gkd", "minillm"], ks=[4, 8])
    config["distill"]["seeds"] = [0, 1]
    config["judge"] = {"enabled": True, "dry_run": True, "model": "judge-model"}


def word_level_variant(config):
    """No on-policy method: the only kl job is grad-variance's student, at the first seed."""
    config["distill"]["methods"] = ["sft", "seqkd"]


@pytest.mark.parametrize(
    "edit",
    [lambda c: None, decoder_only_variant, word_level_variant],
    ids=["paper", "decoder-only", "word-level"],
)
def test_plan_counts_the_jobs_that_snakemake_schedules(tmp_path, capsys, edit):
    """`ketchup plan`'s job count per rule equals what Snakemake's dry run schedules from
    scratch, for configs/paper.yaml and variants that take the DAG's other branches."""
    from ketchup.cli import main

    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    edit(config)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--forceall", "--directory", str(tmp_path), "--configfile", str(path))
    scheduled = job_counts(out.stdout)
    assert main(["plan", "--configfile", str(path)]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()]
    planned = {r[1].strip(): int(r[2]) for r in rows if len(r) > 3 and r[2].strip().isdigit()}
    assert planned.pop("total") == sum(scheduled.values())
    assert planned == scheduled


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table of a dry run, as {rule: count} ({} with nothing to do)."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


COMPUTE_VERBS = ("prepare-data", "train-tokenizer", "train-teacher", "teacher-outputs", "distill")
COMPUTE_VERBS += ("grad-variance", "generate")
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "


def test_the_hub_is_fetched_by_a_local_rule_and_jobs_run_offline(tmp_path):
    """configs/paper.yaml names two hub models and five hub datasets: one `fetch` job each (a
    local rule, with the network), and every job that reads one waits for its record and runs
    its verb with the hub offline, so a compute node never tries to download."""
    out = snakemake(
        "-n", "-p", "--directory", str(tmp_path), "--configfile", str(ROOT / "configs/paper.yaml")
    ).stdout
    assert job_counts(out)["fetch"] == 7
    commands = [line for line in out.splitlines() if "-m ketchup" in line]
    fetches = [c for c in commands if "-m ketchup fetch " in c]
    assert len(fetches) == 7 and not any("OFFLINE" in c for c in fetches)
    assert any("--model google/flan-t5-xl " in c for c in fetches)
    compute = [c for c in commands if any(f" {verb} " in c for verb in COMPUTE_VERBS)]
    assert compute and all(c.split("Shell command: ")[-1].startswith(OFFLINE) for c in compute)
    jobs = out.split("\n\n")
    prepare = next(j for j in jobs if "rule prepare_data:" in j and "task=xsum" in j)
    assert "input: results/paper/hub/data-xsum.json" in prepare
    distill = next(j for j in jobs if "rule distill:" in j and "method=ketchup_k4" in j)
    assert "results/paper/hub/model-teacher.json" in distill
    assert "results/paper/hub/model-student-t5-base.json" in distill


def test_an_overlay_that_changes_model_type_replaces_the_architecture(tmp_path):
    """`--configfile smoke.yaml gpt2.yaml`, the student turned into a GPT-2: its jobs get GPT-2's
    keys only (Snakemake's own merge would keep T5's d_kv and d_ff, which GPT2Config rejects),
    as `ketchup check-config` merges the same files."""
    from ketchup.config import load_config

    gpt2 = {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 128}
    overlay = tmp_path / "gpt2.yaml"
    overlay.write_text(
        yaml.safe_dump({"students": {"t5-micro": {"model": {"architecture": gpt2}}}})
    )
    out = snakemake(
        "-n", "-p", "--directory", str(tmp_path), "--configfile", str(SMOKE), str(overlay)
    ).stdout
    student = next(line for line in out.splitlines() if " distill " in line)
    student = json.loads(student.split("--student-json '")[1].split("'")[0])
    assert student["model"]["architecture"] == gpt2
    assert load_config(SMOKE, overlay).students["t5-micro"].model.architecture == gpt2
