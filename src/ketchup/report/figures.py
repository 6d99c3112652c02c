"""The paper's figures from the scored runs, as PNG and SVG (matplotlib, no display needed).

Each figure is drawn to be read at 800 px wide: about five lines per panel at most, Okabe and
Ito's colour-blind-safe palette with a dash pattern and a marker of its own for every line, error
bars whose legend says what they cover, and value axes that start where the data do.

metric_vs_k                test metric against K (log2 axis), K = 1 (LLMR) first: the mean over
                           seeds with its seed-aware 95% CI (seeds, shared test examples) as bars,
                           each seed a dot; the best non-RL baseline as a line and band
grad_variance              the applied (norm-clipped) update's variance, inverse SNR and cosine to
                           LLMR against K, with bootstrap CIs over rollout sets, the raw
                           gradient's beside it (Theorem 1, measured)
training_curves_k          LLMR and KETCHUP at each K against update step (mean over seeds):
                           validation metric, mean return per token, rollout length, clipped share
training_curves_baselines  the other on-policy systems in two columns, LLMR in both: its baselines
                           and MiniLLM (policy gradient), and JS, TVD, GKD (divergences)
methods                    every system's test metric as a dot with its seed-aware 95% CI, each
                           seed a tick, the teacher a line; the axis does not start at 0
gain_vs_size               KETCHUP (best K) minus LLMR against student size (several students only)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ketchup.report.results import Cell, system_label

# policy-gradient methods (squares in the method comparison)
RL_METHODS = ("llmr", "llmr_mean", "llmr_minvar", "ketchup", "minillm")
# training_curves_baselines' columns; LLMR heads both, as the reference the others are read against
POLICY_GRADIENT_BASELINES = ("llmr", "llmr_mean", "llmr_minvar", "minillm")
DIVERGENCE_BASELINES = ("js", "tvd", "gkd")
KINDS = (
    "metric_vs_k",
    "grad_variance",
    "training_curves_k",
    "training_curves_baselines",
    "methods",
)
STUDY_KINDS = ("gain_vs_size",)
# the methods a figure needs in the study's `distill.methods` (one of them); others always drawn
NEEDS = {
    "metric_vs_k": ("ketchup",),
    "grad_variance": ("ketchup",),
    "training_curves_k": ("ketchup",),
    "training_curves_baselines": POLICY_GRADIENT_BASELINES[1:] + DIVERGENCE_BASELINES,
}

# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies: black first
# (LLMR in every figure), yellow last (faint on white). Dashes and markers tell lines apart in
# grey print too.
PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
DASHES = (
    "-",
    "--",
    "-.",
    ":",
    (0, (6, 2, 1, 2, 1, 2)),
    (0, (1, 1)),
    (0, (8, 3)),
    (0, (3, 1, 3, 4)),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BLUE, VERMILLION, GREEN = PALETTE[4], PALETTE[5], PALETTE[3]


def kinds_for(methods: Sequence[str]) -> list[str]:
    """The per-student figures a study with these `distill.methods` draws."""
    return [k for k in KINDS if k not in NEEDS or any(m in methods for m in NEEDS[k])]


def line_style(i: int) -> dict:
    """Colour, dash pattern and marker of the i-th line of a panel."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "ls": DASHES[i % len(DASHES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def ci_label(n_seeds: int) -> str:
    """What a system's 95% interval covers (results.Group.ci)."""
    if n_seeds > 1:
        return "95% CI over seeds and test examples (t over seeds, shared example bootstrap)"
    return "95% CI: bootstrap over test examples (one seed: no seed spread)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "legend.fontsize": 9,
            "axes.titlesize": 10,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "svg.hashsalt": "0",
        }
    )
    return plt


def save(fig, stem: Path) -> list[Path]:
    """Write stem.png (150 dpi) and stem.svg, atomically; returns the paths."""
    from ketchup.files import atomic_path

    paths = []
    for ext, kwargs in (("png", {"dpi": 150}), ("svg", {"metadata": {"Date": None}})):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", **kwargs)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _k_of(system: str) -> int:
    return 1 if system == "llmr" else int(system[len("ketchup_k") :])


def _seeds_text(n_seeds: int) -> str:
    return "one seed" if n_seeds == 1 else f"mean over {n_seeds} seeds"


def _metric_label(metric) -> str:
    return f"test {metric.label}" + (
        " (lower is better)" if metric.higher_is_better is False else ""
    )


