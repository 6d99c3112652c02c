"""The training loop on a tiny T5: an interrupted run resumes to the same model; NaN stops it."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from ketchup.config import ModelConfig, TrainConfig
from ketchup.data.batching import encode_pairs
from ketchup.data.tokenizer import train_tokenizer
from ketchup.models.loading import build_model
from ketchup.train.loop import fit
from ketchup.train.signals import DivergedError, Preempted

ROWS = [
    {"source": f"name[Place {i}] | food[{food}]", "target": f"Place {i} serves {food} food."}
    for i in range(12)
    for food in ("Thai", "French", "Greek")
]
CFG = TrainConfig(
    steps=6,
    batch_size=4,
    learning_rate=1e-3,
    weight_decay=0.0,
    warmup_steps=2,
    grad_clip=1.0,
    eval_every=3,
    patience=0,
    max_source_length=16,
    max_target_length=16,
    seed=0,
    parallel="ddp",
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([t for r in ROWS for t in (r["source"], r["target"])], vocab_size=120)


@pytest.fixture(scope="module")
def t5_with_dropout(archs):
    # dropout draws from the RNG, so an exact resume also proves the RNG state is restored
    return dict(archs["t5"], dropout_rate=0.1)


def new_model(tokenizer, arch):
    torch.manual_seed(0)
    return build_model(ModelConfig(None, arch, "float32"), tokenizer)


def run(
    tokenizer,
    arch,
    out_dir,
    *,
    interrupt_at=None,
    nan_at=None,
    sigterm_at=None,
    precision="float32",
    keep_checkpoints=False,
):
    model = new_model(tokenizer, arch)
    calls = {"n": 0}

    def loss_fn(model, rows):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt  # what SIGINT does mid-update
        if calls["n"] == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends before a preemption
        batch = encode_pairs(
            tokenizer, [r["source"] for r in rows], [r["target"] for r in rows], 16, 16, True
        )
        loss = model(**batch).loss
        if calls["n"] == nan_at:
            loss = loss * float("nan")
        return loss, int((batch["labels"] != -100).sum())

    held_out = encode_pairs(
        tokenizer, [r["source"] for r in ROWS[:8]], [r["target"] for r in ROWS[:8]], 16, 16, True
    )

    def evaluate(model):
        # a deterministic stand-in for the task metric: minus the loss on fixed rows
        with torch.no_grad():
            return -float(model(**held_out).loss)

    return fit(
        model,
        tokenizer,
        train_rows=ROWS,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=CFG,
        out_dir=out_dir,
        fingerprint={"test": 1},
        progress=False,
        precision=precision,
        keep_checkpoints=keep_checkpoints,
    )


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_interrupted_run_resumes_to_the_same_model(tokenizer, t5_with_dropout, tmp_path):
    run(tokenizer, t5_with_dropout, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(
            tokenizer, t5_with_dropout, tmp_path / "resumed", interrupt_at=5
        )  # after the step-3 checkpoint
    assert not (tmp_path / "resumed" / "model").exists()
    state = run(tokenizer, t5_with_dropout, tmp_path / "resumed")
    assert state.step == CFG.steps
    straight, resumed = (
        weights(tmp_path / "straight" / "model"),
        weights(tmp_path / "resumed" / "model"),
    )
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], rtol=0, atol=0)
    log = [
        json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in log if row["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "straight" / "log.jsonl").read_text() != ""


def test_float16_training_resumes_with_its_loss_scaler(tokenizer, archs, tmp_path):
    """float16 autocast trains with a gradient scaler; its state is in the checkpoint, so a
    resumed run carries on from the interrupted one's scale and growth count."""

    def scaler_state(out):
        saved = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
        return saved["scaler"]

    # the finished runs keep their checkpoints, so that the scaler state can be read back
    kept = {"precision": "float16", "keep_checkpoints": True}
    state = run(tokenizer, archs["t5"], tmp_path / "straight", **kept)
    straight = scaler_state(tmp_path / "straight")
    assert state.step == CFG.steps and straight["_growth_tracker"] == CFG.steps
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, archs["t5"], tmp_path / "resumed", interrupt_at=5, **kept)
    run(tokenizer, archs["t5"], tmp_path / "resumed", **kept)
    assert scaler_state(tmp_path / "resumed") == straight
    assert {w.dtype for w in weights(tmp_path / "resumed" / "model").values()} == {torch.float32}


