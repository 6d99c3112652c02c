#!/usr/bin/env python
"""The RL levers of docs/rl_sweep.md, one at a time, from the study's own kl warm starts.

Every run is the workflow's `ketchup distill` job for one (lever, system, seed), with the lever's
change applied to the config's `distill` section, then `ketchup generate` and `ketchup score` on
the VALIDATION split (the test split is left for the final tables). First build the study's
teacher and warm starts, e.g. for the long study that docs/rl_sweep.md used:

    snakemake --cores all --configfile config.yaml configs/long.yaml \
        results/long/restaurants/students/t5-tiny/kl/seed{0,1,2}/model
    python scripts/rl_sweep.py --config config.yaml configs/long.yaml --parallel 2

(several config files are merged in order, as Snakemake merges its --configfile list).

`--task` picks one of the study's tasks (default: its first), `--seeds` a subset of its seeds.
Writes under the study's results/<study>/sweep/<task>/: <lever>/<system>/seed<S>/ (the job's
out-dir: model, log.jsonl, then validation.jsonl and its scores), summary.{csv,md}: per lever and
system, the mean and standard deviation over seeds of the validation metric, slot error rate and
words per output of the selected checkpoint, the rollout length at the end of training and the
step kept, with the warm start's and the teacher's as reference rows, and curves_<system>.png. A
finished run is skipped when the sweep is run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ketchup.config import (
    job_distill_section,
    merge_configs,
    parse_config,
    read_config_files,
    split_system,
)
from ketchup.data.registry import task_metric
from ketchup.files import csv_text, read_jsonl, write_text

# name -> (change to the `distill` section, why it is a lever: its source or reason)
LEVERS: dict[str, tuple[dict, str]] = {
    "config": ({}, "the config as it is (docs/rl_sweep.md: long.yaml at lr 1e-4)"),
    "soft_value": ({"value": "soft"}, "LLMR's runs used the soft (log-sum-exp) value"),
    "lr_1e-5": ({"train": {"learning_rate": 1e-5}}, "the paper family trained at 1e-5 to 1e-6"),
    "lr_1e-6": ({"train": {"learning_rate": 1e-6}}, "the paper family trained at 1e-5 to 1e-6"),
    "lr_1e-4": ({"train": {"learning_rate": 1e-4}}, "five times the default's 2e-5"),
    "released": (
        {"train": {"learning_rate": 1e-5, "batch_size": 8, "steps": 200, "eval_every": 8}},
        "the released KETCHUP code: lr 1e-5, 8 rollouts per update (1 x 8 accumulation), "
        "validation every 8 updates",
    ),
    "greedy": ({"rollout": {"greedy": True}}, "the released KETCHUP code rolled out greedily"),
    "fixed_denom": (
        {"policy_gradient": {"normalize": "none", "denom": 10.0}},
        "the released code divides by a fixed denom instead of the batch std",
    ),
    "weight_none": (
        {"policy_gradient": {"weight": "none"}},
        "plain REINFORCE, without the released code's stop-gradient weight pi(y_t)",
    ),
    "weight_ratio": (
        {"policy_gradient": {"weight": "ratio"}},
        "LLMR's importance ratio pi / q against the top-k sampler instead of pi",
    ),
    "uniform_ce": (
        {"policy_gradient": {"uniform_ce": 0.1}},
        "LLMR's entropy-like regulariser: cross-entropy to the uniform distribution, 0.1",
    ),
    "keep_truncated": (
        {"rollout": {"drop_truncated": False}},
        "rollouts without EOS kept in the loss instead of dropped",
    ),
    "batch_64": ({"train": {"batch_size": 64}}, "twice the rollouts per update"),
}
SYSTEMS = ["llmr", "ketchup_k4"]
# what the summary reports for each run, from its validation scores
COLUMNS = ("metric", "ser", "words", "end_length", "best_step")


class Study:
    """The config's paths and sections, as the workflow's rules pass them to the verbs."""

    def __init__(self, config_paths: list[Path], results: Path, task: str | None = None):
        self.raw = read_config_files(*config_paths)  # later files override earlier ones
        self.study = parse_config(self.raw)  # fills the schema's defaults into self.raw
        self.task = task or next(iter(self.raw["tasks"]))
        if self.task not in self.raw["tasks"]:
            raise SystemExit(
                f"--task {self.task}: not a task of the study ({', '.join(self.raw['tasks'])})"
            )
        task = self.raw["tasks"][self.task]
        self.student, student = next(iter(self.raw["students"].items()))
        self.task_json, self.student_json = json.dumps(task), json.dumps(student)
        self.dir = results / self.study.study  # the workflow's results/<study>/
        self.root = self.dir / self.task
        self.seeds = self.study.distill.seeds
        self.primary = task_metric(self.study.tasks[self.task])

    def warm_start(self, seed: int) -> Path:
        return self.root / "students" / self.student / "kl" / f"seed{seed}" / "model"

    def verb(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "ketchup", *argv]

    def data(self) -> list[str]:
        return ["--data-dir", str(self.root / "data"), "--task-json", self.task_json]

    def distill(self, system: str, seed: int, distill: dict, out: Path) -> list[str]:
        return self.verb(
            "distill",
            "--teacher",
            str(self.root / "teacher" / "model"),
            "--tokenizer",
            str(self.root / "tokenizer"),
            "--data-dir",
            str(self.root / "data"),
            "--teacher-outputs",
            str(self.root / "teacher" / "outputs" / "train.jsonl"),
            "--method",
            system,
            "--seed",
            str(seed),
            "--task-json",
            self.task_json,
            "--student-json",
            self.student_json,
            "--generation-json",
            json.dumps(self.raw["teacher"]["generation"]),
            "--config-json",
            json.dumps(job_distill_section(distill, system)),
            "--warm-start",
            str(self.warm_start(seed)),
            "--out-dir",
            str(out),
        )

    def validate(self, model: Path, out: Path, run: dict) -> list[list[str]]:
        """generate + score on the validation split: the two commands."""
        evaluation = json.dumps(self.raw["evaluation"])
        outputs = out / "validation.jsonl"
        return [
            self.verb(
                "generate",
                "--model",
                str(model),
                *self.data(),
                "--split",
                "validation",
                "--config-json",
                evaluation,
                "--out",
                str(outputs),
            ),
            self.verb(
                "score",
                "--outputs",
                str(outputs),
                *self.data(),
                "--split",
                "validation",
                "--run-json",
                json.dumps(run),
                "--model",
                str(model),
                "--out",
                str(out / "validation_scores.csv"),
            ),
        ]


def run_commands(commands: list[list[str]], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with log.open("w") as f:
        for command in commands:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:4])} failed: see {log}")


def training_log(out: Path) -> list[dict]:
    return read_jsonl(out / "log.jsonl") if (out / "log.jsonl").is_file() else []


def summary_of(out: Path, primary: str) -> dict[str, float]:
    scores = json.loads((out / "validation_scores.json").read_text())["metrics"]
    log = training_log(out)
    lengths = [r["rollout_length"] for r in log if r["kind"] == "train"][-10:]
    best = [r["step"] for r in log if r["kind"] == "eval" and r["best"]]
    nan = float("nan")
    return {
        "metric": scores[primary],
        "ser": scores.get("ser", nan),
        "words": scores["words"],
        "end_length": statistics.mean(lengths) if lengths else nan,
        "best_step": best[-1] if best else nan,
    }


def plot_curves(sweep: Path, levers: list[str], systems: list[str], primary: str) -> None:
    """Validation metric and rollout length against updates, mean over seeds, a line per lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for system in systems:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for lever in levers:
            logs = [training_log(d) for d in sorted((sweep / lever / system).glob("seed*"))]
            for ax, kind, key in zip(
                axes, ("eval", "train"), ("score", "rollout_length"), strict=True
            ):
                series = [[r[key] for r in log if r["kind"] == kind] for log in logs]
                steps = [r["step"] for r in logs[0] if r["kind"] == kind] if logs else []
                if steps and all(len(x) == len(steps) for x in series):
                    ax.plot(
                        steps, [statistics.mean(v) for v in zip(*series, strict=True)], label=lever
                    )
        axes[0].set_ylabel(f"validation {primary} (step 0: the KL warm start)")
        axes[1].set_ylabel("rollout length, tokens (per update)")
        for ax in axes:
            ax.set_xlabel("update step")
        axes[0].legend(fontsize=8, ncol=2)
        fig.suptitle(f"{system}: one lever at a time, mean over seeds", fontsize=10)
        fig.tight_layout()
        fig.savefig(sweep / f"curves_{system}.png", dpi=110)
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, nargs="+", default=[Path("config.yaml")], help="merged in order"
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument(
        "--task", default=None, help="the study's task to sweep (default: its first)"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the study's)")
    args = parser.parse_args()
    study = Study(args.config, args.results, args.task)
    if args.seeds:
        study.seeds = [int(s) for s in args.seeds.split(",")]
    levers = args.levers.split(",")
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
    systems = args.systems.split(",")
    for system in systems:
        split_system(system)
    missing = [str(study.warm_start(s)) for s in study.seeds if not study.warm_start(s).is_dir()]
    if missing:
        parser.error(f"build the warm starts first (see --help): missing {missing}")
    sweep = study.dir / "sweep" / study.task

    jobs = []  # (lever, system, seed, out, commands)
    for seed in study.seeds:  # the references: the warm start and the teacher, on validation
        out = sweep / "reference" / "kl" / f"seed{seed}"
        run = {"task": study.task, "student": study.student, "system": "kl", "seed": seed}
        jobs.append(
            ("reference", "kl", seed, out, study.validate(study.warm_start(seed), out, run))
        )
    teacher = study.root / "teacher" / "model"
    run = {"task": study.task, "student": None, "system": "teacher", "seed": None}
    out = sweep / "reference" / "teacher" / "seed0"
    jobs.append(("reference", "teacher", 0, out, study.validate(teacher, out, run)))
    for lever in levers:
        distill = merge_configs(study.raw["distill"], LEVERS[lever][0])
        for system in systems:
            for seed in study.seeds:
                out = sweep / lever / system / f"seed{seed}"
                run = {"task": study.task, "student": study.student, "system": system, "seed": seed}
                commands = [
                    study.distill(system, seed, distill, out),
                    *study.validate(out / "model", out, run),
                ]
                jobs.append((lever, system, seed, out, commands))

    def work(job) -> str | None:
        """Run one job (unless done); a failure is reported, and the other jobs go on."""
        lever, system, seed, out, commands = job
        try:
            if not (out / "validation_scores.json").is_file():
                out.mkdir(parents=True, exist_ok=True)
                run_commands(commands, out / "sweep.log")
        except RuntimeError as e:
            print(f"{lever} {system} seed{seed}: FAILED, {e}", flush=True)
            return str(e)
        print(f"{lever} {system} seed{seed}: {summary_of(out, study.primary)}", flush=True)
        return None

    with ThreadPoolExecutor(args.parallel) as pool:
        failures = [f for f in pool.map(work, jobs) if f]
    if failures:
        print(f"{len(failures)} run(s) failed; fix and rerun (finished runs are kept):")
        print("\n".join(failures))
        return 1

    rows = []
    for lever in ["reference", *levers]:
        for system in ["kl", "teacher"] if lever == "reference" else systems:
            outs = [j[3] for j in jobs if j[0] == lever and j[1] == system]
            values = [summary_of(out, study.primary) for out in outs]
            row = {
                "lever": lever,
                "system": system,
                "seeds": len(values),
                "why": LEVERS[lever][1] if lever in LEVERS else "warm start / teacher",
            }
            for column in COLUMNS:
                xs = [v[column] for v in values]
                if any(math.isnan(x) for x in xs):  # the references have no training log
                    row[column] = row[f"{column}_std"] = float("nan")
                    continue
                row[column] = statistics.mean(xs)
                row[f"{column}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
            rows.append(row)
    columns = [
        "lever",
        "system",
        "seeds",
        *(c for col in COLUMNS for c in (col, f"{col}_std")),
        "why",
    ]
    write_text(sweep / "summary.csv", csv_text(rows, columns, digits=2))
    plot_curves(sweep, levers, systems, study.primary)
    label = {
        "metric": f"val {study.primary}",
        "ser": "val SER %",
        "words": "val words",
        "end_length": "rollout tokens, last 10 updates",
        "best_step": "step kept",
    }
    lines = [
        "| lever | system | " + " | ".join(label[c] for c in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [f"{row[c]:.2f} ± {row[c + '_std']:.2f}" for c in COLUMNS]
        lines.append(f"| {row['lever']} | {row['system']} | " + " | ".join(cells) + " |")
    write_text(sweep / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