def metric_vs_k(cell: Cell):
    """Test metric against K, K = 1 (LLMR) the first point: the mean over seeds with its
    seed-aware 95% interval (seeds and shared test examples) as error bars, each seed as a dot, and
    the best non-RL baseline as a reference line with its interval as a band."""
    plt = _pyplot()
    m = cell.primary
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    systems = (["llmr"] if "llmr" in cell.groups else []) + cell.ketchup_systems()
    ks = [_k_of(s) for s in systems]
    cis = [cell.groups[s].ci(m) for s in systems]
    n_seeds = max((len(cell.groups[s].runs) for s in systems), default=0)
    means = np.array([c[0] for c in cis])
    errors = np.array([[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]])
    ax.errorbar(
        ks,
        means,
        yerr=errors,
        fmt="o-",
        color=BLUE,
        lw=1.8,
        capsize=4,
        label=f"{_seeds_text(n_seeds)}; bars: {ci_label(n_seeds)}",
    )
    if systems and systems[0] == "llmr":
        ax.plot([1], [means[0]], "s", color=PALETTE[0], ms=8, label="K = 1: LLMR", zorder=3)
    for i, (k, s) in enumerate(zip(ks, systems, strict=True)):
        vals = cell.groups[s].values(m)
        if len(vals) > 1:
            ax.plot(
                [k * 1.07] * len(vals),  # beside the bar, not on it (log axis: a ratio)
                vals,
                "o",
                mfc="none",
                mec=BLUE,
                ms=4,
                alpha=0.8,
                label="each seed (the seed-to-seed spread)" if i == 0 else None,
            )
    base = cell.best_baseline()
    if base and base in cell.groups:
        mean, lo, hi = cell.groups[base].ci(m)
        ax.axhline(
            mean,
            color=GREEN,
            ls=":",
            lw=1.8,
            label=f"best non-RL baseline: {cell.groups[base].label}; band: its 95% CI",
        )
        ax.axhspan(lo, hi, color=GREEN, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K, steps of the Bellman optimality equation (K = 1 is LLMR)")
    ax.set_ylabel(_metric_label(m))
    ax.set_title(f"{cell.task}, student {cell.student}: test {m.label} against K")
    from matplotlib.container import ErrorbarContainer

    handles, names = ax.get_legend_handles_labels()
    first = next(i for i, h in enumerate(handles) if isinstance(h, ErrorbarContainer))
    order = [first, *(i for i in range(len(names)) if i != first)]  # the bars' entry first
    ax.legend(
        [handles[i] for i in order],
        [names[i] for i in order],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.17),
        frameon=False,
    )
    return fig


def _plain_log_labels():
    """Labels of a log axis as plain numbers (0.05, not 5e-02), the ticks between powers of ten
    labelled too when the data span less than a decade or so (matplotlib's choice of which)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    return Plain(labelOnlyBase=False, minor_thresholds=(1.5, 0.6))


def grad_variance(cell: Cell, rows: Sequence[dict[str, str]]):
    """The update as applied (after the trainer's clip of the gradient norm): its variance,
    inverse SNR and cosine to LLMR against K, with bootstrap 95% intervals over rollout sets;
    LLMR's baselines as extra markers beside K = 1; the raw gradient's values (before the clip)
    as a grey dashed line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    panels = (
        ("variance", "variance of the update\n(trace of covariance)", True),
        ("inverse_snr", "inverse SNR (variance /\n|mean gradient|², debiased)", True),
        ("cosine_to_reference", "cosine of the mean gradient\nto LLMR's (debiased)", False),
    )
    plain = [r for r in rows if r.get("baseline", "none") == "none"]
    ks = [int(r["k"]) for r in plain]
    extra = [r for r in rows if r.get("baseline", "none") != "none"]
    applied = "applied_" if rows and "applied_variance" in rows[0] else ""
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        shown = applied + key
        y = np.array([float(r[shown]) for r in plain])
        lo = np.array([float(r[f"{shown}_low"]) for r in plain])
        hi = np.array([float(r[f"{shown}_high"]) for r in plain])
        ax.errorbar(
            ks,
            y,
            yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)],
            fmt="o-",
            color=BLUE,
            capsize=3,
            label="LLMR (K = 1), KETCHUP (K > 1)",
        )
        if applied:
            raw = [float(r[key]) for r in plain]
            ax.plot(ks, raw, "s--", color="0.55", mfc="none", label="raw gradient (before clip)")
        for j, r in enumerate(extra):
            v = float(r[shown])
            err = [[max(v - float(r[f"{shown}_low"]), 0)], [max(float(r[f"{shown}_high"]) - v, 0)]]
            style = line_style(j + 1)
            ax.errorbar(
                [1.15 + 0.15 * j],
                [v],
                yerr=err,
                fmt=style["marker"],
                color=style["color"],
                capsize=3,
                label=system_label(r["system"]) + " (at K = 1)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_plain_log_labels())
            ax.yaxis.set_minor_formatter(_plain_log_labels())
        ax.set_xlabel("K")
        ax.set_title(label + (", log scale" if log else ""), fontsize=9)
    handles, names = axes[0].get_legend_handles_labels()
    n = rows[0]["n_rollout_sets"] if rows else "?"
    what = "the update as applied (norm-clipped)" if applied else "the trained update"
    fig.suptitle(f"{cell.task}, student {cell.student}: {what} on {n} shared rollout sets")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(3, len(names)),
        frameon=False,
        title="bars: 95% CI, bootstrap over rollout sets",
        title_fontsize=9,
    )
    return fig


