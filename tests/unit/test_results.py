"""Tables and figures from score files: selection by validation, numbers traceable to the
per-example CSVs, every file written. A fake study: real embedded examples, outputs that copy a
reference or drop its second half at a rate set per system, real `ketchup score` files."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import numpy as np
import pytest
import sacrebleu
from safetensors.numpy import save_file

from ketchup.cli import main
from ketchup.evaluate.scoring import reference_streams
from ketchup.files import csv_text, read_csv, read_jsonl, write_json, write_jsonl, write_text

TASK = {
    "dataset": "embedded",
    "embedded": {"n_train": 10, "n_validation": 4, "n_test": 60, "n_references": 2, "seed": 0},
}
# (share of outputs cut in half, validation score) per system. ketchup_k2 is better on test but
# worse on validation than ketchup_k4: the table must show K=4 (the paper selects by validation).
SYSTEMS = {
    "teacher": (0.0, 90.0),
    "sft": (0.9, 10.0),
    "seqkd": (0.5, 40.0),
    "kl": (0.6, 45.0),
    "llmr": (0.95, 30.0),
    "ketchup_k2": (0.0, 50.0),
    "ketchup_k4": (0.2, 60.0),
    "gkd": (0.3, 55.0),
}
SEEDS = (0, 1)
# the grad-variance stage's rows: per system, each statistic with its interval, for the update as
# applied (here every set clipped by the factor 0.5: variance and signal x 0.25, their ratio and
# the cosine unchanged) and for the raw gradient
VARIANCE_ROWS = [
    {
        "system": system,
        "k": k,
        "baseline": baseline,
        "n_rollout_sets": 8,
        "grad_clip": 1.0,
        **{
            f"{prefix}{key}{suffix}": value * scale * factor
            for prefix, scale in (("applied_", 0.25), ("", 1.0))
            for key, value in (
                ("variance", variance),
                ("mean_grad_sq_norm", signal),
            )
            for suffix, factor in (("", 1.0), ("_low", 0.9), ("_high", 1.1))
        },
        **{
            f"{prefix}{key}{suffix}": value * factor
            for prefix in ("applied_", "")
            for key, value in (
                ("inverse_snr", variance / signal),
                ("cosine_to_reference", cosine),
            )
            for suffix, factor in (("", 1.0), ("_low", 0.9), ("_high", 1.1))
        },
        **{
            f"{key}{suffix}": value * factor
            for key, value in (("return_mean", -10.0 / k), ("clip_binds", 1.0))
            for suffix, factor in (("", 1.0), ("_low", 0.9), ("_high", 1.0))
        },
        "applied_resolved": signal > 1.0,
        "resolved": signal > 1.0,
    }
    for system, k, baseline, variance, signal, cosine in (
        ("llmr", 1, "none", 100.0, 20.0, 1.0),
        ("llmr_mean", 1, "mean", 60.0, 18.0, 0.95),
        ("ketchup_k2", 2, "none", 40.0, 10.0, 0.9),
        ("ketchup_k4", 4, "none", 20.0, 0.5, 0.7),
    )
]
ON_POLICY = ("llmr", "ketchup_k2", "ketchup_k4", "gkd")  # these runs get a training log


def _write_run(root, examples, student, system, seed, cut_share):
    rng = random.Random(f"{student}{system}{seed}")
    outputs = []
    for ex in examples:
        ref = ex["references"][rng.randrange(len(ex["references"]))]
        words = ref.split()
        outputs.append(" ".join(words[: len(words) // 2]) if rng.random() < cut_share else ref)
    name = "teacher" if system == "teacher" else f"{student}/{system}/seed{seed}"
    run_dir = root / "runs" / name
    write_jsonl(
        run_dir / "out.jsonl",
        ({"id": e["id"], "output": o} for e, o in zip(examples, outputs, strict=True)),
    )
    model = run_dir / "model"
    model.mkdir(parents=True)
    width = {"s1": 4, "s2": 16}[student]  # parameter counts for the gain-by-size figure
    save_file({"w": np.zeros((width, width), dtype=np.float32)}, str(model / "model.safetensors"))
    write_json(model / "distill.config.json", {"best_validation_score": SYSTEMS[system][1] + seed})
    if system in ON_POLICY:
        train = {"return_mean": -1.0, "rollout_length": 20.0, "clipped_share": 0.1}
        write_jsonl(
            run_dir / "log.jsonl",
            [{"kind": "eval", "step": 0, "score": 40.0}]
            + [{"kind": "train", "step": t, "loss": 0.1, **train} for t in (1, 2, 3)]
            + [{"kind": "eval", "step": 3, "score": 45.0}],
        )
    run = {
        "task": "toy",
        "student": None if system == "teacher" else student,
        "system": system,
        "seed": None if system == "teacher" else seed,
    }
    args = ["score", "--outputs", str(run_dir / "out.jsonl"), "--data-dir", str(root / "data")]
    args += ["--task-json", json.dumps(TASK), "--run-json", json.dumps(run), "--model", str(model)]
    assert main([*args, "--out", str(root / "scores" / f"{name}.csv")]) == 0
    return root / "scores" / f"{name}.json", outputs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    assert main(["prepare-data", "--task", "toy", "--config-json", json.dumps(TASK),
                 "--out-dir", str(root / "data")]) == 0  # fmt: skip
    examples = read_jsonl(root / "data" / "test.jsonl")
    summaries, outputs = [], {}
    for student in ("s1", "s2"):
        for system, (cut, _) in SYSTEMS.items():
            for seed in (0,) if system == "teacher" else SEEDS:
                if system == "teacher" and student == "s2":
                    continue
                path, outs = _write_run(root, examples, student, system, seed, cut)
                summaries.append(str(path))
                outputs[(student, system, seed)] = outs
    variance = []
    for student in ("s1", "s2"):
        path = root / "toy" / "students" / student / "grad_variance.csv"
        path.parent.mkdir(parents=True)
        write_text(path, csv_text(VARIANCE_ROWS, list(VARIANCE_ROWS[0])))
        variance.append(str(path))
    return {"root": root, "summaries": summaries, "variance": variance, "examples": examples,
            "outputs": outputs}  # fmt: skip


@pytest.fixture(scope="module")
def tables(study, tmp_path_factory):
    """The tables verb's directory for the fake study."""
    out = tmp_path_factory.mktemp("tables")
    args = ["tables", "--scores", *study["summaries"], "--variance", *study["variance"]]
    assert main([*args, "--out-dir", str(out)]) == 0
    return out


