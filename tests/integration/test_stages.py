"""The data, teacher and grad-variance verbs end to end on tiny data and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ketchup.cli import main
from ketchup.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]

TASK = {
    "dataset": "embedded",
    "embedded": {"n_train": 40, "n_validation": 4, "n_test": 4, "n_references": 2, "seed": 1},
}
TRAIN = {
    "steps": 4,
    "batch_size": 8,
    "warmup_steps": 1,
    "eval_every": 2,
    "max_source_length": 48,
    "max_target_length": 48,
}
GENERATION = {"max_new_tokens": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    task = json.dumps(TASK)
    assert (
        main(
            ["prepare-data", "--task", "t", "--config-json", task, "--out-dir", str(root / "data")]
        )
        == 0
    )
    assert (
        main(
            [
                "train-tokenizer",
                "--data-dir",
                str(root / "data"),
                "--config-json",
                '{"vocab_size": 150}',
                "--out-dir",
                str(root / "tok"),
            ]
        )
        == 0
    )
    return root


def test_splits_and_tokenizer(prepared):
    from transformers import AutoTokenizer

    sizes = {
        s: len(read_jsonl(prepared / "data" / f"{s}.jsonl"))
        for s in ("train", "validation", "test")
    }
    assert sizes == {"train": 40, "validation": 4, "test": 4}
    resolved = json.loads((prepared / "data" / "prepare-data.config.json").read_text())
    assert resolved["config"]["embedded"]["n_train"] == 40
    # what ran, not null for "the dataset's own"
    assert TASK.get("prompt") is None and resolved["config"]["prompt"] == "{source}"
    assert resolved["config"]["metric"] == "bleu"
    assert len(AutoTokenizer.from_pretrained(prepared / "tok")) == 150


def test_a_rerun_removes_what_killed_writes_left(tmp_path):
    """The hidden `.NAME.XXXX.tmp` temporaries of writes killed in an earlier run of a job (a
    file, a directory) are removed when the job runs again; other hidden files stay."""
    data, tok = tmp_path / "data", tmp_path / "tok"
    data.mkdir()
    planted = [
        data / ".train.jsonl.k1ll3d.tmp",
        data / ".prepare-data.config.json.k1ll3d.tmp",
        tmp_path / ".tok.k1ll3d.tmp",
    ]
    planted[0].write_text('{"id": "half')
    planted[1].write_text("{")
    planted[2].mkdir()
    (planted[2] / "tokenizer.json").write_text("{")
    (data / ".keep").write_text("not ours")
    task = json.dumps(TASK)
    assert main(["prepare-data", "--task", "t", "--config-json", task, "--out-dir", str(data)]) == 0
    argv = ["train-tokenizer", "--data-dir", str(data), "--config-json", '{"vocab_size": 150}']
    assert main([*argv, "--out-dir", str(tok)]) == 0
    assert not [p for p in planted if p.exists()]
    assert (data / ".keep").is_file() and (tok / "tokenizer.json").is_file()


def train_teacher_with_outputs(prepared, arch: dict, out_dir, split: str):
    """`train-teacher` then `teacher-outputs` on `split`, as the workflow's two rules run them."""
    teacher = {
        "model": {"architecture": arch},
        "train": TRAIN,
        "generation": GENERATION,
        "max_source_length": TRAIN["max_source_length"],
    }
    args = [
        "--data-dir",
        str(prepared / "data"),
        "--task-json",
        json.dumps(TASK),
        "--config-json",
        json.dumps(teacher),
    ]
    assert (
        main(
            [
                "train-teacher",
                "--tokenizer",
                str(prepared / "tok"),
                *args,
                "--out-dir",
                str(out_dir),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "teacher-outputs",
                "--teacher",
                str(out_dir / "model"),
                "--split",
                split,
                *args,
                "--out",
                str(out_dir / f"{split}.jsonl"),
            ]
        )
        == 0
    )
    return out_dir


def test_teacher_training_is_reproducible(prepared, archs, tmp_path):
    """Two runs of the same config give the same teacher, initial weights included (they were
    once drawn from whatever state the global RNG was in)."""
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        train_teacher_with_outputs(prepared, archs["t5"], tmp_path / run, "test")
        weights.append(load_file(tmp_path / run / "model" / "model.safetensors"))
        torch.rand(7)  # whatever else the process did in between must not matter
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert read_jsonl(tmp_path / "a" / "test.jsonl") == read_jsonl(tmp_path / "b" / "test.jsonl")


