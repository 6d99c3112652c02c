"""`ketchup bench`: the table it prints and writes, on tiny models (timings are not asserted)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from ketchup.cli import main
from ketchup.files import read_csv
from ketchup.ops.bench import PHASES, PhaseTimer, Setup, cut_to_tokens, summary_rows, time_updates
from ketchup.ops.bench_gpu import TOY as TOY_SCALE
from ketchup.ops.bench_gpu import largest_batch, pass_flops

# tiny architectures of the two families the GPU mode runs, as `ketchup bench --gpu --toy` does
TOY = {"t5": TOY_SCALE.pairs["t5"].student, "qwen2": TOY_SCALE.pairs["qwen"].student}


def test_update_bench_puts_ours_beside_trl_and_the_paper_loop(tmp_path, capsys):
    pytest.importorskip("trl")
    out = tmp_path / "update.csv"
    argv = ["bench", "--ks", "1,4", "--batch-size", "4", "--max-new-tokens", "6", "--repeats", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = {row["config"]: row for row in read_csv(out)}
    assert list(rows) == [
        "ours llmr",
        "ours ketchup_k4",
        "ours gkd",
        "paper-loop llmr",
        "paper-loop ketchup_k4",
        "trl gkd",
        "trl distillation",
    ]
    for name, row in rows.items():
        low, mid, high = (float(row[f"update_s_{s}"]) for s in ("min", "median", "max"))
        assert 0 < low <= mid <= high, name
        assert float(row["examples_per_s"]) > 0
        # equal work: every configuration samples up to 6 new tokens per rollout (random
        # weights seldom end one early), counting the same way (the CSV rounds to 4 decimals)
        assert 5 <= float(row["tokens_per_s"]) / float(row["examples_per_s"]) <= 6.001, name
    assert float(rows["trl gkd"]["vs_trl_gkd"]) == pytest.approx(1.0)
    assert float(rows["trl distillation"]["vs_trl_distillation"]) == pytest.approx(1.0)
    # a ratio is this configuration's examples/s over the reference's
    ours, paper, trl = rows["ours llmr"], rows["paper-loop llmr"], rows["trl distillation"]
    for reference, column in ((paper, "vs_paper_loop"), (trl, "vs_trl_distillation")):
        ratio = float(ours["examples_per_s"]) / float(reference["examples_per_s"])
        assert float(ours[column]) == pytest.approx(ratio, rel=1e-3)
    # where a ratio does not apply the cell is empty: in the CSV and in the printed table
    for name in ("ours gkd", "paper-loop llmr", "trl gkd"):
        assert rows[name]["vs_paper_loop"] == "", name
    printed = capsys.readouterr().out
    assert "| trl distillation |" in printed and "nan" not in printed
    (line,) = [line for line in printed.splitlines() if line.startswith("| paper-loop llmr |")]
    assert line.endswith("|  |")
    phases = read_csv(tmp_path / "update_phases.csv")
    assert [row["system"] for row in phases] == ["llmr", "ketchup_k4"]
    for row in phases:
        shares = [float(row[p]) for p in PHASES]
        assert all(s >= 0 for s in shares) and shares[0] > 0  # the rollout always takes time
        assert sum(shares) + float(row["other"]) == pytest.approx(100, abs=0.1)


def test_cut_prompts_encode_to_the_ids_our_rollouts_see(tokenizer, texts):
    """The text given to TRL's DistillationTrainer (it does not truncate) encodes to exactly the
    prompt ids our rollouts use after truncating at max_source_length."""
    from ketchup.data.batching import encode_prompt_ids

    long = [" ".join(texts[i:] + texts[:i]) for i in range(0, 40, 7)]
    for length in (5, 17, 64):
        ours = encode_prompt_ids(tokenizer, long + texts[:3], length)
        cut = cut_to_tokens(tokenizer, long + texts[:3], length)
        assert encode_prompt_ids(tokenizer, cut, 10**6) == ours
        assert all(len(ids) == length for ids in ours[: len(long)])  # the long ones were cut
    assert cut[-3:] == texts[:3]  # short prompts are left as they are


def test_time_updates_drops_a_configuration_that_runs_out_of_memory():
    student = torch.nn.Linear(2, 2)
    setup = Setup(
        None, student, None, [{"source": str(i)} for i in range(5)], torch.device("cpu"), 4
    )
    seen = []

    def fits(rows):
        seen.append([r["source"] for r in rows])
        return len(rows), 4 * len(rows)

    def too_big(rows):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def broken(rows):
        raise TypeError("an API this trainer needs is missing\nthe rest of the message")

    configs = {"small": fits, "big": too_big, "other": broken}
    timings = time_updates(setup, configs, {}, repeats=2, batch=3, tolerate={"other"})
    assert timings.failed == {
        "big": "out of GPU memory at batch 3",
        "other": "TypeError: an API this trainer needs is missing",
    }
    assert len(timings.seconds["small"]) == 2 and timings.work["small"] == (3, 12)
    assert seen == [["0", "1", "2"], ["3", "4", "0"], ["1", "2", "3"]]  # a moving window
    (row,) = summary_rows(timings, {"vs_big": lambda name: "big"})
    assert row["config"] == "small" and row["vs_big"] is None
    with pytest.raises(TypeError):  # not tolerated: our own code's errors are not hidden
        time_updates(setup, {"other": broken}, {}, repeats=1, batch=3)


def test_phase_timer_counts_nested_phases_once(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer(lambda: None)
    with timer.phase("loss"), timer.phase("returns"):  # loss starts at 0, returns 1 .. 2
        pass
    # loss ends at 3: 3 s in all, 1 of them in returns
    assert timer.totals["returns"] == 1 and timer.totals["loss"] == 2


def test_largest_batch_doubles_until_out_of_memory_or_slow():
    def run(batch):
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch / 10

    assert largest_batch(run, 2, 1024, 60) == (16, "out of GPU memory at 32")
    assert largest_batch(run, 2, 1024, 0.35)[0] == 4  # 0.4 s at 4: 8 would take ~0.8 s
    assert largest_batch(run, 2, 8, 60) == (8, "the search's limit, 8")
    with pytest.raises(RuntimeError, match="no batch fits: out of GPU memory at 32"):
        largest_batch(run, 32, 1024, 60)


def _matmul_flops(arch: dict, vocab: int, source: int, target: int) -> int:
    """One example's teacher-forced pass, by hand from the architecture: every product with a
    weight matrix, 2 x tokens x inputs x outputs."""

    def mm(tokens, n_in, n_out):
        return 2 * tokens * n_in * n_out

    if arch["model_type"] == "t5":
        d, inner, ff = arch["d_model"], arch["num_heads"] * arch["d_kv"], arch["d_ff"]
        n_ff = 3 if arch.get("feed_forward_proj", "relu").startswith("gated") else 2

        def attention(queries, keys):  # q and o on the queries, k and v on the keys
            return 2 * mm(queries, d, inner) + 2 * mm(keys, d, inner)

        encoder = attention(source, source) + n_ff * mm(source, d, ff)
        decoder = attention(target, target) + attention(target, source) + n_ff * mm(target, d, ff)
        layers = arch["num_layers"] * encoder + arch["num_decoder_layers"] * decoder
        return layers + mm(target, d, vocab)
    h, heads, inter = arch["hidden_size"], arch["num_attention_heads"], arch["intermediate_size"]
    kv = arch["num_key_value_heads"] * h // heads
    n = source + target
    layer = 2 * mm(n, h, h) + 2 * mm(n, h, kv) + 3 * mm(n, h, inter)
    return arch["num_hidden_layers"] * layer + mm(target, h, vocab)  # the head on the target


@pytest.mark.parametrize(
    "arch",
    [
        {**TOY["t5"], "tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"},
        TOY["t5"],
        TOY["qwen2"],
        {**TOY["qwen2"], "tie_word_embeddings": True, "num_hidden_layers": 2},
    ],
    ids=["t5 untied, gated", "t5 tied", "qwen2", "qwen2 tied, 2 layers"],
)
def test_pass_flops_count_every_matrix_product_of_a_teacher_forced_pass(tokenizer, arch):
    from ketchup.config import ModelConfig
    from ketchup.models.loading import build_model

    model = build_model(ModelConfig(None, arch, "float32"), tokenizer)
    expected = _matmul_flops(arch, len(tokenizer), 11, 5)
    assert pass_flops(model, 11, 5) == expected


def test_gpu_mode_at_toy_sizes_times_both_pairs_beside_trl(tmp_path, capsys):
    """`--gpu --toy`: the paper-scale code path on tiny models of the same families (a CPU
    here; the batch given, so no search)."""
    pytest.importorskip("trl")
    argv = ["bench", "--gpu", "--toy", "--batch-size", "2", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path / "update.csv")]) == 0
    rows = read_csv(tmp_path / "gpu.csv")
    t5, qwen = TOY_SCALE.pairs["t5"].name, TOY_SCALE.pairs["qwen"].name
    assert [(r["pair"], r["config"]) for r in rows] == [
        (t5, "ours ketchup_k4"),
        (qwen, "ours ketchup_k4"),
        (qwen, "ours gkd"),
        (qwen, "trl distillation"),
    ]
    assert {r["batch"] for r in rows} == {"2"}
    assert rows[0]["vs_trl_distillation"] == "" and rows[0]["peak_memory_gib"] == ""
    assert float(rows[3]["vs_trl_distillation"]) == pytest.approx(1.0)
    speed = [float(r["examples_per_s"]) for r in rows[1:]]
    assert float(rows[1]["vs_trl_distillation"]) == pytest.approx(speed[0] / speed[2], rel=1e-3)
    # FLOP/s: the update's model FLOPs (the same for every configuration of a pair: equal
    # work) over its median time
    flops = [float(r["model_flops_per_update"]) for r in rows]
    assert flops[0] > 0 and flops[1] > 0 and flops[1:] == [flops[1]] * 3
    for row, per_update in zip(rows, flops, strict=True):
        achieved = per_update / float(row["update_s_median"]) / 1e12
        assert float(row["model_tflops"]) == pytest.approx(achieved, abs=1e-4)
    phases = read_csv(tmp_path / "gpu_phases.csv")
    assert [(r["pair"], r["system"]) for r in phases] == [(t5, "ketchup_k4"), (qwen, "ketchup_k4")]
    printed = capsys.readouterr().out
    assert "nan" not in printed and "batch 2: given by --batch-size" in printed


def test_study_summary_from_benchmark_files(tmp_path, capsys):
    """Every job's file counts: a task's, one nested by a run wildcard with slashes (a student's
    score) and the study-wide ones under results/benchmarks/ (the tables)."""
    results = tmp_path / "results"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    jobs = (
        ("task/benchmarks/teacher", 120, 700, 1000),
        ("task/benchmarks/teacher_outputs_train", 0, 100, 1000),
        ("task/benchmarks/distill_a", 60, 300, 1100),
        ("task/benchmarks/score_s/a/seed0", 0, 50, 1100),
        ("benchmarks/tables", 0, 50, 1100),
    )
    for name, seconds, rss, end in jobs:
        path = results / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t-\t{rss}\t0\t0\t0\t0\t0\t0\t0\n")
        os.utime(path, (end, end))
    assert main(["bench", "--study", str(results)]) == 0
    out = capsys.readouterr().out
    # 3 job-minutes; wall from the first start (1000 - 120) to the last end (1100): 220 s
    assert "5 jobs, 3.0 job-minutes, wall 3.7 min" in out and "peak job memory 700 MB" in out
    assert "teacher_outputs     1 jobs" in out and "teacher             1 jobs" in out
    assert "score               1 jobs" in out and "tables              1 jobs" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_bench_without_cuda_says_so_in_one_line(capsys):
    assert main(["bench", "--gpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "ketchup bench: error: --gpu needs a CUDA device and torch sees none here"


def test_gpu_bench_writes_the_calibration_that_plan_reads(tmp_path, monkeypatch, capsys):
    """The toy run of --gpu (on the CPU here) writes beside --out the calibration that
    `ketchup plan --calibration` reads: the achieved FLOP/s of KETCHUP's update on the T5 pair,
    its FLOPs counted as plan counts them."""
    import json

    from ketchup.ops.plan import read_throughput

    argv = ["bench", "--gpu", "--toy", "--pairs", "t5", "--batch-size", "2", "--repeats", "1"]
    assert main([*argv, "--no-trl", "--out", str(tmp_path / "update.csv")]) == 0
    calibration = tmp_path / "gpu_calibration.json"
    assert f"written: {calibration}" in capsys.readouterr().out
    data = json.loads(calibration.read_text())
    assert data["achieved_flops_per_s"] > 0 and data["device"] == "CPU"
    assert "as ketchup plan counts them" in data["workload"]
    throughput = read_throughput(str(calibration))
    assert throughput.flops_per_s == data["achieved_flops_per_s"]
    assert "CPU" in throughput.description


@pytest.mark.gpu
def test_gpu_mode_on_cuda_measures_memory_in_bf16(tmp_path, capsys):
    """On a CUDA device (`pytest -m gpu`): the toy run's teacher computes in bfloat16, the
    student under a bfloat16 autocast, and the peak memory is measured."""
    assert torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    argv = ["bench", "--gpu", "--toy", "--batch-size", "2", "--repeats", "1", "--no-trl"]
    assert main([*argv, "--out", str(tmp_path / "update.csv")]) == 0
    assert "teacher in bfloat16, student weights in float32 under bfloat16 autocast" in (
        capsys.readouterr().out
    )
    rows = read_csv(tmp_path / "gpu.csv")
    assert len(rows) == 2 and all(float(r["peak_memory_gib"]) > 0 for r in rows)
