"""The paper's tables from the scored runs: Markdown, HTML, CSV and LaTeX (rendering only; the
numbers come from results.py, which reads them from per-example score files, and from the
gradient-variance stage's CSV).

    main       rows teacher, SFT, SeqKD, KL, JS, TVD, LLMR (+ mean, + min-var), KETCHUP at its
               best K (by validation), GKD, MiniLLM; per task, every metric as mean +- std over
               seeds and the primary metric's seed-aware 95% CI (seeds and shared examples);
               then KETCHUP against LLMR and the best non-RL baseline: the difference of seed
               means with example-level and seed-aware intervals and tests, and the minimal
               detectable effect of the seeds at hand
    k_grid     per K (K = 1 is LLMR): test and validation metric, the mean return per token in
               training, and the trained update's variance, inverse SNR and cosine to K = 1
    variance   per policy-gradient system: variance, debiased squared norm of the mean gradient,
               inverse SNR, cosine to LLMR, mean return per token, each with its bootstrap CI
    paper      our numbers beside the paper's published ones, for the paper's tasks
    provenance where and with what the study's models were trained
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ketchup.math import stats
from ketchup.provenance import describe
from ketchup.report.results import Cell, paired_test, system_label

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
# The paper's column an embedded task stands in for (the restaurant task, data-to-text, has none).
PAPER_STAND_IN = {"arithmetic": "gsm8k"}


def paper_relative_effect(dataset: str, other: str, method: str = "ketchup") -> tuple[float, float]:
    """The paper's `method` over `other`, as a share (%) of `other`'s published score: (low, high).

    On a task of the paper's (or its stand-in) low == high, that task's effect; on another task the
    range over the paper's three tasks. NaN when the paper does not report both.
    """
    published, ours = PAPER_RESULTS.get(other), PAPER_RESULTS.get(method)
    if published is None or ours is None:
        return math.nan, math.nan
    dataset = PAPER_STAND_IN.get(dataset, dataset)
    columns = [dataset] if dataset in published else list(published)
    effects = [100 * (ours[c] / published[c] - 1) for c in columns]
    return min(effects), max(effects)


def verdict(low: float, high: float, mde: float, claimed: float) -> str:
    """What a paired comparison says: a difference its seed-aware interval resolves (the first
    system higher or lower); none of the claimed size, when the interval holds 0 and the MDE is
    at most the claimed effect (the seeds had 80% power to see it); else too few seeds to tell
    (the MDE above the claimed effect)."""
    if math.isnan(low) or math.isnan(mde):
        return "one seed: no verdict"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    if math.isnan(claimed):
        return "interval holds 0; no published effect to size it by"
    if mde <= claimed:
        return "no difference of the paper's size"
    return "too few seeds for the paper's effect"


@dataclass
class Table:
    """A titled grid of formatted cells, rendered as Markdown, HTML or LaTeX."""

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

    def html(self) -> str:
        """An HTML table, the title as its caption, the notes after it (numbers right-aligned)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n"
            for row in self.rows
        )
        notes = "".join(f'<p class="note">{html.escape(note)}</p>\n' for note in self.notes)
        caption = f"<caption>{html.escape(self.title)}</caption>\n" if self.title else ""
        return (
            f"<table>\n{caption}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n"
            f"</table>\n{notes}"
        )

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.header) - 1)
        body = [" & ".join(tex(c) for c in self.header) + r" \\", r"\midrule"]
        body += [" & ".join(tex(c) for c in row) + r" \\" for row in self.rows]
        notes = "".join(f"\n% {tex(note)}" for note in self.notes)
        return (
            f"% {tex(self.title)}{notes}\n\\begin{{tabular}}{{{spec}}}\n\\toprule\n"
            + "\n".join(body)
            + "\n\\bottomrule\n\\end{tabular}\n"
        )


_PAGE_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:12px}"
    "table{border-collapse:collapse;margin:16px 0 6px}"
    "caption{font-weight:bold;text-align:left;padding:4px 0}"
    "th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
    "th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #333}"
    ".note{color:#444;font-size:12px;margin:2px 0;max-width:60em}"
)