# Panels of the training curves: the validation score (eval rows of log.jsonl) and fields of its
# train rows, each with its axis label. Train rows are smoothed (10-update moving average).
PANELS = {
    "score": "validation {metric}\n(step 0: the KL warm start)",
    "return_mean": "mean return per token\n(each method's own return)",
    "rollout_length": "rollout length, tokens",
    "clipped_share": "share of clipped advantages",
    "divergence": "divergence (each method's loss)",
}
SMOOTHING = 10
SMOOTHING_NOTE = (
    f"(validation at every evaluation; the other panels: moving averages over {SMOOTHING} "
    "updates, raw for shorter runs)"
)


def _log_path(run) -> Path | None:
    model = run.summary.get("model")
    return Path(model).parent / "log.jsonl" if model else None


def _curves(cell: Cell, system: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean over seeds of the validation score (eval rows) and of each other PANELS field
    (train rows): {field: (steps, values)}."""
    per_seed: dict[str, list[dict[int, float]]] = {key: [] for key in PANELS}
    for run in cell.groups[system].runs:
        path = _log_path(run)
        if path is None or not path.is_file():
            continue
        series: dict[str, dict[int, float]] = {key: {} for key in per_seed}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in per_seed:
                if key in row and (key == "score") == (row["kind"] == "eval"):
                    series[key][row["step"]] = float(row[key])
        for key in per_seed:
            if series[key]:
                per_seed[key].append(series[key])
    curves = {}
    for key, seeds in per_seed.items():
        steps = sorted(set.intersection(*(set(s) for s in seeds))) if seeds else []
        if steps:
            y = np.array([[s[t] for t in steps] for s in seeds]).mean(axis=0)
            curves[key] = (np.array(steps), y if key == "score" else _smooth(y))
    return curves


def _smooth(y: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
    if len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window - 1, 0), mode="edge"), kernel, mode="valid")


def _curve_panel(ax, curves, styles, key: str, metric_label: str) -> None:
    """One field of every system that logged it; a note where none did."""
    drawn = False
    for system, style in styles.items():
        if key in curves.get(system, {}):
            x, y = curves[system][key]
            every = 1 if key == "score" else max(1, len(x) // 6)
            ax.plot(x, y, ms=4, markevery=every, lw=1.5, label=system, **style)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="0.4")
    ax.set_ylabel(PANELS[key].format(metric=metric_label), fontsize=9)


def _curve_styles(cell: Cell, systems: Sequence[str], order: Sequence[str]) -> dict[str, dict]:
    """{system: style} for the systems of `systems` the cell has; a system's style is fixed by
    its place in `order`, so a system looks the same in every panel of a figure."""
    return {s: line_style(order.index(s)) for s in systems if s in cell.groups}


def _curve_handles(cell: Cell, styles: dict[str, dict]) -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], lw=1.5, ms=4, **style) for style in styles.values()]
    return handles, [cell.groups[s].label for s in styles]


def training_curves_k(cell: Cell):
    """LLMR and KETCHUP at every K of the grid: validation metric, mean return per token,
    rollout length and clipped share against update step, mean over seeds."""
    plt = _pyplot()
    order = ["llmr", *cell.ketchup_systems()]
    styles = _curve_styles(cell, order, order)
    curves = {s: _curves(cell, s) for s in styles}
    fig, axes = plt.subplots(2, 2, figsize=(8, 6.4), sharex=True)
    keys = ("score", "return_mean", "rollout_length", "clipped_share")
    for ax, key in zip(axes.flat, keys, strict=True):
        _curve_panel(ax, curves, styles, key, cell.primary.label)
    for ax in axes[1]:
        ax.set_xlabel("update step")
    fig.suptitle(
        f"{cell.task}, student {cell.student}: LLMR and KETCHUP from the KL warm start, "
        f"mean over seeds\n{SMOOTHING_NOTE}",
    )
    fig.tight_layout()  # below the title; then room for the legend between the two
    top = fig.subplotpars.top - 0.05
    fig.subplots_adjust(top=top)
    fig.legend(
        *_curve_handles(cell, styles),
        loc="lower center",
        bbox_to_anchor=(0.5, top + 0.005),
        ncol=min(5, len(styles)),
        frameon=False,
    )
    return fig


def training_curves_baselines(cell: Cell):
    """The other on-policy systems in two columns, LLMR heading both: its baselines and MiniLLM
    (validation metric, rollout length, mean return, clipped share) and the divergences on
    student samples, JS, TVD, GKD (validation metric, rollout length, divergence)."""
    plt = _pyplot()
    order = [*POLICY_GRADIENT_BASELINES, *DIVERGENCE_BASELINES]
    columns = (
        (
            "policy gradient: LLMR's baselines, MiniLLM",
            POLICY_GRADIENT_BASELINES,
            ("score", "rollout_length", "return_mean", "clipped_share"),
        ),
        (
            "divergences on student samples (LLMR for reference)",
            ("llmr", *DIVERGENCE_BASELINES),
            ("score", "rollout_length", "divergence"),
        ),
    )
    fig, axes = plt.subplots(4, 2, figsize=(8.5, 10.5), sharex=True)
    for j, (title, systems, keys) in enumerate(columns):
        styles = _curve_styles(cell, systems, order)
        curves = {s: _curves(cell, s) for s in styles}
        for i, key in enumerate(keys):
            _curve_panel(axes[i, j], curves, styles, key, cell.primary.label)
        axes[len(keys) - 1, j].set_xlabel("update step")
        axes[len(keys) - 1, j].xaxis.set_tick_params(labelbottom=True)
        for i in range(len(keys), len(axes)):
            axes[i, j].set_visible(False)
        axes[0, j].legend(
            *_curve_handles(cell, styles),
            title=title,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.02),
            ncol=2,
            frameon=False,
            title_fontsize=9,
        )
    for i in (0, 1):  # the same quantity in both columns: one scale, labelled once
        axes[i, 1].sharey(axes[i, 0])
        axes[i, 1].set_ylabel("")
    fig.suptitle(
        f"{cell.task}, student {cell.student}: the other on-policy systems from the KL warm "
        f"start, mean over seeds\n{SMOOTHING_NOTE}"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def methods(cell: Cell):
    """Every system's test metric: a dot at the mean over seeds with its 95% interval, each seed
    a tick below it, the teacher a line; RL methods as squares. The value axis spans the data
    (it does not start at 0), so differences between systems stay visible."""
    plt = _pyplot()
    m = cell.primary
    rows = [(method, system) for method, system in cell.table_systems() if method != "teacher"]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 2.0))
    y = np.arange(len(rows))[::-1]  # the paper's order from the top
    n_seeds = max((len(cell.groups[s].runs) for _, s in rows), default=0)
    lows, highs = [], []
    for i, (method, system) in enumerate(rows):
        mean, lo, hi = cell.groups[system].ci(m)
        lows.append(lo)
        highs.append(hi)
        rl = method in RL_METHODS
        ax.errorbar(
            [mean],
            [y[i]],
            xerr=[[mean - lo], [hi - mean]],
            fmt="s" if rl else "o",
            color=VERMILLION if rl else BLUE,
            ms=7,
            capsize=4,
            lw=1.6,
            label=("policy-gradient (RL) method" if rl else "non-RL method")
            + f", {_seeds_text(n_seeds)}",
        )
        values = cell.groups[system].values(m)
        if len(values) > 1:
            ax.plot(
                values,
                [y[i] - 0.28] * len(values),
                "|",
                ms=8,
                mew=1.5,
                color="0.35",
                label="each seed (the seed-to-seed spread)",
            )
    span = max(highs) - min(lows) if rows else 1.0
    left, right = min(lows, default=0) - 0.08 * span, max(highs, default=1) + 0.08 * span
    if "teacher" in cell.groups:
        teacher = cell.groups["teacher"].mean_std(m)[0]
        if left - 0.5 * span <= teacher <= right + 0.5 * span:
            ax.axvline(teacher, color=PALETTE[0], ls="--", lw=1.2, label="teacher")
            left, right = min(left, teacher - 0.03 * span), max(right, teacher + 0.03 * span)
        else:  # far off: named at the edge instead of squeezing the systems together
            edge = right if teacher > right else left
            ax.annotate(
                f"teacher: {teacher:.2f} {'→' if teacher > right else '←'}",
                (edge, y[0] + 0.5),
                ha="right" if teacher > right else "left",
                va="bottom",
                fontsize=9,
            )
    ax.set_xlim(left, right)
    zero = " (the axis does not start at 0)" if left > 0 or right < 0 else ""
    ax.set_ylim(-0.7, len(rows) - 0.2)
    ax.set_yticks(y, [cell.groups[s].label for _, s in rows])
    ax.set_xlabel(_metric_label(m) + zero)
    ax.set_title(f"{cell.task}, student {cell.student}: test {m.label} of every system")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax.legend(
        unique.values(),
        unique.keys(),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        frameon=False,
        title=f"bars: {ci_label(n_seeds)}",
        title_fontsize=9,
    )
    fig.tight_layout()
    return fig


def gain_vs_size(cells: Sequence[Cell], parameters: dict[str, int]):
    """KETCHUP (best K) minus LLMR per student of one task, `parameters` by student name: the
    difference of seed means with its seed-aware 95% CI (a t-interval over seeds with the shared
    test examples' variance added, `results.paired_test`)."""
    from ketchup.report.results import paired_test

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for cell in cells:
        best = cell.best_k_system()
        if best is None or "llmr" not in cell.groups or not parameters.get(cell.student):
            continue
        test = paired_test(cell.groups[best], cell.groups["llmr"], cell.primary)
        n, d = parameters[cell.student], test["difference"]
        lo, hi = test.get("seed_ci_low", d), test.get("seed_ci_high", d)
        ax.errorbar([n], [d], yerr=[[d - lo], [hi - d]], fmt="o", capsize=3, color=BLUE)
        ax.annotate(
            f"{cell.student} (K={best[9:]})",
            (n, d),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(0, color="black", lw=0.8)
    if ax.lines[:-1]:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(
            0.5,
            0.6,
            "no student with KETCHUP, LLMR and a parameter count",
            transform=ax.transAxes,
            ha="center",
        )
    ax.set_xlabel("student parameters")
    m = cells[0].primary
    ax.set_ylabel(f"KETCHUP − LLMR, test {m.label}")
    ax.set_title(
        f"{cells[0].task}: gain over LLMR by student size\n(difference of seed means; 95% CI over "
        "seeds and test examples)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def judge_win_rates(rows: Sequence[dict[str, str]], title: str):
    """Stacked win / tie / loss bars per judged pair (A against B, both orders combined)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(rows) + 1.6))
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    colors = {"win": GREEN, "tie": "0.8", "loss": VERMILLION}
    for outcome, color in colors.items():
        rates = np.array([float(r[f"{outcome}_rate"] or "nan") for r in rows])
        ax.barh(y, rates, left=left, color=color, label=outcome)
        if outcome == "win":
            lo = np.array([float(r["win_ci_low"] or "nan") for r in rows])
            hi = np.array([float(r["win_ci_high"] or "nan") for r in rows])
            ax.errorbar(
                rates, y, xerr=[rates - lo, hi - rates], fmt="none", ecolor="black", capsize=3
            )
        left += np.nan_to_num(rates)
    ax.set_yticks(
        y,
        [f"{system_label(r['system_a'])}\nvs {system_label(r['system_b'])}" for r in rows],
        fontsize=8,
    )
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="black", lw=0.6, ls=":")
    ax.set_xlabel("share of examples (A's win with its 95% CI)")
    ax.legend(ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title(f"{title}: LLM judge, pairwise (both orders)", fontsize=10)
    fig.tight_layout()
    return fig
