"""The data, teacher and grad-variance verbs end to end on tiny data and tiny models."""

from __future__ import annotations

import json

import pytest

from ketchup.cli import main
from ketchup.files import read_jsonl

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
    assert len(AutoTokenizer.from_pretrained(prepared / "tok")) == 150


def train_teacher_with_outputs(prepared, arch: dict, out_dir, split: str):
    """`train-teacher` then `teacher-outputs` on `split`, as the workflow's two rules run them."""
    teacher = {"model": {"architecture": arch}, "train": TRAIN, "generation": GENERATION}
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


def test_causal_teacher_trains_and_writes_outputs(prepared, archs, tmp_path):
    train_teacher_with_outputs(prepared, archs["gpt2"], tmp_path, "test")
    resolved = json.loads((tmp_path / "model" / "train-teacher.config.json").read_text())
    assert resolved["best_step"] in (2, 4)
    rows = read_jsonl(tmp_path / "test.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(prepared / "data/test.jsonl")]


def test_prompted_teacher_is_used_as_it_is(prepared, archs, tmp_path):
    """mode: prompted loads a saved model by path (as the paper loads flan-t5-xl by hub id)."""
    from ketchup.config import ModelConfig
    from ketchup.models import build_model, load_tokenizer, save_model

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
    teacher = {"mode": "prompted", "model": {"name_or_path": str(tmp_path / "nowhere")}}
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
    from ketchup.models import build_model, load_tokenizer, save_model

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
    rows = list(csv.DictReader(out.open()))
    assert [int(r["k"]) for r in rows] == [1, 2, 8]
    assert all(int(r["n_rollout_sets"]) == 3 for r in rows)
    assert float(rows[0]["bias_norm"]) == 0.0
    assert float(rows[0]["cosine_to_reference"]) == pytest.approx(1.0)
    assert all(float(r["variance"]) > 0 for r in rows)
    # K = 8 > every rollout length (6): the return is q(s_t, y_t) alone, unlike K = 1
    assert float(rows[2]["bias_norm"]) > 0
    resolved = json.loads((out.parent / "grad-variance.config.json").read_text())
    assert resolved["config"]["variance"]["rollout_sets"] == 3


@pytest.fixture(scope="module")
def teacher_dir(prepared, archs, tmp_path_factory):
    """A tiny trained T5 teacher and its outputs on the training split."""
    return train_teacher_with_outputs(prepared, archs["t5"], tmp_path_factory.mktemp("t"), "train")


@pytest.mark.parametrize("method", ["sft", "seqkd", "kl"])
def test_distill_word_level_methods(prepared, teacher_dir, archs, method, tmp_path):
    student = {"model": {"architecture": archs["t5"]}, "train": TRAIN}
    argv = [
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
        method,
        "--seed",
        "3",
        "--task-json",
        json.dumps(TASK),
        "--student-json",
        json.dumps(student),
        "--generation-json",
        json.dumps(GENERATION),
        "--config-json",
        json.dumps({"methods": [method]}),
        "--out-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    resolved = json.loads((tmp_path / "model" / "distill.config.json").read_text())
    assert resolved["method"] == method and resolved["seed"] == 3
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] and r["loss"] >= 0 for r in log if r["kind"] == "train")


def test_distill_rejects_unbuilt_methods_and_missing_teacher_outputs(
    prepared, teacher_dir, archs, tmp_path, capsys
):
    student = {"model": {"architecture": archs["t5"]}, "train": TRAIN}
    base = [
        "distill",
        "--teacher",
        str(teacher_dir / "model"),
        "--tokenizer",
        str(prepared / "tok"),
        "--data-dir",
        str(prepared / "data"),
        "--seed",
        "0",
        "--task-json",
        json.dumps(TASK),
        "--student-json",
        json.dumps(student),
        "--generation-json",
        json.dumps(GENERATION),
        "--config-json",
        "{}",
        "--out-dir",
        str(tmp_path / "out"),
    ]
    assert main([*base, "--method", "ketchup", "--k", "4"]) == 1
    assert "not built yet" in capsys.readouterr().err
    assert main([*base, "--method", "seqkd"]) == 1
    assert "--teacher-outputs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