def html_page(title: str, body: str) -> str:
    """A standalone HTML page around rendered tables: what the Snakemake report shows inline."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_PAGE_STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in escaped text."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _pipe_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_html(text: str) -> str:
    """HTML of the Markdown this project writes (the judge's report): headings, lists, pipe
    tables, fenced code and paragraphs, with inline `code` and **bold**."""
    lines, out, i = text.splitlines(), [], 0

    def block(start: int, belongs) -> int:
        end = start
        while end < len(lines) and belongs(lines[end]):
            end += 1
        return end

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = block(i + 1, lambda x: not x.startswith("```"))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : end])) + "</pre>")
            i = end + 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            end = block(i, lambda x: x.startswith("|"))
            rows = [_pipe_cells(x) for x in lines[i:end] if not re.fullmatch(r"[|:\- ]+", x)]
            out.append(Table("", rows[0], rows[1:]).html())
            i = end
        elif line.startswith("- "):
            end = block(i, lambda x: x.startswith("- "))
            items = "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:end])
            out.append(f"<ul>{items}</ul>")
            i = end
        elif line.strip():
            end = block(i, lambda x: x.strip() and not x.startswith(("#", "|", "- ", "```")))
            out.append(f"<p>{_inline(' '.join(x.strip() for x in lines[i:end]))}</p>")
            i = end
        else:
            i += 1
    return "\n".join(out) + "\n"


# Characters a LaTeX document (pdflatex, no unicode packages) cannot take as they are.
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": "-",
    "–": "--",
    "—": "---",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "‖": r"$\|$",
    "²": r"$^2$",
    "Σ": r"$\Sigma$",
}


def tex(text: str) -> str:
    """`text` escaped for LaTeX, every non-ASCII character replaced (tables.tex compiles)."""
    out = "".join(_TEX.get(ch, ch) for ch in text)
    return out.encode("ascii", "replace").decode("ascii")


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def fmt_g(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def fmt_ci(lo: float, hi: float, digits: int = 2, general: bool = False) -> str:
    f = (lambda v: fmt_g(v, 3)) if general else (lambda v: fmt(v, digits))
    return "-" if math.isnan(lo) or math.isnan(hi) else f"[{f(lo)}, {f(hi)}]"


def fmt_mean_std(mean: float, std: float) -> str:
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def _metric_header(cell: Cell, metric) -> str:
    arrow = {True: " ↑", False: " ↓", None: ""}[metric.higher_is_better]
    return f"{cell.task} {metric.label}{arrow}"


def _label(cell: Cell, system: str) -> str:
    group = cell.groups.get(system)
    return group.label if group else system_label(system)


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
                row.append(fmt_ci(lo, hi))
                records[-len(cell.metrics)].update(ci_low=lo, ci_high=hi)
                if len(group) == 1:
                    row[0] = g.label
                elif method == "ketchup":
                    row[0] = "KETCHUP (best K)"
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
        "label": group.label,
        "metric": metric.name,
        "mean": mean,
        "std": std,
        "seeds": len(group.runs),
        "ci_low": math.nan,
        "ci_high": math.nan,
        "validation_mean": group.validation(),
    }


def _main_notes(group: Sequence[Cell]) -> list[str]:
    seeds = max(len(g.runs) for c in group for name, g in c.groups.items() if name != "teacher")
    notes = [
        "Mean ± standard deviation over seeds (the teacher: one model). "
        f"CI of the mean over seeds: {stats.SEED_AWARE_METHOD}; it covers the training seeds "
        "and the choice of test examples.",
        "↑ higher is better, ↓ lower is better. KETCHUP's K and the best non-RL baseline are "
        "chosen by mean validation score, never by test score.",
    ]
    if seeds == 1:
        notes.append(
            "One training seed: the interval covers the test examples only, and no difference "
            "between systems here is evidence (their seed-to-seed spread is unknown; "
            "configs/seeds.yaml runs three)."
        )
    for cell in group:
        best_k, best_base = cell.best_k_system(), cell.best_baseline()
        if best_k:
            notes.append(
                f"{cell.task}: KETCHUP's best K by validation: {best_k[9:]}; "
                f"best non-RL baseline by validation: {system_label(best_base or '-')}."
            )
    return notes


def compared_pairs(cell: Cell) -> list[tuple[str, str]]:
    """(system, other) pairs of the significance table: KETCHUP at its best K against LLMR and the
    best non-RL baseline (the paper's claim), then LLMR and KETCHUP against the KL student they
    start from (does the on-policy phase move its warm start?)."""
    best_k = cell.best_k_system()
    if best_k is None:
        return []
    pairs = [(best_k, "llmr"), (best_k, cell.best_baseline()), ("llmr", "kl"), (best_k, "kl")]
    return [
        (a, b)
        for a, b in dict.fromkeys(pairs)
        if b and a != b and a in cell.groups and b in cell.groups
    ]


def significance_table(group: Sequence[Cell], records: list[dict[str, Any]]) -> Table:
    """Paired comparisons on the primary metric: `compared_pairs` of every cell."""
    table = Table(
        "KETCHUP at its best K against LLMR and the best non-RL baseline, and the on-policy "
        "systems against their KL warm start (paired, test split)",
        [
            "Task",
            "Metric",
            "System",
            "Against",
            "Δ (system − other)",
            "per-seed Δ",
            "seed-aware 95% CI",
            "MDE (80% power)",
            "MDE, % of other",
            "paper's Δ, % of other",
            "verdict",
            "seed-level p",
            "example-level 95% CI",
            "example-level p",
            "Seeds",
        ],
        notes=[
            "Δ: difference of the seed means. Seed-aware: "
            f"{stats.SEED_AWARE_METHOD}. MDE: {stats.MDE_METHOD}; a |Δ| below it with an "
            "interval across 0 means too few seeds to see a difference of that size, not "
            "evidence of none. Paper's Δ: the published system over the other (flan-t5-xl "
            "-> t5-base), relative to that system's score, on the paper's task this one stands "
            "for (arithmetic: GSM8K), else its range over XSum, EN-NL and GSM8K. Verdict: "
            "higher / lower when the seed-aware interval excludes 0; else no difference "
            "of the paper's size when the relative MDE is at most the paper's Δ (its smallest "
            "value where a range is given), too few seeds for the paper's effect when it is "
            "above. KL is the warm start LLMR and KETCHUP train from, so their rows against it "
            "are what the on-policy phase adds. "
            f"Seed-level p: {stats.SEED_TEST_METHOD} (with n seeds never below "
            f"2 / 2^n: 0.25 for three). Example-level: {stats.METHOD}; p: {stats.TEST_METHOD}; "
            "both treat the trained seeds as fixed.",
        ],
    )
    for cell in group:
        for system, other in compared_pairs(cell):
            test = paired_test(cell.groups[system], cell.groups[other], cell.primary)
            per_seed = " / ".join(fmt(d) for d in test.get("seed_differences", []))
            one_seed = test["seeds"] < 2
            other_mean, _ = cell.groups[other].mean_std(cell.primary)
            mde = test.get("mde", math.nan)
            mde_share = 100 * mde / abs(other_mean) if other_mean else math.nan
            method = "ketchup" if system.startswith("ketchup") else system
            claimed_low, claimed_high = paper_relative_effect(cell.dataset, other, method)
            low, high = test.get("seed_ci_low", math.nan), test.get("seed_ci_high", math.nan)
            said = verdict(low, high, mde_share, claimed_low)
            table.rows.append(
                [
                    cell.task,
                    cell.primary.label,
                    _label(cell, system),
                    _label(cell, other),
                    fmt(test["difference"]),
                    per_seed or "-",
                    fmt_ci(test.get("seed_ci_low", math.nan), test.get("seed_ci_high", math.nan)),
                    fmt(mde),
                    fmt(mde_share),
                    fmt(claimed_low)
                    if claimed_low == claimed_high or math.isnan(claimed_low)
                    else f"{fmt(claimed_low)}–{fmt(claimed_high)}",
                    said,
                    "-" if one_seed else f"{test['seed_p_value']:.3f}",
                    fmt_ci(test.get("ci_low", math.nan), test.get("ci_high", math.nan)),
                    f"{test['p_value']:.4f}",
                    str(test["seeds"]),
                ]
            )
            records.append(
                {
                    "task": cell.task,
                    "student": cell.student,
                    "row": f"test:{system}_vs_{other}",
                    "system": system,
                    "metric": cell.primary.name,
                    "mean": test["difference"],
                    "std": math.nan,
                    "seeds": test["seeds"],
                    "ci_low": test.get("ci_low", math.nan),
                    "ci_high": test.get("ci_high", math.nan),
                    "validation_mean": math.nan,
                    "p_value": test["p_value"],
                    "seed_ci_low": test.get("seed_ci_low", math.nan),
                    "seed_ci_high": test.get("seed_ci_high", math.nan),
                    "mde": mde,
                    "mde_share": mde_share,
                    "paper_share_low": claimed_low,
                    "paper_share_high": claimed_high,
                    "verdict": said,
                    "seed_p_value": math.nan if one_seed else test["seed_p_value"],
                    "seed_differences": per_seed,
                    "against": other,
                }
            )
    return table


def _float(row: dict[str, str], key: str) -> float:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else math.nan


def _sequence_end_note(cell: Cell) -> str:
    ends = {
        g.config.get("sequence_end", "equations")
        for s, g in cell.groups.items()
        if s.startswith("ketchup_k")
    }
    described = {
        "equations": "the paper's equations (V(s_L) = 0: the last K-segment of a chain gets "
        "q(s_t, y_t))",
        "released": "the released code's rule (V(s_{L-1}), and the EOS step's reward in every "
        "chain)",
    }
    return (
        "Sequence end of the K-step returns: "
        + "; ".join(described[e] for e in sorted(ends) if e in described)
        + "."
    )


def k_table(
    cells: Sequence[Cell], variance: dict[tuple[str, str], list[dict[str, str]]]
) -> tuple[list[Table], list[dict[str, Any]]]:
    """Per (task, student): every K (1 = LLMR) with its metric, training return and the
    variance measurements of its trained update."""
    tables, records = [], []
    for cell in cells:
        var_rows = {
            int(r["k"]): r
            for r in variance.get((cell.task, cell.student), [])
            if r.get("baseline", "none") == "none"
        }
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
                "return / token (training)",
                "update variance (raw)",
                "inverse SNR [95% CI]",
                "cosine to K=1 [95% CI]",
                "clip binds",
            ],
            notes=[
                "Test and validation: mean ± std over seeds. Return / token: the mean K-step "
                "return per token over the training updates (mean over seeds); under the weight "
                "pi without a baseline its sign is that of the implicit entropy term pi adds, "
                "under any weight with top-k sampling that of the residual c grad log Z_K a "
                "constant in the returns adds (docs/methods.md). Variance, inverse SNR (variance "
                "/ squared norm of the mean gradient, debiased) and cosine (debiased) of the "
                "update each system applies (after the trainer's clip of the gradient norm; the "
                "raw gradient's variance in brackets), on the same rollout sets, from the first "
                "seed's KL warm start (students/<student>/grad_variance.csv; the variance table "
                "has their intervals and the raw figures); clip binds: the share of rollout sets "
                "on which the clip shrinks the gradient; * marks a mean gradient the rollout "
                "sets do not resolve.",
                _sequence_end_note(cell),
            ],
        )
        ks = sorted({1 if s == "llmr" else int(s[9:]) for s in systems} | set(var_rows))
        for k in ks:
            system = "llmr" if k == 1 else f"ketchup_k{k}"
            g = cell.groups.get(system)
            mean, std = g.mean_std(m) if g else (math.nan, math.nan)
            val_mean = g.validation() if g else math.nan
            ret = g.training("return_mean") if g else math.nan
            v = var_rows.get(k, {})
            num = {key: _float(v, key) for key in _VARIANCE_KEYS}
            flag = "" if not v or _resolved(v) else "*"
            table.rows.append(
                [
                    str(k),
                    _label(cell, system) if g else "-",
                    fmt_mean_std(mean, std),
                    fmt(val_mean),
                    fmt(ret),
                    f"{fmt_g(num['applied_variance'])} ({fmt_g(num['variance'])})",
                    f"{fmt_g(num['applied_inverse_snr'], 3)}{flag} "
                    + _ci(num, "applied_inverse_snr", general=True),
                    f"{fmt(num['applied_cosine_to_reference'], 3)}{flag} "
                    + _ci(num, "applied_cosine_to_reference", 3),
                    _percent(num["clip_binds"]),
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
                    "training_return_mean": ret,
                    **num,
                }
            )
        tables.append(table)
    return tables, records


_GRADIENT_STATISTICS = ("variance", "mean_grad_sq_norm", "inverse_snr", "cosine_to_reference")
_VARIANCE_KEYS = tuple(
    f"{prefix}{key}{suffix}"
    for prefix in ("applied_", "")
    for key in _GRADIENT_STATISTICS
    for suffix in ("", "_low", "_high")
) + tuple(
    f"{key}{suffix}" for key in ("clip_binds", "return_mean") for suffix in ("", "_low", "_high")
)


def _resolved(row: dict[str, str]) -> bool:
    """The applied update's mean gradient is resolved (a CSV without the applied columns: the
    raw one's)."""
    return row.get("applied_resolved", row.get("resolved")) in ("True", "true", "1")


def _ci(num: dict[str, float], key: str, digits: int = 2, general: bool = False) -> str:
    return fmt_ci(num[f"{key}_low"], num[f"{key}_high"], digits, general=general)


def _percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{100 * share:.0f}%"


def variance_table(
    cells: Sequence[Cell], variance: dict[tuple[str, str], list[dict[str, str]]]
) -> tuple[list[Table], list[dict[str, Any]]]:
    """Per (task, student): every policy-gradient system's measured update, with intervals."""
    tables, records = [], []
    cell_of = {(c.task, c.student): c for c in cells}
    for (task, student), rows in variance.items():
        if not rows:
            continue
        cell = cell_of.get((task, student))
        table = Table(
            f"Gradient variance of the trained update: {task}, student {student}",
            [
                "System",
                "variance [95% CI]",
                "‖mean gradient‖² [95% CI]",
                "inverse SNR [95% CI]",
                "cosine to LLMR [95% CI]",
                "clip binds [95% CI]",
                "raw variance [95% CI]",
                "raw ‖mean gradient‖² [95% CI]",
                "raw inverse SNR [95% CI]",
                "raw cosine [95% CI]",
                "return / token [95% CI]",
                "resolved",
            ],
            notes=[
                f"{rows[0]['n_rollout_sets']} rollout sets of one rollout per source (one "
                "training batch), shared by every system, from the first seed's KL warm start. "
                "The first four statistics are of the update as applied: each system's gradient "
                "as its trainer computes it (weight, normalisation, clip of the advantages, "
                "baseline, finished share of the config), then clipped to the global norm "
                f"{rows[0].get('grad_clip') or 'grad_clip'} as the trainer clips it before the "
                "optimizer; clip binds: the share of rollout sets on which that clip shrinks the "
                "gradient. Raw: the same statistics of the gradient before the norm clip. "
                "Variance: trace of the covariance over rollout sets (unbiased). ‖mean "
                "gradient‖²: without the finite-sample bias tr(Σ)/M. Inverse SNR: their ratio "
                "(scale-free). Cosine: of the mean gradients, debiased the same way. Return / "
                "token: the mean return of the rollouts at the warm start. CIs: percentile "
                "bootstrap over rollout sets, 2000 resamples. Resolved: the applied update's "
                "squared norm has its interval above 0 (otherwise more rollout sets are needed "
                "before its ratio and cosine mean anything).",
            ],
        )
        for r in rows:
            num = {key: _float(r, key) for key in _VARIANCE_KEYS}
            label = _label(cell, r["system"]) if cell else system_label(r["system"])
            resolved = _resolved(r)
            statistics = []
            for prefix in ("applied_", ""):
                statistics += [
                    fmt_g(num[f"{prefix}variance"])
                    + " "
                    + _ci(num, f"{prefix}variance", general=True),
                    fmt_g(num[f"{prefix}mean_grad_sq_norm"])
                    + " "
                    + _ci(num, f"{prefix}mean_grad_sq_norm", general=True),
                    fmt_g(num[f"{prefix}inverse_snr"], 3)
                    + " "
                    + _ci(num, f"{prefix}inverse_snr", general=True),
                    fmt(num[f"{prefix}cosine_to_reference"], 3)
                    + " "
                    + _ci(num, f"{prefix}cosine_to_reference", 3),
                ]
                if prefix:
                    share = _percent(num["clip_binds"])
                    low, high = _percent(num["clip_binds_low"]), _percent(num["clip_binds_high"])
                    statistics.append(f"{share} [{low}, {high}]")
            table.rows.append(
                [
                    label,
                    *statistics,
                    fmt(num["return_mean"]) + " " + _ci(num, "return_mean"),
                    "yes" if resolved else "no",
                ]
            )
            records.append(
                {"task": task, "student": student, "system": r["system"], "resolved": resolved}
                | num
            )
        tables.append(table)
    return tables, records


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
                    _label(cell, system),
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
        table.notes += [
            "Ours: mean over seeds with this study's teacher and student, which may differ from "
            "the paper's flan-t5-xl -> t5-base.",
            "The paper's LLMR + min-var is, in its released code, the mean baseline: its "
            "minimum-variance weights come out all 1 (`lprobs.grad` after "
            "`lprobs.backward(ones)`), and that backward also adds the gradient of sum log pi to "
            "the update. Ours is the minimiser for the weight in use (docs/methods.md).",
        ]
    return table, records


def provenance_table(cells: Sequence[Cell]) -> tuple[Table, list[dict[str, Any]]]:
    """Where and with what each task's models were trained: one row per distinct setup."""
    table = Table(
        "Provenance: where the models of this study were trained",
        ["Task", "Student", "Jobs", "Setup"],
        notes=[
            "Read from each model's resolved config. Floating-point kernels differ across "
            "processors and library versions, so a single seed's scores move with the setup."
        ],
    )
    records = []
    for cell in cells:
        setups: dict[str, int] = {}
        for group in cell.groups.values():
            for run in group.runs:
                record = (run.summary.get("training") or {}).get("provenance")
                key = describe(record) if record else "not recorded"
                setups[key] = setups.get(key, 0) + 1
        for setup, count in setups.items():
            table.rows.append([cell.task, cell.student or "-", str(count), setup])
            records.append(
                {"task": cell.task, "student": cell.student, "jobs": count, "setup": setup}
            )
    return table, records


def sizes_table(cells: Sequence[Cell]) -> tuple[Table, list[dict[str, Any]]]:
    """KETCHUP (best K) against LLMR per student size, per task: the paper's third claim."""
    table = Table(
        "KETCHUP's gain over LLMR by student size (test split)",
        [
            "Task",
            "Student",
            "Parameters",
            "KETCHUP",
            "KETCHUP test",
            "LLMR test",
            "Δ",
            "seed-aware 95% CI",
            "MDE (80% power)",
            "seed-level p",
            "Seeds",
        ],
        notes=[
            f"Δ: difference of the seed means; CI: {stats.SEED_AWARE_METHOD}; MDE: "
            f"{stats.MDE_METHOD}; p: {stats.SEED_TEST_METHOD}. KETCHUP's K is chosen per student "
            "by validation."
        ],
    )
    records = []
    for cell in sorted(cells, key=lambda c: (c.task, _parameters(c))):
        best = cell.best_k_system()
        if best is None or "llmr" not in cell.groups:
            continue
        a, b = cell.groups[best], cell.groups["llmr"]
        test = paired_test(a, b, cell.primary)
        one_seed = test["seeds"] < 2
        table.rows.append(
            [
                cell.task,
                cell.student or "-",
                f"{_parameters(cell):,}",
                f"K={best[9:]}",
                fmt_mean_std(*a.mean_std(cell.primary)),
                fmt_mean_std(*b.mean_std(cell.primary)),
                fmt(test["difference"]),
                fmt_ci(test.get("seed_ci_low", math.nan), test.get("seed_ci_high", math.nan)),
                fmt(test.get("mde", math.nan)),
                "-" if one_seed else f"{test['seed_p_value']:.3f}",
                str(test["seeds"]),
            ]
        )
        records.append(
            {
                "task": cell.task,
                "student": cell.student,
                "parameters": _parameters(cell),
                "system": best,
                "metric": cell.primary.name,
                "difference": test["difference"],
                "seed_ci_low": test.get("seed_ci_low", math.nan),
                "seed_ci_high": test.get("seed_ci_high", math.nan),
                "mde": test.get("mde", math.nan),
                "seed_p_value": math.nan if one_seed else test["seed_p_value"],
                "seeds": test["seeds"],
            }
        )
    if len({c.student for c in cells}) < 2:
        table.notes.append(
            "One student size in this study: configs/sizes.yaml runs several "
            "(`--configfile config.yaml configs/sizes.yaml`)."
        )
    return table, records


def _parameters(cell: Cell) -> int:
    for name, group in cell.groups.items():
        if name != "teacher":
            for run in group.runs:
                if run.summary.get("parameters"):
                    return int(run.summary["parameters"])
    return 0