def test_tables_select_by_validation_and_trace_to_per_example_scores(study, tables):
    tmp_path = tables
    main_md = (tmp_path / "main.md").read_text()
    order = ["Teacher", "(SFT)", "SeqKD", "| KL", "| LLMR |", "KETCHUP (K=4)", "GKD"]
    positions = [main_md.index(label) for label in order]
    assert positions == sorted(positions)
    assert "KETCHUP (K=2)" not in main_md  # better on test, worse on validation
    assert "best non-RL baseline by validation: KL" in main_md

    records = read_csv(tmp_path / "main.csv")
    kl = next(
        r for r in records if r["student"] == "s1" and r["row"] == "kl" and r["metric"] == "bleu"
    )
    # the table's number is the mean over seeds of sacreBLEU on the outputs themselves
    streams = reference_streams([ex["references"] for ex in study["examples"]])
    per_seed = [
        sacrebleu.corpus_bleu(study["outputs"][("s1", "kl", s)], streams).score for s in SEEDS
    ]
    assert float(kl["mean"]) == pytest.approx(sum(per_seed) / 2, abs=1e-4)
    assert float(kl["ci_low"]) < float(kl["mean"]) < float(kl["ci_high"])
    assert kl["seeds"] == "2"

    tests = [r for r in records if r["row"].startswith("test:") and r["student"] == "s1"]
    # KETCHUP against LLMR and the best baseline (KL here), then LLMR against its KL warm start
    pairs = [(r["system"], r["against"]) for r in tests]
    assert pairs == [("ketchup_k4", "llmr"), ("ketchup_k4", "kl"), ("llmr", "kl")]
    means = {
        r["row"]: float(r["mean"])
        for r in records
        if r["student"] == "s1" and r["metric"] == "bleu"
    }
    llmr_vs_kl = next(r for r in tests if r["system"] == "llmr")
    assert float(llmr_vs_kl["mean"]) == pytest.approx(means["llmr"] - means["kl"], abs=1e-3)
    for r in tests:
        assert 0 < float(r["p_value"]) <= 1
    vs_llmr = next(r for r in tests if r["against"] == "llmr")
    assert float(vs_llmr["mean"]) > 0 and float(vs_llmr["p_value"]) < 0.05  # cut 0.2 vs 0.95

    grid = read_csv(tmp_path / "k_grid.csv")
    # the K grid takes the baseline-free systems, K = 1 first
    assert [(r["student"], r["k"], r["variance"]) for r in grid if r["student"] == "s1"] == [
        ("s1", "1", "100.0000"),
        ("s1", "2", "40.0000"),
        ("s1", "4", "20.0000"),
    ]
    grid_md = (tmp_path / "k_grid.md").read_text()
    assert "0.7* [0.630, 0.770]" in grid_md.replace("0.700*", "0.7*")  # unresolved K = 4
    assert "| 25 (100) |" in grid_md  # K = 1: the applied update's variance, the raw one's
    variance_md = (tmp_path / "variance.md").read_text()
    assert "LLMR + mean" in variance_md and variance_md.count("| no |") == 2  # one per student
    # applied first (variance, signal, ratio, cosine, clip share), then the raw gradient's
    assert "| LLMR | 25 [22.5, 27.5] | 5 [4.5, 5.5] | 5 [4.5, 5.5] | 1.000 [0.900, 1.100] " in (
        variance_md
    )
    assert "| 100% [90%, 100%] | 100 [90, 110] | 20 [18, 22] |" in variance_md
    assert "1-seed" not in (tmp_path / "main.md").read_text()
    assert (tmp_path / "provenance.md").is_file()
    sig = next(r for r in tests if r["against"] == "llmr")
    assert float(sig["seed_ci_low"]) <= float(sig["ci_low"])  # seeds add to the spread
    assert float(sig["seed_p_value"]) >= 0.5  # two seeds: a sign-flip test cannot go lower
    assert "No task of this study is one of the paper's" in (tmp_path / "paper.md").read_text()
    tex = (tmp_path / "main.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex
    for name in ("main", "k_grid", "variance", "sizes", "paper", "provenance"):
        assert (tmp_path / f"{name}.tex").read_text().isascii(), name


TABLE_NAMES = ("main", "k_grid", "variance", "paper", "provenance")
# What the .tex tables may contain besides ASCII text: booktabs' rules and the escapes of tex()
LATEX_COMMANDS = {
    *(r"\begin", r"\end", r"\toprule", r"\midrule", r"\bottomrule"),
    *(r"\textbackslash", r"\textasciitilde", r"\textasciicircum"),
    *(r"\pm", r"\Delta", r"\uparrow", r"\downarrow", r"\geq", r"\leq", r"\times"),
    *(r"\cdot", r"\Sigma"),
}


def test_latex_tables_use_booktabs_rules_and_ascii_only(tables):
    import re

    for name in TABLE_NAMES:
        tex = (tables / f"{name}.tex").read_text()
        assert tex.isascii(), name
        body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
        assert body.count(r"\begin{tabular}") == body.count(r"\bottomrule") >= 1, name
        commands = set(re.findall(r"\\[A-Za-z]+", body))
        assert commands <= LATEX_COMMANDS, (name, commands - LATEX_COMMANDS)
        for line in body.splitlines():  # math shifts in pairs, so every $...$ closes on its line
            assert len(re.findall(r"(?<!\\)\$", line)) % 2 == 0, (name, line)


def test_tex_maps_every_character_a_plain_latex_cannot_take():
    from ketchup.report.tables import tex

    text = "KETCHUP − LLMR ± 0.3 ↑ ↓ ≥ ≤ × · ‖g‖² Σ Δ – — 10% a_b #1 $5 {x} ~ ^ \\ & é"
    out = tex(text)
    assert out.isascii()
    assert r"$\pm$" in out and r"\%" in out and r"\_" in out and r"$^2$" in out
    assert "?" in out  # an unmapped letter (é) cannot break the document, it shows as ?


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="pdflatex not installed")
def test_latex_tables_compile(tables, tmp_path):
    """Every .tex table in a minimal document (article + booktabs), through pdflatex."""
    body = "\n\n".join(rf"\input{{{tables / name}.tex}}" for name in TABLE_NAMES)
    document = (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        f"{body}\n\\end{{document}}\n"
    )
    (tmp_path / "tables.tex").write_text(document)
    pdflatex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"]
    result = subprocess.run(pdflatex, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 1000


def test_figures_are_written_for_every_kind(study, tmp_path):
    from ketchup.report import figures

    args = ["figures", "--task", "toy", "--scores", *study["summaries"], "--variance"]
    kinds = [*figures.KINDS, "gain_vs_size"]
    assert main([*args, *study["variance"], "--kinds", *kinds, "--out-dir", str(tmp_path)]) == 0
    per_student = figures.KINDS
    expected = {
        f"toy_{s}_{k}.{e}" for s in ("s1", "s2") for k in per_student for e in ("png", "svg")
    }
    expected |= {"toy_gain_vs_size.png", "toy_gain_vs_size.svg"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())


def test_training_curves_draw_every_panel(study):
    from ketchup.report import figures
    from ketchup.stages.report import _cells

    cell = next(c for c in _cells(study["summaries"]) if c.student == "s1")
    fig = figures.training_curves_k(cell)
    # LLMR and each K in every panel: validation score and each training field
    assert [len(ax.get_lines()) for ax in fig.axes] == [3] * 4
    fig = figures.training_curves_baselines(cell)
    # of the baselines only GKD ran here, in the divergence column beside LLMR
    panels = [len(ax.get_lines()) for ax in fig.axes if ax.get_visible()]
    assert panels == [1, 2, 1, 2, 1, 0, 1], panels  # (row by row; GKD's log has no divergence)


def test_runs_scored_on_different_examples_are_refused(study, tmp_path):
    summaries = list(study["summaries"])
    kl0 = next(p for p in summaries if p.endswith("s1/kl/seed0.json"))
    with open(kl0) as f:
        data = json.load(f)
    rows = read_csv(data["scores"])[:-1]
    short = tmp_path / "short.csv"
    from ketchup.files import csv_text, write_text

    write_text(short, csv_text(rows, list(rows[0])))
    data["scores"] = str(short)
    write_json(tmp_path / "kl0.json", data)
    summaries[summaries.index(kl0)] = str(tmp_path / "kl0.json")
    with pytest.raises(ValueError, match="score different examples"):
        main(["tables", "--scores", *summaries, "--out-dir", str(tmp_path / "t")])


def test_judge_table_says_what_ran(tmp_path):
    from ketchup.stages.report import JUDGE_NOT_RUN, judge_summary

    assert judge_summary([]) == JUDGE_NOT_RUN and "judge.enabled: true" in JUDGE_NOT_RUN
    ran = tmp_path / "toy" / "judge" / "s1"
    ran.mkdir(parents=True)
    (ran / "report.md").write_text("# LLM-as-judge\n\n## Pointwise\n| teacher | 4 |\n")
    dry = tmp_path / "toy" / "judge" / "s2"
    dry.mkdir(parents=True)
    write_json(dry / "dry_run.json", {"requests": 12, "prompt_tokens": 3400})
    text = judge_summary([ran, dry])
    assert "# LLM-as-judge: toy, s1" in text and "| teacher | 4 |" in text
    assert "# LLM-as-judge (dry run): toy, s2" in text and '"prompt_tokens": 3400' in text
    from ketchup.report.tables import markdown_html

    page = markdown_html(text)  # judge.html, which the report shows
    assert (
        "<h1>LLM-as-judge: toy, s1</h1>" in page and "<th>teacher</th><th>4</th>" in page
    )  # its one row
    assert "<pre>{" in page and "&quot;prompt_tokens&quot;: 3400" in page
    with pytest.raises(FileNotFoundError, match="neither report.md nor dry_run.json"):
        judge_summary([tmp_path / "toy" / "judge" / "missing"])


def test_an_unknown_figure_kind_is_named(study, tmp_path, capsys):
    args = ["figures", "--task", "toy", "--scores", *study["summaries"], "--kinds", "histogram"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 1
    assert "unknown figure 'histogram'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_paper_table_puts_our_seed_means_beside_the_published_ones(study):
    """A task of the paper's (here the fake study's cell relabelled as Europarl EN-NL) gets a row
    per system the paper reports, KETCHUP at its best K by validation; other tasks get none."""
    import dataclasses

    from ketchup.report.results import collect, load_run
    from ketchup.report.tables import PAPER_RESULTS, paper_table

    cells = collect([load_run(p) for p in study["summaries"]])
    cell = next(c for c in cells if c.student == "s1")
    europarl = dataclasses.replace(cell, task="en-nl", dataset="europarl_en_nl")
    table, records = paper_table([cell, europarl])
    assert [r["system"] for r in records] == ["seqkd", "kl", "llmr", "ketchup_k4"]
    streams = reference_streams([ex["references"] for ex in study["examples"]])
    for record, row in zip(records, table.rows, strict=True):
        method = "ketchup" if record["system"].startswith("ketchup") else record["system"]
        assert record["task"] == "en-nl" and record["metric"] == "bleu"
        assert record["paper"] == PAPER_RESULTS[method]["europarl_en_nl"]
        per_seed = [
            sacrebleu.corpus_bleu(study["outputs"][("s1", record["system"], s)], streams).score
            for s in SEEDS
        ]
        assert record["ours"] == pytest.approx(sum(per_seed) / len(per_seed), abs=1e-4)
        assert float(row[-1]) == pytest.approx(record["ours"] - record["paper"], abs=0.01)
    alone, none = paper_table([cell])
    assert not none and "No task of this study is one of the paper's" in alone.notes[0]


def test_the_papers_claimed_effect_is_its_published_ketchup_over_the_same_system():
    from ketchup.report.tables import paper_relative_effect

    # XSum ROUGE-1: KETCHUP 36.03, LLMR 35.54; the arithmetic task stands for GSM8K (25.71, 25.21)
    assert paper_relative_effect("xsum", "llmr") == pytest.approx((100 * 0.49 / 35.54,) * 2)
    assert paper_relative_effect("arithmetic", "llmr") == pytest.approx((100 * 0.50 / 25.21,) * 2)
    # the restaurant task has no column in the paper: the range over its three tasks
    low, high = paper_relative_effect("embedded", "llmr")
    assert (low, high) == pytest.approx((100 * 0.23 / 22.72, 100 * 0.50 / 25.21))
    assert all(np.isnan(paper_relative_effect("embedded", "sft")))  # the paper has no SFT row
    # LLMR over its KL warm start on EN-NL: 22.72 against 22.35
    assert paper_relative_effect("europarl_en_nl", "kl", "llmr") == pytest.approx(
        (100 * 0.37 / 22.35,) * 2
    )


def test_a_verdict_tells_no_difference_from_too_few_seeds():
    from ketchup.report.tables import verdict

    assert verdict(0.1, 2.0, 1.5, 1.0) == "higher"
    assert verdict(-3.0, -0.2, 1.5, 1.0) == "lower"
    # the interval holds 0: the seeds could have seen the claimed 2% (MDE 1.5%), or could not (3%)
    assert verdict(-0.5, 0.6, 1.5, 2.0) == "no difference of the paper's size"
    assert verdict(-0.5, 0.6, 3.0, 2.0) == "too few seeds for the paper's effect"
    assert verdict(-0.5, 0.6, 3.0, float("nan")).startswith("interval holds 0")
    assert verdict(float("nan"), float("nan"), float("nan"), 2.0) == "one seed: no verdict"
