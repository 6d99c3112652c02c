"""The paper's figures from the scored runs, as PNG and SVG (matplotlib, no display needed).

metric_vs_k      test metric against K (log2 axis), K = 1 (LLMR) first: mean over seeds with its
                 hierarchical 95% CI, each seed as a dot; the best non-RL baseline as a band
grad_variance    the trained update's variance, inverse SNR and cosine to LLMR against K, with
                 bootstrap CIs over rollout sets (Theorem 1, measured)
training_curves  validation metric, mean return and rollout length against update step, one
                 line per on-policy system (mean over seeds)
methods          every system's test metric with its bootstrap 95% CI, the teacher as a line
gain_vs_size     KETCHUP (best K) minus LLMR against student size (several students only)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ketchup.results import Cell, system_label

# policy-gradient methods (red in the method comparison)
RL_METHODS = ("llmr", "llmr_mean", "llmr_minvar", "ketchup", "minillm")
KINDS = ("metric_vs_k", "grad_variance", "training_curves", "methods")
STUDY_KINDS = ("gain_vs_size",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "0"}
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


def metric_vs_k(cell: Cell):
    """Test metric against K, K = 1 (LLMR) the first point: the mean over seeds with its
    hierarchical 95% interval (seeds and test examples) as error bars, each seed as a dot, and
    the best non-RL baseline as a reference band."""
    plt = _pyplot()
    m = cell.primary
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    systems = (["llmr"] if "llmr" in cell.groups else []) + cell.ketchup_systems()
    ks = [_k_of(s) for s in systems]
    cis = [cell.groups[s].ci(m) for s in systems]
    n_seeds = max((len(cell.groups[s].runs) for s in systems), default=0)
    means = np.array([c[0] for c in cis])
    errors = np.array([[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]])
    covers = "seeds and test examples" if n_seeds > 1 else "test examples only: one seed"
    ax.errorbar(
        ks,
        means,
        yerr=errors,
        fmt="o-",
        color="C0",
        capsize=3,
        label=f"mean of {n_seeds} seed(s), 95% CI over {covers}",
    )
    if systems and systems[0] == "llmr":
        ax.plot([1], [means[0]], "s", color="C3", ms=8, label="K = 1: LLMR", zorder=3)
    for i, (k, s) in enumerate(zip(ks, systems, strict=True)):
        vals = cell.groups[s].values(m)
        if len(vals) > 1:
            ax.plot(
                [k] * len(vals),
                vals,
                ".",
                color="C0",
                alpha=0.5,
                label="each seed" if i == 0 else None,
            )
    base = cell.best_baseline()
    if base and base in cell.groups:
        mean, lo, hi = cell.groups[base].ci(m)
        ax.axhline(
            mean, color="C2", ls=":", label=f"best non-RL baseline: {cell.groups[base].label}"
        )
        ax.axhspan(lo, hi, color="C2", alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (steps of the Bellman optimality equation; K = 1 is LLMR)")
    ax.set_ylabel(f"test {m.label}" + (" (lower is better)" if m.higher_is_better is False else ""))
    ax.set_title(f"{cell.task}, student {cell.student}: test {m.label} against K", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return fig


def grad_variance(cell: Cell, rows: Sequence[dict[str, str]]):
    """The trained update's variance, inverse SNR and cosine to LLMR against K, with bootstrap
    95% intervals over rollout sets; LLMR's baselines as extra markers at K = 1."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
    panels = (
        ("variance", "variance of the update\n(trace of covariance, log)", True),
        ("inverse_snr", "inverse SNR (variance /\n|mean gradient|², debiased, log)", True),
        ("cosine_to_reference", "cosine of the mean gradient\nto LLMR's (debiased)", False),
    )
    plain = [r for r in rows if r.get("baseline", "none") == "none"]
    ks = [int(r["k"]) for r in plain]
    extra = [r for r in rows if r.get("baseline", "none") != "none"]
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        y = np.array([float(r[key]) for r in plain])
        lo = np.array([float(r[f"{key}_low"]) for r in plain])
        hi = np.array([float(r[f"{key}_high"]) for r in plain])
        ax.errorbar(
            ks,
            y,
            yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)],
            fmt="o-",
            color="C0",
            capsize=3,
            label="LLMR (K = 1) and KETCHUP",
        )
        for j, r in enumerate(extra):
            v = float(r[key])
            err = [[max(v - float(r[f"{key}_low"]), 0)], [max(float(r[f"{key}_high"]) - v, 0)]]
            ax.errorbar(
                [1.0 * (1.15 + 0.15 * j)],
                [v],
                yerr=err,
                fmt="^s"[j % 2],
                color=f"C{j + 1}",
                capsize=3,
                label=system_label(r["system"]),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel(label, fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    n = rows[0]["n_rollout_sets"] if rows else "?"
    fig.suptitle(
        f"{cell.task}, student {cell.student}: the trained update on {n} shared rollout sets "
        "(95% CI: bootstrap over sets)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# training_curves' panels after the validation score: fields of log.jsonl's train rows
TRAINING_KEYS = ("return_mean", "rollout_length", "clipped_share")


def _log_path(run) -> Path | None:
    model = run.summary.get("model")
    return Path(model).parent / "log.jsonl" if model else None


def _curves(cell: Cell, system: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean over seeds of validation score (eval rows) and of each TRAINING_KEYS (train rows)."""
    per_seed: dict[str, list[dict[int, float]]] = {key: [] for key in ("score", *TRAINING_KEYS)}
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
        if not seeds:
            continue
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        y = np.array([[s[t] for t in steps] for s in seeds]).mean(axis=0)
        curves[key] = (np.array(steps), y)
    return curves


def _smooth(y: np.ndarray, window: int = 10) -> np.ndarray:
    if len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window - 1, 0), mode="edge"), kernel, mode="valid")


def training_curves(cell: Cell, on_policy: Sequence[str]):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    colors = plt.get_cmap("tab20").colors
    drawn = False
    for i, system in enumerate(s for s in cell.groups if s in on_policy):
        curves = _curves(cell, system)
        style = {"color": colors[(2 * i) % 20 + (2 * i) // 20], "label": system_label(system)}
        keys = ("score", *TRAINING_KEYS)
        for ax, key in zip(axes, keys, strict=True):
            if key in curves:
                x, y = curves[key]
                ax.plot(
                    x,
                    y if key == "score" else _smooth(y),
                    marker="o" if key == "score" else None,
                    ms=3,
                    **style,
                )
                drawn = True
    labels = (
        f"validation {cell.primary.label}\n(step 0: the KL warm start)",
        "mean return per token\n(each method's own return; 10-update average)",
        "rollout length, tokens\n(10-update average)",
        "share of clipped advantages\n(policy-gradient methods; 10-update average)",
    )
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xlabel("update step")
        ax.set_ylabel(label, fontsize=9)
    fig.suptitle(
        f"{cell.task}, student {cell.student}: on-policy training from the KL warm start, "
        "mean over seeds",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    if drawn:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8)
    return fig


def methods(cell: Cell):
    plt = _pyplot()
    m = cell.primary
    rows = [(method, system) for method, system in cell.table_systems() if method != "teacher"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 1.5), 4))
    cis = [cell.groups[s].ci(m) for _, s in rows]
    x = np.arange(len(rows))
    colors = ["C3" if method in RL_METHODS else "C0" for method, _ in rows]
    ax.bar(x, [c[0] for c in cis], color=colors, alpha=0.8)
    ax.errorbar(
        x,
        [c[0] for c in cis],
        yerr=[[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]],
        fmt="none",
        ecolor="black",
        capsize=3,
        label="95% CI over test examples",
    )
    for i, (_, system) in enumerate(rows):
        values = cell.groups[system].values(m)
        ax.plot(
            [i] * len(values),
            values,
            "o",
            ms=3,
            color="black",
            alpha=0.6,
            label="each seed" if i == 0 else None,
        )
    if "teacher" in cell.groups:
        ax.axhline(cell.groups["teacher"].mean_std(m)[0], color="black", ls="--", label="teacher")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(x, [system_label(s) for _, s in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"test {m.label}" + (" (lower is better)" if m.higher_is_better is False else ""))
    ax.set_title(
        f"{cell.task}, student {cell.student}: test {m.label}, mean over seeds (red: RL methods)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def gain_vs_size(cells: Sequence[Cell], parameters: dict[str, int]):
    """KETCHUP (best K) minus LLMR per student of one task, `parameters` by student name: the
    difference of seed means with its seed-aware 95% CI (hierarchical bootstrap over seeds and
    test examples, `results.paired_test`)."""
    from ketchup.results import paired_test

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for cell in cells:
        best = cell.best_k_system()
        if best is None or "llmr" not in cell.groups or not parameters.get(cell.student):
            continue
        test = paired_test(cell.groups[best], cell.groups["llmr"], cell.primary)
        n, d = parameters[cell.student], test["difference"]
        lo, hi = test.get("seed_ci_low", d), test.get("seed_ci_high", d)
        ax.errorbar([n], [d], yerr=[[d - lo], [hi - d]], fmt="o", capsize=3, color="C0")
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
    colors = {"win": "C2", "tie": "0.75", "loss": "C3"}
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
