"""`ketchup plan`: parameter counts, FLOPs per job, split sizes, the throughput and its label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ketchup.cli import main
from ketchup.config import ConfigError, ModelConfig, load_config, parse_config
from ketchup.ops.plan import (
    ASSUMED_SHARE,
    H100_BF16_PEAK,
    KNOWN_SIZES,
    ModelSize,
    model_size,
    read_throughput,
    split_sizes,
    study_jobs,
    write_calibration,
)

# The published configs of models in KNOWN_SIZES (the two small ones: quick to build on meta).
PUBLISHED = {
    "t5-small": {
        "model_type": "t5",
        "d_model": 512,
        "d_ff": 2048,
        "d_kv": 64,
        "num_heads": 8,
        "num_layers": 6,
        "num_decoder_layers": 6,
    },
    "Qwen/Qwen1.5-0.5B": {
        "model_type": "qwen2",
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "tie_word_embeddings": True,
    },
}
VOCAB = {"t5-small": 32128, "Qwen/Qwen1.5-0.5B": 151936}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_known_sizes_are_the_published_architectures_counted(name):
    counted = model_size(ModelConfig(None, PUBLISHED[name], "auto"), VOCAB[name], "m")
    assert (counted.parameters, counted.encoder) == KNOWN_SIZES[name]


def test_a_local_model_directory_is_counted_from_its_config(tmp_path):
    """The count of a saved model (its config.json) equals its weights' parameter count."""
    from ketchup.data.tokenizer import train_tokenizer
    from ketchup.models.loading import build_model, save_model

    tokenizer = train_tokenizer(["a b c d e f g h"] * 4, vocab_size=64)
    arch = {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}
    model = build_model(ModelConfig(None, arch, "auto"), tokenizer)
    save_model(model, tokenizer, tmp_path / "m")
    size = model_size(ModelConfig(str(tmp_path / "m"), None, "auto"), 999, "m")
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.encoder == 0 and "config.json" in size.origin
    assert model_size(ModelConfig("nobody/unknown-model", None, "auto"), 64, "m") is None


def test_flops_follow_the_6nt_and_2nt_rules():
    decoder_only = ModelSize(1000, 0, "x")
    assert decoder_only.forward_flops(30, 10) == 2 * 1000 * 40
    assert decoder_only.train_flops(30, 10) == 6 * 1000 * 40
    seq2seq = ModelSize(1000, 400, "x")  # source tokens see the encoder, targets the decoder
    assert seq2seq.forward_flops(30, 10) == 2 * (400 * 30 + 600 * 10)


def test_plan_counts_an_update_as_the_gpu_bench_does():
    """The calibration is FLOPs / time with the update's FLOPs counted as plan counts them
    (`bench_gpu.plan_update_flops`, on the models' own parameter counts): a KETCHUP job's FLOPs
    must count its updates the same way, or a calibrated estimate would be off by the ratio."""
    import torch

    from ketchup.data.tokenizer import train_tokenizer
    from ketchup.models.loading import build_model
    from ketchup.ops.bench_gpu import T5_BASE, _sizes, plan_update_flops
    from ketchup.ops.plan import ModelSize

    tiny_teacher = {**T5_BASE, "d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 3}
    tiny_student = {**T5_BASE, "d_model": 16, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1}
    tokenizer = train_tokenizer(["a b c d e f g h"] * 4, vocab_size=64)
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(64 - len(tokenizer))])
    with torch.device("meta"):
        teacher = ModelSize(
            *_sizes(build_model(ModelConfig(None, tiny_teacher, "auto"), tokenizer)), "built"
        )
        student = ModelSize(
            *_sizes(build_model(ModelConfig(None, tiny_student, "auto"), tokenizer)), "built"
        )
    source, target, batch, steps = 48, 8, 4, 3
    bench_update = plan_update_flops(teacher, student, batch, source, target)
    study = _study(
        teacher={"mode": "finetune", "model": {"architecture": tiny_teacher}},
        students={"s": {"model": {"architecture": tiny_student}}},
        distill={
            "methods": ["ketchup"],
            "ks": [4],
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps},
            "rollout": {"max_new_tokens": target, "max_source_length": source},
        },
        tokenizer={"vocab_size": len(tokenizer)},
    )
    jobs = [j for j in study_jobs(study) if j.rule == "distill" and "ketchup_k4" in j.what]
    assert jobs and len({j.flops for j in jobs}) == 1  # one per seed, all alike
    evaluations = 2  # the warm start's and the one after the last step
    n_val = split_sizes(study.tasks["t"])["validation"]
    generation = study.teacher.generation.max_new_tokens
    evals = (
        evaluations
        * n_val
        * student.forward_flops(study.distill.train.max_source_length, generation)
    )
    assert jobs[0].flops == pytest.approx(steps * bench_update + evals)


def _study(**sections):
    base = {"tasks": {"t": {"dataset": "embedded"}}, **sections}
    return parse_config(base)


def test_split_sizes_carve_and_cap_like_prepare_data(tmp_path):
    from ketchup.config import TaskConfig, parse_section

    def task(section):
        return parse_section(TaskConfig, section, "task", "task")

    # gsm8k has no validation split: 5% of the training rows are carved for it
    assert split_sizes(task({"dataset": "gsm8k"})) == {
        "train": 7473 - 373,
        "validation": 373,
        "test": 1319,
    }
    capped = task({"dataset": "xsum", "max_examples": {"validation": 1000}})
    assert split_sizes(capped)["validation"] == 1000
    # a local copy with one file named three times: validation and test carved from it
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"s": str(i), "t": "x"}) + "\n" for i in range(100)))
    files = {"train": str(rows), "validation": str(rows), "test": str(rows)}
    local = task({"dataset": "file", "files": files, "source_field": "s", "target_field": "t"})
    assert split_sizes(local) == {"train": 90, "validation": 5, "test": 5}
    csv_file = tmp_path / "test.csv"
    csv_file.write_text('s,t\n1,"a\nb"\n2,c\n')  # a quoted newline is one row
    local = task(
        {
            "dataset": "file",
            "files": {**files, "test": str(csv_file)},
            "source_field": "s",
            "target_field": "t",
        }
    )
    assert split_sizes(local)["test"] == 2


