"""The smoke study, cut to the methods that reach every rule, through workflow/profiles/slurm on a
real single-node SLURM.

The module starts its own cluster with scripts/slurm/start.sh (slurmctld, slurmd and munged from
the installed packages, everything they write in one temporary directory) and stops it with
scripts/slurm/stop.sh, by the daemons' pid files, even when a test fails. Needs root, the Debian
packages slurmctld, slurmd, slurm-client and munge (scripts/slurm/install.sh) and
snakemake-executor-plugin-slurm; skipped otherwise. Several times slower than the same study run
locally: every job is an sbatch job that starts Snakemake twice (batch script, then srun), and
the plugin notices finished jobs only at its status checks; hence three methods (sft, kl, KETCHUP
at one K: every rule, 17 jobs) instead of the smoke study's twelve systems.
Run with: pytest -m slurm tests/workflow/test_slurm.py
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ketchup.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "slurm"
SMOKE = ROOT / "configs" / "smoke.yaml"
COMMANDS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "srun", "scontrol")


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    absent = [c for c in COMMANDS if shutil.which(c) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (scripts/slurm/install.sh, as root)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install it)"
    if os.geteuid() != 0:
        return "scripts/slurm/start.sh must run as root (it starts munged and slurmd)"
    if Path("/etc/slurm/slurm.conf").exists():
        return "/etc/slurm/slurm.conf exists: this machine has its own SLURM"
    return None


MISSING = _missing()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(MISSING is not None, reason=f"no single-node SLURM here: {MISSING}"),
]

# Flags the test cluster needs on top of the profile, as a user of such a cluster would pass them:
SLURM_FLAGS = [
    # no accounting database here, so `sacct` fails: query job states with squeue (the cluster's
    # MinJobAge=3600 keeps finished jobs in squeue's view, >= 3x the initial delay below)
    "--slurm-status-command",
    "squeue",
    # first status check 5 s after submission instead of 40 s: the smoke jobs take 10-30 s
    "--slurm-init-seconds-before-status-checks",
    "5",
    # keep .snakemake/slurm_logs of successful jobs too: the tests read them
    "--slurm-keep-successful-logs",
]
# No account or partition: the plugin cannot guess an account (no sacct) and submits without -A,
# to the cluster's default partition.

# The rules the smoke study must send to the cluster (it may send more: the study grows). Every
# job is checked against the config's `resources:` entry of its rule.
REQUIRED_RULES = {
    "prepare_data",
    "tokenizer",
    "teacher",
    "teacher_outputs",
    "distill",
    "grad_variance",
    "generate",
}
# Snakemake's line for each sbatch job: "Job 3 has been submitted with SLURM jobid 4 (log: ...)."
SUBMITTED = re.compile(
    r"^Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.$", re.M
)


def _clean_env(slurm_conf: Path) -> dict[str, str]:
    """This environment without a surrounding job's SLURM settings, pointed at the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(slurm_conf)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