def test_causal_teacher_trains_and_writes_outputs(prepared, archs, tmp_path):
    train_teacher_with_outputs(prepared, archs["gpt2"], tmp_path, "test")
    resolved = json.loads((tmp_path / "model" / "train-teacher.config.json").read_text())
    assert resolved["best_step"] in (2, 4)
    assert (resolved["task"]["prompt"], resolved["task"]["metric"]) == ("{source}", "bleu")
    rows = read_jsonl(tmp_path / "test.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(prepared / "data/test.jsonl")]


def test_prompted_teacher_is_used_as_it_is(prepared, archs, tmp_path):
    """mode: prompted loads a saved model by path (as the paper loads flan-t5-xl by hub id)."""
    from ketchup.config import ModelConfig
    from ketchup.models.loading import build_model, load_tokenizer, save_model

    tokenizer = load_tokenizer(str(prepared / "tok"))
    save_model(
        build_model(ModelConfig(None, archs["t5"], "float32"), tokenizer),
        tokenizer,
        tmp_path / "pretrained",
    )
    teacher = {
        "mode": "prompted",
        "model": {"name_or_path": str(tmp_path / "pretrained")},
        "generation": GENERATION,
        "max_source_length": 48,
    }
    task = dict(TASK, prompt="describe: {source}")
    out = tmp_path / "train.jsonl"
    assert (
        main(
            [
                "teacher-outputs",
                "--teacher",
                str(tmp_path / "pretrained"),
                "--split",
                "train",
                "--data-dir",
                str(prepared / "data"),
                "--task-json",
                json.dumps(task),
                "--config-json",
                json.dumps(teacher),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(read_jsonl(out)) == 40
    # training a prompted teacher is a config error, not a silent no-op
    assert (
        main(
            [
                "train-teacher",
                "--tokenizer",
                str(prepared / "tok"),
                "--data-dir",
                str(prepared / "data"),
                "--task-json",
                json.dumps(task),
                "--config-json",
                json.dumps(teacher),
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )


def test_missing_model_path_is_named(prepared, tmp_path, capsys):
    teacher = {
        "mode": "prompted",
        "model": {"name_or_path": str(tmp_path / "nowhere")},
        "max_source_length": 48,
    }
    assert (
        main(
            [
                "teacher-outputs",
                "--teacher",
                str(tmp_path / "nowhere"),
                "--split",
                "test",
                "--data-dir",
                str(prepared / "data"),
                "--task-json",
                json.dumps(TASK),
                "--config-json",
                json.dumps(teacher),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 1
    )
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_grad_variance_on_shared_rollouts(prepared, archs, tmp_path):
    """Every K gets the same number of rollout sets; K = 1 is its own reference."""
    import csv

    import torch

    from ketchup.config import ModelConfig
    from ketchup.models.loading import build_model, load_tokenizer, save_model

    tokenizer = load_tokenizer(str(prepared / "tok"))
    for name, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(None, archs["t5"], "float32"), tokenizer)
        save_model(model, tokenizer, tmp_path / name)
    distill = {
        "ks": [2, 8],
        "rollout": {"max_new_tokens": 6, "drop_truncated": False},
        "variance": {"rollout_sets": 3, "sources": 4},
    }
    out = tmp_path / "variance" / "variance.csv"
    assert (
        main(
            [
                "grad-variance",
                "--teacher",
                str(tmp_path / "teacher"),
                "--student",
                str(tmp_path / "student"),
                "--data-dir",
                str(prepared / "data"),
                "--task-json",
                json.dumps(TASK),
                "--config-json",
                json.dumps(distill),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["system"]: r for r in csv.DictReader(out.open())}
    # every policy-gradient system of the study (the default methods), LLMR the reference
    assert list(rows) == ["llmr", "llmr_mean", "llmr_minvar", "ketchup_k2", "ketchup_k8"]
    assert [int(r["k"]) for r in rows.values()] == [1, 1, 1, 2, 8]
    assert [r["baseline"] for r in rows.values()] == ["none", "mean", "minvar", "none", "none"]
    assert all(int(r["n_rollout_sets"]) == 3 for r in rows.values())
    assert all(float(r["variance"]) > 0 for r in rows.values())
    # 3 rollout sets of an untrained student: the flag says whether the mean gradient is resolved,
    # and LLMR's cosine to itself is 1 wherever its debiased squared norm is positive
    llmr = rows["llmr"]
    assert (float(llmr["mean_grad_sq_norm_low"]) > 0) == (llmr["resolved"] == "True")
    if float(llmr["mean_grad_sq_norm"]) > 0:
        assert float(llmr["cosine_to_reference"]) == pytest.approx(1.0)
    # K = 8 returns are q alone: larger per token than LLMR's sums of q - V <= 0
    assert float(rows["ketchup_k8"]["return_mean"]) > float(rows["llmr"]["return_mean"])
    resolved = json.loads((out.parent / "grad-variance.config.json").read_text())
    assert resolved["config"]["variance"]["rollout_sets"] == 3
    assert resolved["precision"]["student"]["compute"] == "float32"


@pytest.fixture(scope="module")
def teacher_dir(prepared, archs, tmp_path_factory):
    """A tiny trained T5 teacher and its outputs on the training split."""
    return train_teacher_with_outputs(prepared, archs["t5"], tmp_path_factory.mktemp("t"), "train")


def distill_argv(
    prepared,
    teacher_dir,
    arch,
    system,
    out_dir,
    *,
    seed=3,
    config=None,
    extra=(),
    train=TRAIN,
    precision="auto",
):
    """The `distill` command line the workflow's rule builds, for one system."""
    return [
        "distill",
        "--teacher",
        str(teacher_dir / "model"),
        "--tokenizer",
        str(prepared / "tok"),
        "--data-dir",
        str(prepared / "data"),
        "--teacher-outputs",
        str(teacher_dir / "train.jsonl"),
        "--method",
        system,
        "--seed",
        str(seed),
        "--task-json",
        json.dumps(TASK),
        "--student-json",
        json.dumps({"model": {"architecture": arch, "precision": precision}, "train": train}),
        "--generation-json",
        json.dumps(GENERATION),
        "--config-json",
        json.dumps(config or {}),
        "--out-dir",
        str(out_dir),
        *extra,
    ]


@pytest.mark.parametrize("method", ["sft", "seqkd", "kl"])
def test_distill_word_level_methods(prepared, teacher_dir, archs, method, tmp_path):
    assert main(distill_argv(prepared, teacher_dir, archs["t5"], method, tmp_path)) == 0
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["method"] == method and resolved["seed"] == 3
    assert resolved["config"]["train"]["steps"] == TRAIN["steps"]
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] and r["loss"] >= 0 for r in log if r["kind"] == "train")
    # precision auto on the CPU: float32, no autocast
    float32 = {"weights": "float32", "compute": "float32"}
    teacher = float32 if method == "kl" else None  # sft and seqkd read no teacher
    assert resolved["precision"] == {"student": float32, "teacher": teacher}


# On-policy: rollouts of 8 tokens at most, kept whether or not they end (a tiny student seldom
# ends them), 4 updates of 4 rollouts.
ONPOLICY = {
    "train": {**TRAIN, "batch_size": 4, "learning_rate": 1e-2},
    "rollout": {"max_new_tokens": 8, "max_source_length": 48, "drop_truncated": False},
}


@pytest.fixture(scope="module")
def warm_start(prepared, teacher_dir, archs, tmp_path_factory):
    """The kl student: where every on-policy method starts."""
    out = tmp_path_factory.mktemp("kl")
    assert main(distill_argv(prepared, teacher_dir, archs["t5"], "kl", out, seed=0)) == 0
    return out / "model"


def _weights(model_dir):
    from ketchup.models.loading import load_model

    return load_model(str(model_dir)).state_dict()


def _onpolicy_argv(prepared, teacher_dir, archs, warm_start, system, out_dir, config=ONPOLICY):
    extra = ("--warm-start", str(warm_start))
    return distill_argv(
        prepared, teacher_dir, archs["t5"], system, out_dir, config=config, extra=extra
    )


def _run_onpolicy(prepared, teacher_dir, archs, warm_start, system, out_dir):
    return main(_onpolicy_argv(prepared, teacher_dir, archs, warm_start, system, out_dir))


@pytest.mark.parametrize(
    "system", ["js", "tvd", "gkd", "minillm", "llmr", "llmr_mean", "llmr_minvar", "ketchup_k4"]
)
def test_distill_onpolicy_methods(prepared, teacher_dir, archs, warm_start, system, tmp_path):
    """Each on-policy system trains from the warm start, logs its statistics, moves the weights."""
    import torch

    assert _run_onpolicy(prepared, teacher_dir, archs, warm_start, system, tmp_path) == 0
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["system"] == system and resolved["warm_start"] == str(warm_start)
    assert (resolved["task"]["prompt"], resolved["task"]["metric"]) == ("{source}", "bleu")
    assert resolved["k"] == (4 if system == "ketchup_k4" else 1)
    assert resolved["config"]["train"]["batch_size"] == 4
    log = read_jsonl(tmp_path / "log.jsonl")
    assert log[0] == {"kind": "eval", "step": 0, "score": log[0]["score"], "best": False}
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for row in train:
        assert all(v == v for v in row.values())  # no NaN anywhere
        assert row["grad_norm"] > 0
        # gkd trains on the teacher's outputs in some updates (lmbda 0.5): no rollouts there
        assert row["student_rows"] == (0 if system == "gkd" and "rollout_length" not in row else 4)
        if row["student_rows"]:
            assert 1 <= row["rollout_length"] <= 8 and 0 <= row["finished_share"] <= 1
        if system in ("js", "tvd", "gkd"):
            assert row["divergence"] > 0 and row["loss"] == pytest.approx(row["divergence"])
        elif system == "minillm":
            assert {"pg_loss", "single_step", "weight_mean", "reward_mean"} <= set(row)
            assert row["single_step"] > 0 and 0 <= row["clipped_share"] <= 1
        else:
            assert {"return_mean", "reward_mean", "advantage_std", "baseline"} <= set(row)
            assert 0 <= row["clipped_share"] <= 1
            assert (row["baseline"] == 0.0) == (system in ("llmr", "ketchup_k4"))
    before, after = _weights(warm_start), _weights(tmp_path / "model")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_lambda_chooses_student_samples_or_teacher_outputs(
    prepared, teacher_dir, archs, warm_start, lmbda, tmp_path
):
    config = {**ONPOLICY, "gkd": {"lmbda": lmbda}}
    argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "gkd", tmp_path, config)
    assert main(argv) == 0
    train = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert [r["student_rows"] for r in train] == [4 * int(lmbda)] * 4


def test_greedy_rollouts_with_the_default_sampling_settings(
    prepared, teacher_dir, archs, warm_start, tmp_path
):
    """`rollout.greedy: true` (the released code, configs/paper.yaml) beside the default top_k
    and temperature, which apply to sampling only: it trains (it used to stop with a ValueError)."""
    greedy = {**ONPOLICY, "rollout": {**ONPOLICY["rollout"], "greedy": True, "temperature": 0.7}}
    argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "llmr", tmp_path, greedy)
    assert main(argv) == 0
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["config"]["rollout"]["greedy"] is True
    assert resolved["config"]["rollout"]["top_k"] == 10


def test_onpolicy_resume_matches_an_uninterrupted_run(
    prepared, teacher_dir, archs, warm_start, tmp_path, monkeypatch
):
    """Killed after the step-2 checkpoint and rerun: same rollouts, same final model."""
    import torch

    from ketchup.math import objectives

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run_onpolicy(prepared, teacher_dir, archs, warm_start, "ketchup_k2", whole) == 0

    real, calls = objectives.policy_gradient_objective, []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside: no cleanup code runs
        return real(*args, **kwargs)

    monkeypatch.setattr(objectives, "policy_gradient_objective", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        _run_onpolicy(prepared, teacher_dir, archs, warm_start, "ketchup_k2", resumed)
    assert not (resumed / "model").exists()
    monkeypatch.setattr(objectives, "policy_gradient_objective", real)
    assert _run_onpolicy(prepared, teacher_dir, archs, warm_start, "ketchup_k2", resumed) == 0

    a, b = _weights(whole / "model"), _weights(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [
        {k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(whole / "log.jsonl")
    ]
    again = [
        {k: v for k, v in r.items() if k != "tokens_per_s"}
        for r in read_jsonl(resumed / "log.jsonl")
    ]
    assert strip == again


def _killed_and_resumed(command, tmp_path, kill):
    """Run `command(out)` to the end in tmp_path/whole; start it again in tmp_path/killed, `kill`
    the job once its first checkpoint is on disk, check that it died without a model, and rerun
    it to the end. Returns both out-dirs and the step the rerun says it resumed at."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def finish(out):
        done = subprocess.run(command(out), capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(whole)
    job = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint" / "trainer_state.pt"
    while not checkpoint.exists() and job.poll() is None:
        time.sleep(0.005)
    kill(job)
    assert job.wait() == -signal.SIGKILL, "the job ended before it could be killed"
    assert not (killed / "model").exists()
    stdout = finish(killed)
    assert "resuming from " in stdout, stdout
    resumed_at = int(stdout.split("resuming from ")[1].split(" at step ")[1].split()[0])
    return whole, killed, resumed_at


def _train_steps(out_dir) -> list[int]:
    return [r["step"] for r in read_jsonl(out_dir / "log.jsonl") if r["kind"] == "train"]


def test_sigkilled_job_resumes_from_its_checkpoint_to_the_same_model(
    prepared, teacher_dir, archs, warm_start, tmp_path
):
    """`kill -9` of a real `ketchup distill` process (llmr: sampled rollouts, so the RNG state
    matters) after its first checkpoint; the rerun resumes there and ends bit-identical to an
    uninterrupted run."""
    import signal
    import sys

    import torch

    onpolicy = {**ONPOLICY, "train": {**ONPOLICY["train"], "steps": 60, "eval_every": 10}}

    def command(out):
        argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "llmr", out, onpolicy)
        return [sys.executable, "-m", "ketchup", *argv]

    whole, killed, resumed_at = _killed_and_resumed(
        command, tmp_path, lambda job: job.send_signal(signal.SIGKILL)
    )
    assert 10 <= resumed_at < 60
    a, b = _weights(whole / "model"), _weights(killed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _train_steps(killed) == list(range(1, 61))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc), children first listed last."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found[::-1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_process_job_killed_and_resumed_ends_as_an_uninterrupted_one(
    prepared, teacher_dir, archs, warm_start, mode, tmp_path
):
    """`ketchup distill` (llmr: sampled rollouts) as 2 gloo processes under torchrun, on each
    engine: SIGKILLed (both processes) after its first checkpoint, rerun, it resumes there (each
    process its own RNG stream) and ends with the model an uninterrupted run writes."""
    import os
    import signal
    import sys

    import torch

    train = {**ONPOLICY["train"], "steps": 8, "eval_every": 4, "parallel": mode}
    onpolicy = {**ONPOLICY, "train": train}

    def command(out):
        argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "llmr", out, onpolicy)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        return [sys.executable, *launcher, "-m", "ketchup", *argv]

    def kill(job):  # both processes (own sessions), then the launcher
        for pid in (*descendants(job.pid), job.pid):
            os.kill(pid, signal.SIGKILL)

    whole, killed, resumed_at = _killed_and_resumed(command, tmp_path, kill)
    assert 4 <= resumed_at < 8
    a, b = _weights(whole / "model"), _weights(killed / "model")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert _train_steps(killed) == list(range(1, 9))


def test_a_teacher_sharded_over_two_processes_scores_as_a_replicated_one(
    prepared, teacher_dir, archs, warm_start, tmp_path
):
    """`distill.teacher_placement: shard` (FSDP2 over the job's 2 processes, inference only)
    gives the teacher-forced pass of every update the logits a replicated teacher gives: the
    same student at the end."""
    import os
    import subprocess
    import sys

    import torch

    def run(placement):
        config = {**ONPOLICY, "teacher_placement": placement}
        out = tmp_path / placement
        argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "ketchup_k2", out, config)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        done = subprocess.run(
            [sys.executable, *launcher, "-m", "ketchup", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return _weights(out / "model")

    replicated, sharded, start = run("replicate"), run("shard"), _weights(warm_start)
    moved = max(float((replicated[k] - start[k]).abs().max()) for k in replicated)
    assert moved > 1e-3
    for name in replicated:
        torch.testing.assert_close(sharded[name], replicated[name], rtol=0, atol=1e-5, msg=name)


def test_nan_loss_stops_the_job_naming_the_step(
    prepared, teacher_dir, archs, warm_start, tmp_path, monkeypatch, capsys
):
    """A NaN injected into update 3's loss: exit 1, one line naming the step, no model published,
    the step-2 checkpoint kept (the job's rerun resumes from it)."""
    import torch

    from ketchup.math import objectives

    real, calls = objectives.policy_gradient_objective, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan"), stats) if len(calls) == 3 else (loss, stats)

    monkeypatch.setattr(objectives, "policy_gradient_objective", nan_at_step_3)
    assert _run_onpolicy(prepared, teacher_dir, archs, warm_start, "ketchup_k2", tmp_path) == 1
    err = capsys.readouterr().err  # progress bars, then the error on one line
    line = next(x for x in err.splitlines() if x.startswith("ketchup distill: error: "))
    assert "loss is nan at step 3" in line and "(step 2) is kept" in line, err
    assert not (tmp_path / "model").exists()
    saved = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert saved["state"]["step"] == 2


def test_distill_argument_errors_name_what_is_missing(
    prepared, teacher_dir, archs, tmp_path, capsys
):
    def run(system, **kwargs):
        return main(
            distill_argv(prepared, teacher_dir, archs["t5"], system, tmp_path / "o", **kwargs)
        )

    assert run("ketchup") == 1
    assert "ketchup_k<K>" in capsys.readouterr().err
    assert run("ketchup_k0") == 1
    capsys.readouterr()
    assert run("llmr") == 1
    assert "--warm-start" in capsys.readouterr().err
    argv = distill_argv(prepared, teacher_dir, archs["t5"], "seqkd", tmp_path / "o")
    i = argv.index("--teacher-outputs")
    assert main(argv[:i] + argv[i + 2 :]) == 1
    assert "--teacher-outputs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_generate_and_score_a_model(prepared, teacher_dir, tmp_path, capsys):
    """`generate` then `score` on the teacher, as the results rules run them; every number of the
    summary is recomputed from the per-example CSV and matches sacreBLEU on the outputs."""
    from ketchup.evaluate.metrics import corpus_bleu
    from ketchup.files import read_csv

    outputs = tmp_path / "test_outputs.jsonl"
    evaluation = {"generation": GENERATION, "max_source_length": 48}
    task = json.dumps(TASK)
    model = str(teacher_dir / "model")
    data = ["--data-dir", str(prepared / "data"), "--task-json", task]
    generate = ["generate", "--model", model, *data, "--config-json", json.dumps(evaluation)]
    assert main([*generate, "--out", str(outputs)]) == 0
    examples = read_jsonl(prepared / "data" / "test.jsonl")
    rows = read_jsonl(outputs)
    assert [r["id"] for r in rows] == [ex["id"] for ex in examples]

    run = {"task": "t", "student": None, "system": "teacher", "seed": None}
    score = ["score", "--outputs", str(outputs), *data, "--run-json", json.dumps(run)]
    assert main([*score, "--model", model, "--out", str(tmp_path / "s.csv")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    expected = corpus_bleu([r["output"] for r in rows], [ex["references"] for ex in examples])
    assert summary["metrics"]["bleu"] == pytest.approx(expected)
    assert set(summary["metrics"]) == {"bleu", "chrf", "ser", "words"}
    assert summary["dataset"] == "embedded" and summary["method"] == "teacher"
    teacher_config = json.loads((teacher_dir / "model" / "train-teacher.config.json").read_text())
    assert summary["validation"]["score"] == teacher_config["best_validation_score"]
    assert summary["parameters"] > 0
    scored = read_csv(tmp_path / "s.csv")
    assert [r["id"] for r in scored] == [ex["id"] for ex in examples]
    assert "bleu_correct_4" in scored[0] and "chrf_6_match" in scored[0]

    # an outputs file that misses an example is refused, naming the file and the example
    from ketchup.files import write_jsonl

    write_jsonl(tmp_path / "short.jsonl", rows[1:])
    capsys.readouterr()
    bad = [
        "score",
        "--outputs",
        str(tmp_path / "short.jsonl"),
        *data,
        "--run-json",
        json.dumps(run),
    ]
    assert main([*bad, "--out", str(tmp_path / "bad.csv")]) == 1
    err = capsys.readouterr().err
    assert "short.jsonl" in err and examples[0]["id"] in err
    assert not (tmp_path / "bad.csv").exists()


# ----------------------------------------------------------------------------------------------
# Mixed precision: precision bfloat16 on the CPU runs the path `auto` takes on a GPU


class LinearForwards:
    """Every nn.Linear forward while active: (grad on, CPU autocast on, weight, output dtype)."""

    def __enter__(self):
        self.calls = []

        def hook(module, args, output):
            if isinstance(module, torch.nn.Linear):
                grad, cast = torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")
                self.calls.append((grad, cast, module.weight.dtype, output.dtype))

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def kinds(self, grad: bool, weights) -> set:
        """(autocast, output dtype) of the forwards with grad `grad` and weights of `weights`."""
        return {(c, out) for g, c, w, out in self.calls if g == grad and w == weights}


def _record_calls(monkeypatch, module, name: str, calls: list) -> None:
    """Patch module.name to record (student logits, teacher logits, loss) dtypes, then call it."""
    original = getattr(module, name)

    def recorded(student_logits, teacher_logits, *args, **kwargs):
        out = original(student_logits, teacher_logits, *args, **kwargs)
        loss = out[0] if isinstance(out, tuple) else out
        calls.append((student_logits.dtype, teacher_logits.dtype, loss.dtype))
        return out

    monkeypatch.setattr(module, name, recorded)


BF16 = torch.bfloat16
BF16_RECORD = {
    "student": {"weights": "float32", "compute": "bfloat16"},
    "teacher": {"weights": "bfloat16", "compute": "bfloat16"},
}


def test_bfloat16_word_level_distillation_autocasts_the_student(
    prepared, teacher_dir, archs, tmp_path, monkeypatch
):
    """kl from scratch with student and teacher in bfloat16: the student's training forwards (and
    so its backward) and its validation generation run under autocast on float32 weights, the
    teacher in bfloat16 without autocast, the divergence in float32; the loss still falls and the
    saved model is float32."""
    from safetensors.torch import load_file

    from ketchup.math import divergences

    losses = []
    _record_calls(monkeypatch, divergences, "forward_kl", losses)
    train = {**TRAIN, "steps": 12, "learning_rate": 1e-2, "eval_every": 12}
    argv = distill_argv(
        prepared,
        teacher_dir,
        archs["t5"],
        "kl",
        tmp_path,
        train=train,
        precision="bfloat16",
        extra=("--teacher-precision", "bfloat16"),
    )
    with LinearForwards() as forwards:
        assert main(argv) == 0
    assert forwards.kinds(True, torch.float32) == {(True, BF16)}  # student, training
    assert forwards.kinds(False, torch.float32) == {(True, BF16)}  # student, validation
    assert forwards.kinds(False, BF16) == {(False, BF16)}  # teacher, its own dtype
    assert forwards.kinds(True, BF16) == set()
    assert set(losses) == {(BF16, BF16, torch.float32)}

    log = [r["loss"] for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert len(log) == 12 and sum(log[-3:]) < 0.8 * sum(log[:3]), log
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["precision"] == BF16_RECORD
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_bfloat16_onpolicy_rollouts_and_loss(
    prepared, teacher_dir, archs, warm_start, tmp_path, monkeypatch
):
    """KETCHUP in bfloat16: rollouts under the student's autocast, the teacher pass in bfloat16,
    the K-step returns and the policy-gradient loss in float32."""
    from ketchup.math import objectives

    losses = []
    _record_calls(monkeypatch, objectives, "policy_gradient_objective", losses)
    argv = distill_argv(
        prepared,
        teacher_dir,
        archs["t5"],
        "ketchup_k4",
        tmp_path,
        config=ONPOLICY,
        precision="bfloat16",
        extra=("--warm-start", str(warm_start), "--teacher-precision", "bfloat16"),
    )
    with LinearForwards() as forwards:
        assert main(argv) == 0
    assert forwards.kinds(True, torch.float32) == {(True, BF16)}
    assert forwards.kinds(False, torch.float32) == {(True, BF16)}  # rollouts and validation
    assert forwards.kinds(False, BF16) == {(False, BF16)}
    assert (
        set(losses) == {(BF16, BF16, torch.float32)} and len(losses) == ONPOLICY["train"]["steps"]
    )
    train = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in train)
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["precision"] == BF16_RECORD


def test_teacher_and_outputs_in_bfloat16(prepared, archs, tmp_path):
    """train-teacher autocasts as distill does; teacher-outputs and generate load the model in
    the precision asked for; each resolved config says what was used."""
    teacher = {
        "model": {"architecture": archs["t5"], "precision": "bfloat16"},
        "train": TRAIN,
        "generation": GENERATION,
        "max_source_length": 48,
    }
    common = ["--data-dir", str(prepared / "data"), "--task-json", json.dumps(TASK)]
    train = ["train-teacher", "--tokenizer", str(prepared / "tok"), *common]
    with LinearForwards() as forwards:
        assert main([*train, "--config-json", json.dumps(teacher), "--out-dir", str(tmp_path)]) == 0
    assert forwards.kinds(True, torch.float32) == {(True, BF16)}
    model = tmp_path / "model"
    resolved = json.loads((model / "train-teacher.config.json").read_text())
    assert resolved["precision"] == {"weights": "float32", "compute": "bfloat16"}

    outputs = tmp_path / "outputs" / "test.jsonl"
    argv = ["teacher-outputs", "--teacher", str(model), "--split", "test", *common]
    with LinearForwards() as forwards:
        assert main([*argv, "--config-json", json.dumps(teacher), "--out", str(outputs)]) == 0
    assert forwards.kinds(False, BF16) == {(False, BF16)}
    assert {w for _, _, w, _ in forwards.calls} == {BF16}
    resolved = json.loads((outputs.parent / "teacher-outputs-test.config.json").read_text())
    assert resolved["precision"] == {"weights": "bfloat16", "compute": "bfloat16"}

    evaluation = {"generation": GENERATION, "max_source_length": 48}
    generated = tmp_path / "generated" / "test.jsonl"
    argv = ["generate", "--model", str(model), *common, "--config-json", json.dumps(evaluation)]
    for precision in ("bfloat16", "float32"):
        assert main([*argv, "--precision", precision, "--out", str(generated)]) == 0
        resolved = json.loads((generated.parent / "generate-test.config.json").read_text())
        assert resolved["precision"] == {"weights": precision, "compute": precision}


def test_prompted_teacher_reads_sources_as_far_as_the_students(prepared, archs, tmp_path):
    """configs/paper.yaml sets no teacher.train: the teacher's outputs (the SeqKD / KL targets and
    its row of the tables) read 512 source tokens, as its students and the evaluation do, not the
    128 of teacher.train's default; the resolved config says what was used."""
    import yaml

    import ketchup.train.generation
    from ketchup.config import ModelConfig, parse_config
    from ketchup.models.loading import build_model, load_tokenizer, save_model

    tokenizer = load_tokenizer(str(prepared / "tok"))
    save_model(
        build_model(ModelConfig(None, archs["t5"], "float32"), tokenizer), tokenizer, tmp_path / "m"
    )
    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    parse_config(config)  # defaults filled in place, as the workflow's config is
    teacher = config["teacher"]
    teacher["generation"]["max_new_tokens"] = 4
    students = {s["train"]["max_source_length"] for s in config["students"].values()}
    assert students == {512}
    lengths, generate = [], ketchup.train.generation.generate

    def recording(*args, max_source_length, **kwargs):
        lengths.append(max_source_length)
        return generate(*args, max_source_length=max_source_length, **kwargs)

    out = tmp_path / "outputs" / "train.jsonl"
    argv = ["teacher-outputs", "--teacher", str(tmp_path / "m"), "--split", "train"]
    argv += ["--data-dir", str(prepared / "data"), "--task-json", json.dumps(TASK)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ketchup.train.generation, "generate", recording)
        assert main([*argv, "--config-json", json.dumps(teacher), "--out", str(out)]) == 0
    print(f"the teacher's outputs read {lengths} source tokens")
    assert lengths == [512]
    resolved = json.loads((out.parent / "teacher-outputs-train.config.json").read_text())
    assert resolved["config"]["max_source_length"] == 512


def test_a_model_directory_without_a_tokenizer_writes_no_outputs(
    prepared, teacher_dir, tmp_path, capsys
):
    """A model saved without its tokenizer is refused in one line naming the directory (it used
    to get a placeholder tokenizer and write empty outputs with exit status 0)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(teacher_dir / "model", model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    evaluation = {"generation": GENERATION, "max_source_length": 48}
    out = tmp_path / "test_outputs.jsonl"
    argv = ["generate", "--model", str(model), "--data-dir", str(prepared / "data")]
    argv += ["--task-json", json.dumps(TASK), "--config-json", json.dumps(evaluation)]
    capsys.readouterr()
    status = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    print(f"exit status {status}; stderr: {err.strip()!r}")
    assert status == 1 and not out.exists()
    assert err.startswith("ketchup generate: error: ") and err.count("\n") == 1
    assert str(model) in err and "no tokenizer files" in err


def test_an_onpolicy_job_whose_every_rollout_is_cut_fails_naming_the_cap(
    prepared, teacher_dir, archs, warm_start, tmp_path, capsys
):
    """Rollouts of one token, none of them EOS, all dropped from the loss: no update changes the
    model, so the job stops at its first evaluation naming the share cut and the key to raise,
    instead of publishing the warm start as a trained system (exit status 0)."""
    cut = {
        "train": {**ONPOLICY["train"], "eval_every": 4},
        "rollout": {"greedy": True, "max_new_tokens": 1, "max_source_length": 48},
    }
    argv = _onpolicy_argv(prepared, teacher_dir, archs, warm_start, "ketchup_k4", tmp_path, cut)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    print(f"exit status {status}; stderr: {err!r}")
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["finished_share"] for r in log if r["kind"] == "train"] == [0.0] * 4
    assert status == 1 and not (tmp_path / "model").exists()
    assert "100% of the rollouts hit the length cap" in err
    assert err.startswith("ketchup distill: error: none of the 4 updates")
    assert "'distill.rollout.max_new_tokens' (now 1)" in err
