"""The paper's tables from the scored runs: Markdown, CSV and LaTeX (rendering only; the numbers
come from results.py, which reads them from per-example score files).

    main       rows teacher, SFT, SeqKD, KL, JS, TVD, LLMR (+ mean, + min-var), KETCHUP at its
               best K (by validation), GKD, MiniLLM; per task, every metric as mean +- std over
               seeds and the primary metric's bootstrap 95% CI; then KETCHUP against LLMR and
               the best non-RL baseline: difference of seed means, paired permutation p-value
    k_grid     per K (K = 1 is LLMR): test and validation primary metric, gradient variance
               (trace of the covariance), relative variance, bias against K = 1 (norm, cosine)
    paper      our numbers beside the paper's published ones, for the paper's tasks
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ketchup.math import stats
from ketchup.results import Cell, paired_test, system_label

# Published results, flan-t5-xl -> t5-base (the paper's main table): XSum ROUGE-1, Europarl EN-NL
# BLEU, GSM8K accuracy.
PAPER_METRIC = {"xsum": "rouge1", "europarl_en_nl": "bleu", "gsm8k": "accuracy"}
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "seqkd": {"xsum": 33.54, "europarl_en_nl": 22.09, "gsm8k": 20.02},
    "kl": {"xsum": 34.36, "europarl_en_nl": 22.35, "gsm8k": 23.96},
    "js": {"xsum": 34.87, "europarl_en_nl": 22.55, "gsm8k": 24.72},
    "tvd": {"xsum": 35.17, "europarl_en_nl": 22.63, "gsm8k": 24.94},
    "llmr": {"xsum": 35.54, "europarl_en_nl": 22.72, "gsm8k": 25.21},
    "llmr_mean": {"xsum": 35.60, "europarl_en_nl": 22.67, "gsm8k": 25.39},
    "llmr_minvar": {"xsum": 35.59, "europarl_en_nl": 22.70, "gsm8k": 25.10},
    "ketchup": {"xsum": 36.03, "europarl_en_nl": 22.95, "gsm8k": 25.71},
}


@dataclass
class Table:
    """A titled grid of formatted cells, rendered as Markdown or LaTeX."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += [""] + [f"{note}  " for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.header) - 1)
        body = [" & ".join(_tex(c) for c in self.header) + r" \\", r"\midrule"]
        body += [" & ".join(_tex(c) for c in row) + r" \\" for row in self.rows]
        notes = "".join(f"\n% {note}" for note in self.notes)
        return (
            f"% {self.title}{notes}\n\\begin{{tabular}}{{{spec}}}\n\\toprule\n"
            + "\n".join(body)
            + "\n\\bottomrule\n\\end{tabular}\n"
        )


def _tex(text: str) -> str:
    return (
        text.replace("\\", r"\textbackslash{}")
        .replace("&", r"\&")
        .replace("%", r"\%")
        .replace("_", r"\_")
        .replace("#", r"\#")
        .replace("±", r"$\pm$")
        .replace("Δ", r"$\Delta$")
    )


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def fmt_mean_std(mean: float, std: float) -> str:
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def _metric_header(cell: Cell, metric) -> str:
    arrow = {True: " ↑", False: " ↓", None: ""}[metric.higher_is_better]
    return f"{cell.task} {metric.label}{arrow}"