@pytest.fixture(scope="module")
def cluster():
    """A running single-node SLURM: its directory. Stopped (and removed) after the module."""
    # not under pytest's basetemp: /tmp/pytest-of-root is closed to others, and munged runs as
    # user munge; short, too, as munged's socket path must fit in a Unix socket address
    cluster_dir = Path(tempfile.mkdtemp(prefix="ketchup-slurm-", dir="/tmp"))
    try:
        started = subprocess.run(
            ["bash", str(SCRIPTS / "start.sh"), str(cluster_dir)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if started.returncode != 0:
            pytest.fail(f"start.sh failed:\n{started.stdout}\n{started.stderr}")
        yield cluster_dir
    finally:
        stopped = subprocess.run(
            ["bash", str(SCRIPTS / "stop.sh"), str(cluster_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(cluster_dir, ignore_errors=True)
        assert stopped.returncode == 0, f"stop.sh failed:\n{stopped.stdout}\n{stopped.stderr}"


@pytest.fixture(scope="module")
def smoke_run(cluster, tmp_path_factory):
    """The smoke study run through the profile: (working directory, cluster env, its log)."""
    workdir = tmp_path_factory.mktemp("slurm-smoke")
    env = _clean_env(cluster / "slurm.conf")
    fewer = workdir / "fewer.yaml"
    fewer.write_text(yaml.safe_dump({"distill": {"methods": ["sft", "kl", "ketchup"], "ks": [2]}}))
    args = [
        *("--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm")),
        *("--configfile", str(SMOKE), str(fewer)),
        *("--directory", str(workdir)),
        *("--snakefile", str(ROOT / "Snakefile")),
        *SLURM_FLAGS,
    ]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n"
            f"--- slurmctld.log\n{_tail(cluster / 'log' / 'slurmctld.log')}\n"
            f"--- slurmd.log\n{_tail(cluster / 'log' / 'slurmd.log')}"
        )
    return workdir, env, result.stdout + result.stderr


def _slurm_jobs(env: dict[str, str]) -> dict[str, str]:
    """Jobs slurmctld still remembers (MinJobAge): their `scontrol show job -o` lines, by id."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job_id = re.search(r"\bJobId=(\d+)", line)
        if job_id:
            jobs[job_id.group(1)] = line
    return jobs


def test_smoke_study_outputs(smoke_run):
    workdir, _, _ = smoke_run
    task = workdir / "results" / "smoke" / "restaurants"
    for split in ("train", "validation", "test"):
        assert (task / "data" / f"{split}.jsonl").is_file()
    assert (task / "tokenizer").is_dir()
    assert (task / "teacher" / "model").is_dir()
    n = yaml.safe_load(SMOKE.read_text())["tasks"]["restaurants"]["embedded"]
    for split in ("train", "test"):
        rows = read_jsonl(task / "teacher" / "outputs" / f"{split}.jsonl")
        assert len(rows) == n[f"n_{split}"]


def test_every_rule_ran_as_a_slurm_job(smoke_run):
    workdir, env, log = smoke_run
    resources = yaml.safe_load(SMOKE.read_text())["resources"]
    submitted = dict(SUBMITTED.findall(log))  # SLURM job id -> its log file
    # every job but the local rules (all, score, tables, figures) went to the cluster, and
    # slurmctld has exactly those
    assert len(submitted) == len(re.findall(r"^rule \w+:$", log, re.M)), log
    jobs = _slurm_jobs(env)
    assert set(jobs) == set(submitted), f"sbatch gave {sorted(submitted)}, slurmctld has {jobs}"
    logs_dir = workdir / ".snakemake" / "slurm_logs"
    rules = set()
    for job_id, slurm_log in submitted.items():
        line = jobs[job_id]
        # the plugin's log layout: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<job id>.log
        slurm_log = Path(slurm_log)
        rule = slurm_log.relative_to(logs_dir).parts[0].removeprefix("rule_")
        rules.add(rule)
        assert "JobState=COMPLETED" in line, line
        assert re.search(rf"\bComment=rule_{rule}_wildcards_\S+", line), line
        assert f"WorkDir={workdir} " in line, line
        # the config's resources, as sbatch options; gpu: 0 means no GPU request at all
        res = resources[rule]
        assert f"MinMemoryNode={res['mem_mb']}M " in line, line
        assert f"NumCPUs={res['threads']} " in line, line
        hours, minutes = divmod(res["runtime"], 60)
        assert f"TimeLimit={hours:02d}:{minutes:02d}:00 " in line, line
        assert res["gpu"] == 0
        assert "gpu" not in re.search(r"\bTRES=(\S+)", line).group(1), line
        assert "TresPer" not in line, line
        assert " NumTasks=1 " in line, line  # one task: the plugin passes no --ntasks-per-gpu
        # the job's output, written by slurmd where the plugin asked, shows Snakemake running it
        assert f"StdOut={slurm_log} " in line, line
        assert f"rule {rule}:" in slurm_log.read_text()
    assert REQUIRED_RULES.issubset(rules), f"rules run through SLURM: {sorted(rules)}"
