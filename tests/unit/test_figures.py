"""The figures a reviewer reads: training curves split so that no panel is crowded, every line
its own colour and dash, K = 1 first, error bars that say what they cover, value axes that start
near the data. A fake study with every system of the default config (three seeds): real
embedded examples, outputs that copy a reference or drop its second half at a rate set per
system, real `ketchup score` files and synthetic training logs."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import yaml

from ketchup.cli import main
from ketchup.config import WARM_STARTED_METHODS, parse_config, split_system
from ketchup.files import read_jsonl, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
TASK = {
    "dataset": "embedded",
    "embedded": {"n_train": 10, "n_validation": 4, "n_test": 40, "n_references": 2, "seed": 0},
}
SEEDS = (0, 1, 2)
STEPS = 120


def default_systems() -> list[str]:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    return list(parse_config(copy.deepcopy(config)).distill.systems)


def _cut_share(system: str) -> float:
    """Share of outputs cut in half: a different level per system, all well above zero."""
    return 0.15 + 0.5 * (sum(map(ord, system)) % 13) / 13


def _training_log(system: str, seed: int) -> list[dict]:
    """Eval rows every 30 updates (step 0: the warm start) and a train row per update, with the
    fields each kind of method logs (policy gradient: return and clipped share; divergences)."""
    rng = random.Random(f"{system}{seed}")
    method, k = split_system(system)
    gain = 5 + 10 * _cut_share(system)
    rows = [{"kind": "eval", "step": t, "score": 40 + gain * t / STEPS} for t in range(0, 121, 30)]
    for t in range(1, STEPS + 1):
        row = {"kind": "train", "step": t, "loss": 1.0, "rollout_length": 30 - 4 * t / STEPS}
        if method in ("js", "tvd", "gkd"):
            row["divergence"] = 0.5 + 0.2 * rng.random() - 0.001 * t
        else:
            row["return_mean"] = -20 / k + rng.gauss(0, 1)
            row["clipped_share"] = 0.05 * k**0.5 + 0.01 * rng.random()
        rows.append(row)
    return sorted(rows, key=lambda r: (r["step"], r["kind"] == "eval"))


def write_run(root: Path, examples, student: str, system: str, seed: int | None) -> Path:
    """Outputs, a model directory (with its validation score) and the score files of one run."""
    rng = random.Random(f"{student}{system}{seed}")
    cut = 0.0 if system == "teacher" else _cut_share(system)
    outputs = []
    for ex in examples:
        words = ex["references"][rng.randrange(len(ex["references"]))].split()
        outputs.append(
            " ".join(words[: len(words) // 2]) if rng.random() < cut else " ".join(words)
        )
    name = "teacher" if seed is None else f"{student}/{system}/seed{seed}"
    run_dir = root / "runs" / name
    write_jsonl(
        run_dir / "out.jsonl",
        ({"id": e["id"], "output": o} for e, o in zip(examples, outputs, strict=True)),
    )
    write_json(run_dir / "model" / "distill.config.json", {"best_validation_score": 50 - cut})
    if system != "teacher" and split_system(system)[0] in WARM_STARTED_METHODS:
        write_jsonl(run_dir / "log.jsonl", _training_log(system, seed))
    run = {"task": "toy", "student": None, "system": system, "seed": seed}
    if seed is not None:
        run["student"] = student
    args = ["score", "--outputs", str(run_dir / "out.jsonl"), "--data-dir", str(root / "data")]
    args += ["--task-json", json.dumps(TASK), "--run-json", json.dumps(run)]
    args += ["--model", str(run_dir / "model")]
    assert main([*args, "--out", str(root / "scores" / f"{name}.csv")]) == 0
    return root / "scores" / f"{name}.json"


def build_study(root: Path, systems, seeds=SEEDS) -> list[str]:
    """Score summaries of the teacher and every system at every seed, for one student."""
    data = ["prepare-data", "--task", "toy", "--config-json", json.dumps(TASK)]
    assert main([*data, "--out-dir", str(root / "data")]) == 0
    examples = read_jsonl(root / "data" / "test.jsonl")
    summaries = [write_run(root, examples, "s1", "teacher", None)]
    for system in systems:
        summaries += [write_run(root, examples, "s1", system, seed) for seed in seeds]
    return [str(p) for p in summaries]


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    from ketchup.stages.report import _cells

    summaries = build_study(tmp_path_factory.mktemp("figures"), default_systems())
    (cell,) = _cells(summaries)
    return cell


def _legend_names(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.texts]


def test_training_curves_are_split_so_that_no_panel_is_crowded(cell):
    from ketchup.report import figures

    on_policy = {s for s in cell.groups if s != "teacher" and s not in ("sft", "seqkd", "kl")}
    by_k, baselines = figures.training_curves_k(cell), figures.training_curves_baselines(cell)
    panels = [ax for fig in (by_k, baselines) for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 + 7  # the baselines' divergence column has no clipped share
    for ax in panels:
        lines = ax.get_lines()
        assert 1 <= len(lines) <= 5, (ax.get_ylabel(), len(lines))
        looks = {(line.get_color(), str(line.get_linestyle()), line.get_marker()) for line in lines}
        assert len(looks) == len(lines), ax.get_ylabel()  # no two lines alike
    names_k, names_b = _legend_names(by_k), _legend_names(baselines)
    assert names_k == ["LLMR", *(f"KETCHUP (K={k})" for k in (2, 4, 8, 16))]
    # every on-policy system of the default study is drawn; LLMR, the reference, in both
    labels = {cell.groups[s].label for s in on_policy}
    assert set(names_k) | set(names_b) == labels
    assert set(names_k) & set(names_b) == {"LLMR"} and names_b.count("LLMR") == 2


def test_metric_vs_k_starts_at_k1_and_says_what_its_bars_cover(cell):
    from ketchup.report import figures

    fig = figures.metric_vs_k(cell)
    (ax,) = fig.axes
    ketchup_line = ax.get_lines()[0]
    assert list(ketchup_line.get_xdata()) == [1, 2, 4, 8, 16]
    names = _legend_names(fig)
    assert names[0].startswith("mean over 3 seeds; bars: 95% CI") and "seeds and test" in names[0]
    assert "each seed (the seed-to-seed spread)" in names
    assert any(n.startswith("best non-RL baseline") and "95% CI" in n for n in names)


def test_methods_axis_spans_the_data_not_zero(cell, tmp_path):
    from ketchup.report import figures

    fig = figures.methods(cell)
    (ax,) = fig.axes
    # each system's bar: its (low, high) segment
    bars = [c.lines[2][0].get_segments()[0] for c in ax.containers]
    systems = [s for _, s in cell.table_systems() if s != "teacher"]
    assert len(bars) == len(systems)
    lowest, highest = min(b[0][0] for b in bars), max(b[1][0] for b in bars)
    left, right = ax.get_xlim()
    assert 0 < left < lowest and highest < right  # every interval shown, no empty span from 0
    assert (right - left) < 1.5 * (highest - lowest)  # the data fill the axis
    legend = ax.get_legend()
    assert "over seeds and test examples (t over seeds" in legend.get_title().get_text()
    assert "each seed (the seed-to-seed spread)" in [t.get_text() for t in legend.texts]
    assert ax.get_xlabel() == "test BLEU (the axis does not start at 0)"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [cell.groups[s].label for s in systems]
    assert labels[0].startswith("Student, no distillation")
    paths = figures.save(fig, tmp_path / "methods")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(
        p.stat().st_size > 5000 for p in paths
    )


def test_one_seed_bars_say_they_cover_the_test_examples_only():
    from ketchup.report import figures

    assert "one seed" in figures.ci_label(1) and "seeds" in figures.ci_label(3)
    assert "test examples" in figures.ci_label(1)


def test_a_study_draws_the_figures_its_methods_have():
    from ketchup.report import figures

    every = figures.kinds_for(["sft", "kl", "llmr", "ketchup", "gkd"])
    assert every == list(figures.KINDS)
    no_k = figures.kinds_for(["kl", "llmr", "llmr_mean"])
    assert no_k == ["training_curves_baselines", "methods"]
    assert figures.kinds_for(["kl", "llmr", "ketchup"]) == [
        k for k in figures.KINDS if k != "training_curves_baselines"
    ]