def test_sigterm_saves_a_checkpoint_after_the_update_and_resumes_to_the_same_model(
    tokenizer, t5_with_dropout, tmp_path
):
    run(tokenizer, t5_with_dropout, tmp_path / "straight")
    # SIGTERM during update 5 (checkpoints are otherwise written at steps 3 and 6 only)
    with pytest.raises(Preempted, match="after step 5"):
        run(tokenizer, t5_with_dropout, tmp_path / "resumed", sigterm_at=5)
    saved = torch.load(tmp_path / "resumed" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert saved["state"]["step"] == 5
    assert not (tmp_path / "resumed" / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    state = run(tokenizer, t5_with_dropout, tmp_path / "resumed")
    assert state.step == CFG.steps
    straight = weights(tmp_path / "straight" / "model")
    resumed = weights(tmp_path / "resumed" / "model")
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], rtol=0, atol=0)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    tokenizer, t5_with_dropout, tmp_path
):
    with pytest.raises(DivergedError, match="at step 5"):
        run(tokenizer, t5_with_dropout, tmp_path, nan_at=5)
    saved = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert saved["state"]["step"] == 3
    assert not (tmp_path / "model").exists()


def test_tensorboard_mirrors_the_log_when_asked(tokenizer, archs, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("KETCHUP_LOGGERS", "tensorboard")
    run(tokenizer, archs["t5"], tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if row["kind"] == "train"]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, CFG.steps + 1))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses)
    assert [e.step for e in events.Scalars("eval/score")] == [3, 6]


def test_an_unknown_or_missing_logger_is_named(tokenizer, archs, tmp_path, monkeypatch):
    from ketchup.config import ConfigError

    monkeypatch.setenv("KETCHUP_LOGGERS", "tensorbord")
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'; known: tensorboard, wandb"):
        run(tokenizer, archs["t5"], tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if not installed
    monkeypatch.setenv("KETCHUP_LOGGERS", "wandb")
    with pytest.raises(ConfigError, match="pip install wandb"):
        run(tokenizer, archs["t5"], tmp_path)


def test_a_truncated_checkpoint_is_named_with_what_to_delete(tokenizer, archs, tmp_path):
    from ketchup.files import CorruptFileError

    run(tokenizer, archs["t5"], tmp_path, keep_checkpoints=True)
    state_file = tmp_path / "checkpoint" / "trainer_state.pt"
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short
    with pytest.raises(CorruptFileError) as error:
        run(tokenizer, archs["t5"], tmp_path)
    assert str(state_file) in str(error.value) and f"delete {tmp_path / 'checkpoint'}" in str(
        error.value
    )


def test_a_finished_run_keeps_its_model_and_log_only(tokenizer, archs, tmp_path):
    """The optimizer checkpoint and the best-so-far copy serve an interrupted run only: once
    model/ is written they are removed, unless keep_checkpoints; the same model either way.
    Temporaries of writes killed in an earlier run (`.NAME.XXXX.tmp`) are gone too."""
    done, kept = tmp_path / "done", tmp_path / "kept"
    done.mkdir()
    for leftover in (".checkpoint.k1ll3d.tmp", ".best.k1ll3d.tmp", ".model.k1ll3d.tmp"):
        (done / leftover).mkdir()
        (done / leftover / "half").write_bytes(b"x" * 100)
    run(tokenizer, archs["t5"], done)
    assert sorted(p.name for p in done.iterdir()) == ["log.jsonl", "model"]
    run(tokenizer, archs["t5"], kept, keep_checkpoints=True)
    assert sorted(p.name for p in kept.iterdir()) == ["best", "checkpoint", "log.jsonl", "model"]
    a, b = weights(done / "model"), weights(kept / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