def test_throughput_is_labelled_an_assumption_until_calibrated(tmp_path, capsys):
    assumed = read_throughput(None)
    assert assumed.flops_per_s == ASSUMED_SHARE * H100_BF16_PEAK
    assert "ASSUMED" in assumed.description and "ketchup bench --gpu" in assumed.description

    calibration = write_calibration(tmp_path / "cal.json", 2.0 * assumed.flops_per_s, device="X")
    measured = read_throughput(str(calibration))
    assert measured.flops_per_s == 2.0 * assumed.flops_per_s and "MEASURED" in measured.description

    def gpu_hours(extra):
        assert main(["plan", "--configfile", "configs/paper.yaml", *extra]) == 0
        out = capsys.readouterr().out
        (total,) = [line for line in out.splitlines() if line.startswith("| total |")]
        return out, float(total.split("|")[5])

    out, hours = gpu_hours([])
    assert "ASSUMED" in out
    out, calibrated = gpu_hours(["--calibration", str(calibration)])
    assert "MEASURED" in out and "ASSUMED" not in out
    assert calibrated == pytest.approx(hours / 2, rel=0.01)  # twice the throughput, half the time


def test_bad_calibration_and_unknown_models_are_said_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tflops": 3}')
    with pytest.raises(ConfigError, match="achieved_flops_per_s"):
        read_throughput(str(bad))
    assert main(["plan", "--configfile", "configs/paper.yaml", "--calibration", "nope"]) == 1
    assert capsys.readouterr().err.count("\n") == 1

    config = yaml.safe_load(Path("configs/paper.yaml").read_text())
    config["students"]["t5-base"]["model"]["name_or_path"] = "someone/unknown-t5"
    config["resources"]["teacher_outputs"]["runtime"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", "--configfile", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "student t5-base: someone/unknown-t5, size UNKNOWN" in out
    assert "| distill | 210 | 1 | ? |" in out
    assert "! teacher_outputs: the longest job" in out and "runtime (1 min)" in out


def test_paper_config_plan_is_labelled(capsys):
    study = load_config("configs/paper.yaml")
    jobs = list(study_jobs(study))
    assert all(job.flops is not None for job in jobs)  # every model's size is known
    assert main(["plan", "--configfile", "configs/paper.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"configs/paper.yaml: {len(jobs)} jobs")
    assert "FLOP-based estimate" in out and "google/flan-t5-xl, 2.78e+09 parameters" in out


def test_memory_per_gpu_follows_each_engine_and_placement(tmp_path, capsys):
    """The memory table against its terms computed here: the student's 16 bytes per parameter
    whole (ddp) or split over the job's GPUs (fsdp), the teacher's 2 (bfloat16) whole or split,
    34 bytes per token, hidden unit and layer, 16 per logit; the configured choice refused in
    one line when it does not fit, naming the keys that would."""
    import math

    from ketchup.ops.plan import GIB, KNOWN_SHAPES, distill_memory, memory_refusal

    raw = yaml.safe_load(Path("configs/paper_qwen.yaml").read_text())
    raw["resources"]["distill"]["gpu"] = 4
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(raw))
    study = load_config(tmp_path / "four.yaml")
    rows = {(r.parallel, r.placement): r for r in distill_memory(study)}
    student, _ = KNOWN_SIZES["Qwen/Qwen1.5-0.5B"]
    teacher, _ = KNOWN_SIZES["Qwen/Qwen1.5-4B"]
    hidden, layers, vocab = KNOWN_SHAPES["Qwen/Qwen1.5-0.5B"]
    d = study.distill
    tokens = d.rollout.max_source_length + d.rollout.max_new_tokens
    for (parallel, placement), row in rows.items():
        processes = 1 if placement == "spread" else 4
        batch = math.ceil(d.train.batch_size / processes)
        whole = parallel == "ddp" or placement == "spread"
        assert row.state == 16 * student / (1 if whole else 4)
        assert row.teacher == 2 * teacher / (1 if placement == "replicate" else 4)
        assert row.activations == 34 * batch * tokens * hidden * layers
        assert row.logits == 16 * batch * d.rollout.max_new_tokens * vocab
    assert (
        rows[("fsdp", "shard")].total
        < rows[("ddp", "shard")].total
        < rows[("ddp", "replicate")].total
    )
    assert memory_refusal(study, list(rows.values()), 80) is None  # the paper's pair fits
    budget = (rows[("ddp", "replicate")].total + rows[("fsdp", "shard")].total) / 2 / GIB
    line = memory_refusal(study, list(rows.values()), budget)
    assert line.startswith("ketchup plan: student qwen1_5-0_5b's distill job needs about")
    assert "distill.train.parallel: ddp and distill.teacher_placement: replicate" in line
    assert "or distill.train.parallel: fsdp with distill.teacher_placement: shard (" in line
    assert (
        main(["plan", "--configfile", str(tmp_path / "four.yaml"), "--gpu-memory", str(budget)])
        == 2
    )
    out, err = capsys.readouterr()
    assert "| qwen1_5-0_5b | fsdp | shard |" in out and err.strip() == line
