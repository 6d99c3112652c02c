"""`ketchup distill` of ketchup_k4 at toy size through the CLI verbs, on whatever device torch
picks (the GPU on a GPU machine): where the student and the teacher run and in which dtype each
computes, a checkpoint written when the job is stopped by SIGTERM after update 5, and the rerun
resuming from it and finishing with every update logged once.

The study's inputs are made by the verbs the workflow runs (prepare-data, train-tokenizer,
train-teacher, teacher-outputs, distill kl), all tiny. Each verb is called in this process
through `ketchup.cli.main`, the function behind the `ketchup` command; the SIGTERM is sent by
this process to itself from inside update 5, so the stop is at a known update.

    python scripts/gpu_distill_check.py OUT_DIR

Prints one line per fact and per check; exit status 1 if a check failed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from ketchup.cli import main
from ketchup.files import read_jsonl
from ketchup.train.signals import Preempted

TASK = {
    "dataset": "embedded",
    "embedded": {"n_train": 32, "n_validation": 8, "n_test": 8, "n_references": 2, "seed": 1},
}
T5 = {
    "model_type": "t5",
    "d_model": 64,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "d_kv": 16,
    "dropout_rate": 0.0,
}
# the teacher's and the kl student's (the warm start) training: a few updates, one evaluation
TRAIN = {
    "steps": 10,
    "batch_size": 8,
    "warmup_steps": 2,
    "eval_every": 10,
    "learning_rate": 3e-3,
    "max_source_length": 48,
    "max_target_length": 32,
}
GENERATION = {"max_new_tokens": 16, "batch_size": 8}
STEPS, STOP_AT = 8, 5
ONPOLICY = {
    "train": {**TRAIN, "steps": STEPS, "eval_every": 2, "learning_rate": 1e-4},
    "rollout": {"max_new_tokens": 8, "max_source_length": 48, "drop_truncated": False},
}


def verb(*argv: str) -> int:
    """`ketchup ARGV` in this process; its exit status."""
    print(f"$ ketchup {argv[0]} ...", flush=True)
    return main(list(argv))


def must(rc: int, what: str) -> None:
    if rc != 0:
        sys.exit(f"FAIL: ketchup {what} exited {rc}")


def build_inputs(root: Path) -> dict[str, Path]:
    data, tok, teacher = root / "data", root / "tok", root / "teacher"
    task = json.dumps(TASK)
    must(
        verb("prepare-data", "--task", "t", "--config-json", task, "--out-dir", str(data)),
        "prepare-data",
    )
    tokenizer = ["--data-dir", str(data), "--config-json", '{"vocab_size": 200}']
    must(verb("train-tokenizer", *tokenizer, "--out-dir", str(tok)), "train-tokenizer")
    teacher_cfg = {"model": {"architecture": T5}, "train": TRAIN, "generation": GENERATION}
    common = [
        "--data-dir",
        str(data),
        "--task-json",
        task,
        "--config-json",
        json.dumps(teacher_cfg),
    ]
    must(
        verb("train-teacher", "--tokenizer", str(tok), *common, "--out-dir", str(teacher)),
        "train-teacher",
    )
    outputs = teacher / "train.jsonl"
    must(
        verb(
            "teacher-outputs",
            "--teacher",
            str(teacher / "model"),
            "--split",
            "train",
            *common,
            "--out",
            str(outputs),
        ),
        "teacher-outputs",
    )
    return {"data": data, "tok": tok, "teacher": teacher / "model", "outputs": outputs}


def distill_argv(inputs: dict[str, Path], system: str, out: Path, config: dict, *extra: str):
    """The command line the workflow's distill rule builds."""
    student = {"model": {"architecture": T5}, "train": TRAIN}
    return [
        "distill",
        "--teacher",
        str(inputs["teacher"]),
        "--tokenizer",
        str(inputs["tok"]),
        "--data-dir",
        str(inputs["data"]),
        "--teacher-outputs",
        str(inputs["outputs"]),
        "--method",
        system,
        "--seed",
        "0",
        "--task-json",
        json.dumps(TASK),
        "--student-json",
        json.dumps(student),
        "--generation-json",
        json.dumps(GENERATION),
        "--config-json",
        json.dumps(config),
        "--out-dir",
        str(out),
        *extra,
    ]


