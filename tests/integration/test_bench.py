"""`ketchup bench`: the table it prints and writes, on tiny models (timings are not asserted)."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from ketchup.bench import PHASES, PhaseTimer, paper_scale_update
from ketchup.cli import main
from ketchup.files import read_csv


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
    ]
    for name, row in rows.items():
        low, mid, high = (float(row[f"update_s_{s}"]) for s in ("min", "median", "max"))
        assert 0 < low <= mid <= high, name
        assert float(row["examples_per_s"]) > 0 and float(row["tokens_per_s"]) > 0
    assert float(rows["trl gkd"]["vs_trl"]) == pytest.approx(1.0)
    # the paper loop's examples/s against ours, for the same system
    ours, paper = rows["ours llmr"], rows["paper-loop llmr"]
    ratio = float(ours["examples_per_s"]) / float(paper["examples_per_s"])
    assert float(ours["vs_paper_loop"]) == pytest.approx(ratio, rel=1e-3)
    phases = read_csv(tmp_path / "update_phases.csv")
    assert [row["system"] for row in phases] == ["llmr", "ketchup_k4"]
    for row in phases:
        shares = [float(row[p]) for p in PHASES]
        assert all(s >= 0 for s in shares) and shares[0] > 0  # the rollout always takes time
        assert sum(shares) + float(row["other"]) == pytest.approx(100, abs=0.1)
    assert "| trl gkd |" in capsys.readouterr().out


def test_phase_timer_counts_nested_phases_once(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer(lambda: None)
    with timer.phase("loss"), timer.phase("returns"):  # loss starts at 0, returns 1 .. 2
        pass
    # loss ends at 3: 3 s in all, 1 of them in returns
    assert timer.totals["returns"] == 1 and timer.totals["loss"] == 2


def test_paper_scale_update_runs_on_tiny_models():
    """The --gpu mode's code path, at toy sizes on the CPU."""
    teacher = {
        "model_type": "t5",
        "d_model": 32,
        "d_ff": 64,
        "d_kv": 8,
        "num_heads": 4,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    }
    student = dict(teacher, d_model=16, d_kv=4, feed_forward_proj="relu")
    result = paper_scale_update(
        torch.device("cpu"),
        teacher,
        student,
        source=64,
        target=8,
        batch=2,
        repeats=1,
        vocab=1200,
        matmul_n=64,
    )
    assert result["updates_per_s"] > 0 and result["tokens_per_s"] > 0
    assert result["achieved_tflops"] > 0 and result["matmul_peak_tflops"] > 0
    assert math.isnan(result["peak_memory_gib"])  # measured on a GPU only


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
    """--gpu's measurement replaced (no GPU here): what it writes beside --out, and that
    `ketchup plan --calibration` takes the achieved FLOP/s from it."""
    import json

    from ketchup import bench, models
    from ketchup.plan import read_throughput

    measured = {"update_s_median": 2.0, "achieved_tflops": 123.0, "matmul_peak_tflops": 600.0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(models, "resolve_dtype", lambda precision, device=None: torch.bfloat16)
    monkeypatch.setattr(bench, "paper_scale_update", lambda *args, **kwargs: measured)
    assert main(["bench", "--gpu", "--out", str(tmp_path / "update.csv")]) == 0
    calibration = tmp_path / "gpu_calibration.json"
    assert f"written: {calibration}" in capsys.readouterr().out
    data = json.loads(calibration.read_text())
    assert data["achieved_flops_per_s"] == 123e12 and data["device"] == "Test GPU"
    assert data["dtype"] == "bfloat16" and data["matmul_peak_flops_per_s"] == 600e12
    throughput = read_throughput(str(calibration))
    assert throughput.flops_per_s == 123e12 and "Test GPU" in throughput.description