def main_table(cells: Sequence[Cell]) -> tuple[list[Table], list[dict[str, Any]]]:
    """One main table per student (a column group per task) and its long-form CSV records."""
    tables, records = [], []
    for student in dict.fromkeys(c.student for c in cells):
        group = [c for c in cells if c.student == student]
        header = ["System"]
        for cell in group:
            header += [_metric_header(cell, m) for m in cell.metrics]
            header.append(f"{cell.task} {cell.primary.label} 95% CI")
        methods = [m for m, _ in group[0].table_systems()]
        for cell in group[1:]:
            methods += [m for m, _ in cell.table_systems() if m not in methods]
        table = Table(f"Main results: student {student}, test split", header)
        for method in methods:
            row = [system_label(method)]
            for cell in group:
                system = dict(cell.table_systems()).get(method)
                if system is None:
                    row += ["-"] * (len(cell.metrics) + 1)
                    continue
                g = cell.groups[system]
                for metric in cell.metrics:
                    mean, std = g.mean_std(metric)
                    row.append(fmt_mean_std(mean, std))
                    records.append(_record(cell, method, system, g, metric, mean, std))
                _, lo, hi = g.ci(cell.primary)
                row.append(f"[{fmt(lo)}, {fmt(hi)}]")
                records[-len(cell.metrics)].update(ci_low=lo, ci_high=hi)
                if method == "ketchup":
                    row[0] = f"KETCHUP (K={system[9:]})" if len(group) == 1 else "KETCHUP (best K)"
            table.rows.append(row)
        table.notes += _main_notes(group)
        tables.append(table)
        tables.append(significance_table(group, records))
    return tables, records


def _record(cell, method, system, group, metric, mean, std) -> dict[str, Any]:
    return {
        "task": cell.task,
        "student": cell.student,
        "row": method,
        "system": system,
        "metric": metric.name,
        "mean": mean,
        "std": std,
        "seeds": len(group.runs),
        "ci_low": math.nan,
        "ci_high": math.nan,
        "validation_mean": group.validation(),
    }


def _main_notes(group: Sequence[Cell]) -> list[str]:
    notes = [
        "Mean ± standard deviation over seeds (the teacher: one model). "
        f"CI: {stats.METHOD}, of the mean over seeds; it covers the choice of test examples "
        "only, not the seed-to-seed spread that the ± std shows.",
        "↑ higher is better, ↓ lower is better. KETCHUP's K and the best non-RL baseline are "
        "chosen by mean validation score, never by test score.",
    ]
    for cell in group:
        best_k, best_base = cell.best_k_system(), cell.best_baseline()
        if best_k:
            notes.append(
                f"{cell.task}: KETCHUP's best K by validation: {best_k[9:]}; "
                f"best non-RL baseline by validation: {system_label(best_base or '-')}."
            )
    return notes


def significance_table(group: Sequence[Cell], records: list[dict[str, Any]]) -> Table:
    """KETCHUP (best K) against LLMR and the best non-RL baseline on the primary metric."""
    table = Table(
        "KETCHUP at its best K against LLMR and the best non-RL baseline (paired, test split)",
        ["Task", "Metric", "KETCHUP", "Against", "Δ (KETCHUP − other)", "p-value", "Seeds"],
        notes=[f"{stats.TEST_METHOD}; Δ is the difference of the seed means."],
    )
    for cell in group:
        best_k = cell.best_k_system()
        if best_k is None:
            continue
        for other in dict.fromkeys(s for s in ("llmr", cell.best_baseline()) if s):
            if other not in cell.groups:
                continue
            test = paired_test(cell.groups[best_k], cell.groups[other], cell.primary)
            table.rows.append(
                [
                    cell.task,
                    cell.primary.label,
                    f"K={best_k[9:]}",
                    system_label(other),
                    fmt(test["difference"]),
                    f"{test['p_value']:.4f}",
                    str(test["seeds"]),
                ]
            )
            records.append(
                {
                    "task": cell.task,
                    "student": cell.student,
                    "row": f"test:{best_k}_vs_{other}",
                    "system": best_k,
                    "metric": cell.primary.name,
                    "mean": test["difference"],
                    "std": math.nan,
                    "seeds": test["seeds"],
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "validation_mean": math.nan,
                    "p_value": test["p_value"],
                    "against": other,
                }
            )
    return table