class Probe:
    """Records every teacher and student pass of the distill stage (device, weights' dtype,
    autocast, logits' dtype) and sends SIGTERM to this process from inside update `stop_at`."""

    def __init__(self, stop_at: int | None):
        self.passes: dict[str, set[tuple]] = {"teacher": set(), "student": set()}
        self.updates, self.stop_at = 0, stop_at

    def __enter__(self):
        import torch

        from ketchup.math import objectives
        from ketchup.train import losses

        self.logits, self.objective = losses.Models.logits, objectives.policy_gradient_objective
        probe = self

        def logits(models, model, rows, tokens, mask, *, grad):
            out = probe.logits(models, model, rows, tokens, mask, grad=grad)
            weights = next(model.parameters())
            kind = weights.device.type
            autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
            fact = (str(weights.device), weights.dtype, autocast, out.dtype)
            probe.passes["student" if grad else "teacher"].add(fact)
            return out

        def objective(*args, **kwargs):
            probe.updates += 1
            if probe.updates == probe.stop_at:
                os.kill(os.getpid(), signal.SIGTERM)  # the trainer stops after this update
            return probe.objective(*args, **kwargs)

        losses.Models.logits = logits
        objectives.policy_gradient_objective = objective
        return self

    def __exit__(self, *exc):
        from ketchup.math import objectives
        from ketchup.train import losses

        losses.Models.logits = self.logits
        objectives.policy_gradient_objective = self.objective


def name(dtype) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "none"


def main_check(out: Path) -> int:
    import torch

    from ketchup.models.loading import resolve_dtype
    from ketchup.models.parallel import default_device

    device = default_device()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({card}), torch {torch.__version__}")
    inputs = build_inputs(out)
    warm = out / "kl"
    must(verb(*distill_argv(inputs, "kl", warm, {})), "distill kl")
    run = out / "ketchup_k4"
    argv = distill_argv(inputs, "ketchup_k4", run, ONPOLICY, "--warm-start", str(warm / "model"))
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}: {what}", flush=True)
        if not ok:
            failures.append(what)

    with Probe(STOP_AT) as probe:
        print("$ ketchup distill --method ketchup_k4 ... (SIGTERM inside update 5)", flush=True)
        rc = main(argv)
    check(rc == Preempted.exit_code, f"the stopped job exits {Preempted.exit_code} (got {rc})")
    state = run / "checkpoint" / "trainer_state.pt"
    saved = torch.load(state, map_location="cpu", weights_only=False)["state"]["step"]
    check(saved == STOP_AT, f"its checkpoint holds step {STOP_AT} (got {saved})")
    check(not (run / "model").exists(), "no model was published by the stopped job")
    with Probe(None) as resumed:
        print("$ ketchup distill --method ketchup_k4 ... (rerun)", flush=True)
        rc = main(argv)
    check(rc == 0, f"the rerun exits 0 (got {rc})")
    check(resumed.updates == STEPS - STOP_AT, f"it ran the {STEPS - STOP_AT} updates left")
    log = read_jsonl(run / "log.jsonl")
    steps = [r["step"] for r in log if r["kind"] == "train"]
    check(steps == list(range(1, STEPS + 1)), f"the log has updates 1..{STEPS} once each")
    check((run / "model" / "distill.config.json").is_file(), "the model and its config are written")
    resolved = json.loads((run / "model" / "distill.config.json").read_text())
    print(f"resolved config: provenance gpu {resolved['provenance'].get('gpu')!r}")
    if "precision" in resolved:  # recorded by trainers that honour `precision`
        print(f"resolved config: precision {json.dumps(resolved['precision'])}")

    teacher_dtype = resolve_dtype("auto", device)
    for role, facts in (
        ("teacher", probe.passes["teacher"] | resumed.passes["teacher"]),
        ("student", probe.passes["student"] | resumed.passes["student"]),
    ):
        for where, weights, autocast, logits in sorted(facts, key=str):
            print(
                f"{role} pass: on {where}, weights {name(weights)}, autocast {name(autocast)}, "
                f"logits {name(logits)}"
            )
        check(
            all(f[0].split(":")[0] == device.type for f in facts) and bool(facts),
            f"every {role} pass runs on {device.type}",
        )
    teacher = probe.passes["teacher"]
    check(
        all(f[1] == teacher_dtype and f[3] == teacher_dtype for f in teacher),
        f"the teacher's weights and logits are {name(teacher_dtype)} (precision auto)",
    )
    student = probe.passes["student"]
    computes = {f[3] for f in student}
    print(
        "student computes in: "
        + ", ".join(name(d) for d in sorted(computes, key=str))
        + (" (bf16 autocast)" if torch.bfloat16 in computes else " (no half-precision autocast)")
    )
    print(f"{'all checks passed' if not failures else f'{len(failures)} checks failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: not empty; the check starts its jobs afresh in an empty directory")
    sys.exit(main_check(out))