def k_table(
    cells: Sequence[Cell], variance: dict[tuple[str, str], list[dict[str, str]]]
) -> tuple[list[Table], list[dict[str, Any]]]:
    """Per (task, student): every K (1 = LLMR) with its metric, gradient variance and bias."""
    tables, records = [], []
    for cell in cells:
        var_rows = {int(r["k"]): r for r in variance.get((cell.task, cell.student), [])}
        systems = (["llmr"] if "llmr" in cell.groups else []) + cell.ketchup_systems()
        if not systems and not var_rows:
            continue
        m = cell.primary
        table = Table(
            f"K grid: {cell.task}, student {cell.student}",
            [
                "K",
                "System",
                f"test {m.label}",
                f"validation {m.label}",
                "gradient variance",
                "relative variance",
                "bias norm",
                "cosine to K=1",
            ],
            notes=[
                "Test and validation: mean ± std over seeds. Gradient variance: trace of the "
                "covariance of the policy-gradient estimate over rollout sets, on the same "
                "rollouts for every K, from the first seed's KL warm start "
                "(students/<student>/grad_variance.csv); relative = variance / squared norm of "
                "the mean gradient; bias: the mean gradient's distance and cosine to K = 1's."
            ],
        )
        ks = sorted({1 if s == "llmr" else int(s[9:]) for s in systems} | set(var_rows))
        for k in ks:
            system = "llmr" if k == 1 else f"ketchup_k{k}"
            g = cell.groups.get(system)
            mean, std = g.mean_std(m) if g else (math.nan, math.nan)
            vals = [r.validation for r in g.runs] if g else []
            val_mean = sum(vals) / len(vals) if vals else math.nan
            v = var_rows.get(k, {})
            num = {key: float(v[key]) if key in v else math.nan for key in _VARIANCE_KEYS}
            table.rows.append(
                [
                    str(k),
                    system_label(system) if g else "-",
                    fmt_mean_std(mean, std),
                    fmt(val_mean),
                    f"{num['variance']:.4g}",
                    f"{num['relative_variance']:.3f}",
                    f"{num['bias_norm']:.4g}",
                    f"{num['cosine_to_reference']:.3f}",
                ]
            )
            records.append(
                {
                    "task": cell.task,
                    "student": cell.student,
                    "k": k,
                    "system": system if g else "",
                    "metric": m.name,
                    "test_mean": mean,
                    "test_std": std,
                    "validation_mean": val_mean,
                    **num,
                }
            )
        tables.append(table)
    return tables, records


_VARIANCE_KEYS = ("variance", "relative_variance", "bias_norm", "cosine_to_reference")


def paper_table(cells: Sequence[Cell]) -> tuple[Table, list[dict[str, Any]]]:
    """Our seed means beside the paper's published numbers, for the tasks the paper reports."""
    table = Table(
        "Ours against the paper's published results (flan-t5-xl -> t5-base)",
        ["Task", "Metric", "System", "ours", "paper", "ours − paper"],
    )
    records = []
    for cell in cells:
        metric_name = PAPER_METRIC.get(cell.dataset)
        if metric_name is None:
            continue
        metric = next(m for m in cell.metrics if m.name == metric_name)
        for method, system in cell.table_systems():
            published = PAPER_RESULTS.get(method, {}).get(cell.dataset)
            if published is None:
                continue
            ours, _ = cell.groups[system].mean_std(metric)
            table.rows.append(
                [
                    cell.task,
                    metric.label,
                    system_label(system),
                    fmt(ours),
                    fmt(published),
                    fmt(ours - published),
                ]
            )
            records.append(
                {
                    "task": cell.task,
                    "student": cell.student,
                    "system": system,
                    "metric": metric.name,
                    "ours": ours,
                    "paper": published,
                }
            )
    if not table.rows:
        table.notes.append(
            "No task of this study is one of the paper's (xsum, europarl_en_nl, gsm8k): run "
            "`snakemake --configfile configs/paper.yaml` for this comparison."
        )
    else:
        table.notes.append(
            "Ours: mean over seeds with this study's teacher and student, which may differ from "
            "the paper's flan-t5-xl -> t5-base."
        )
    return table, records
