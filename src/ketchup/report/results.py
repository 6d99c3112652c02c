"""The study's results, read back from `ketchup score` files: runs grouped by task, student and
system, seed statistics, bootstrap intervals, paired tests, and the selections the paper makes
(KETCHUP's best K and the best non-RL baseline, both by validation score, never by test score).

No plotting and no rendering here: tables.py and figures.py turn these numbers into files.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ketchup.config import Method
from ketchup.evaluate.scoring import METRICS, Metric
from ketchup.files import read_csv
from ketchup.math import stats

TEACHER = "teacher"
# The paper's main-table order (the config's method order); KETCHUP stands for its best K.
TABLE_ORDER = (TEACHER, *typing.get_args(Method))
# Each row says what ran: where a method departs from its reference, the label says how
# (docs/methods.md gives every equation, reference and difference).
LABELS = {
    "teacher": "Teacher",
    "sft": "Student, no distillation (SFT)",
    "seqkd": "SeqKD",
    "kl": "KL",
    "js": "JS (f-distill)",
    "tvd": "TVD (f-distill)",
    "llmr": "LLMR",
    "llmr_mean": "LLMR + mean",
    "llmr_minvar": "LLMR + min-var",
    "ketchup": "KETCHUP",
    "gkd": "GKD",
    "minillm": "MiniLLM (no PT loss)",
}
# The paper's non-RL baselines: KETCHUP is tested against the best of them (by validation).
NON_RL_BASELINES = ("seqkd", "kl", "js", "tvd")
VALUE_LABELS = {"max": "max value", "soft": "soft value"}


def system_label(system: str, config: dict[str, Any] | None = None) -> str:
    """The row label of a system; with its job config (`distill` keys as trained), the settings
    that name a variant: the state value of the LLMR rows, and KETCHUP's value (when not its
    default max) and sequence end (when the released code's)."""
    config = config or {}
    if system.startswith("ketchup_k"):
        details = [f"K={system[len('ketchup_k') :]}"]
        if config.get("value") == "soft":
            details.append(VALUE_LABELS["soft"])
        if config.get("sequence_end") == "released":
            details.append("released end")
        return f"KETCHUP ({', '.join(details)})"
    label = LABELS.get(system, system)
    if system.startswith("llmr") and config.get("value") in VALUE_LABELS:
        label += f" ({VALUE_LABELS[config['value']]})"
    return label


@dataclass(frozen=True)
class Run:
    """One scored model: the teacher, or a student system at one seed."""

    summary: dict[str, Any]
    path: Path  # the summary JSON; the per-example CSV is `summary["scores"]`

    @property
    def system(self) -> str:
        return self.summary["system"]

    @property
    def seed(self) -> int | None:
        return self.summary["seed"]

    @property
    def validation(self) -> float:
        record = self.summary.get("validation")
        return float("nan") if record is None else float(record["score"])

    @cached_property
    def rows(self) -> list[dict[str, str]]:
        return read_csv(self.scores_path)

    @property
    def scores_path(self) -> Path:
        return Path(self.summary["scores"])

    def table(self, metric: Metric) -> np.ndarray:
        from ketchup.evaluate.scoring import metric_table

        return metric_table(metric, self.rows)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such score summary (ketchup score writes it)")
    return Run(json.loads(path.read_text()), path)


@dataclass
class Group:
    """The runs of one system (over seeds) for one task and student."""

    system: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def values(self, metric: Metric) -> list[float]:
        return [float(r.summary["metrics"][metric.name]) for r in self.runs]

    def mean_std(self, metric: Metric) -> tuple[float, float]:
        """Mean over seeds and the sample standard deviation (NaN with one seed)."""
        x = np.asarray(self.values(metric))
        return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")

    def validation(self) -> float:
        """Mean validation score over seeds (the selection criterion)."""
        return float(np.mean([r.validation for r in self.runs]))

    def tables(self, metric: Metric) -> list[np.ndarray]:
        return [r.table(metric) for r in self.runs]

    def ci(self, metric: Metric) -> tuple[float, float, float]:
        """(seed mean, 95% low, high): the seed-aware interval of the mean over seeds
        (:func:`ketchup.math.stats.seed_aware_ci`: the seeds' spread and one bootstrap of the test
        examples shared by every seed); over examples alone with one seed."""
        tables = self.tables(metric)

        def per_seed(idx: np.ndarray) -> np.ndarray:
            return np.array([metric.value(table[idx]) for table in tables])

        interval = stats.seed_aware_ci(per_seed, len(tables), len(tables[0]))
        return interval["value"], interval["low"], interval["high"]

    @property
    def config(self) -> dict[str, Any]:
        """The job config its first run trained with (the `distill` keys its method reads)."""
        for run in self.runs:
            config = (run.summary.get("training") or {}).get("config")
            if config:
                return config
        return {}

    @property
    def label(self) -> str:
        return system_label(self.system, self.config)

    def training(self, key: str, part: str = "mean") -> float:
        """Mean over seeds of a training-log statistic (distill's `training_summary`)."""
        values = []
        for run in self.runs:
            summary = (run.summary.get("training") or {}).get("training_summary") or {}
            value = (summary.get(part) or {}).get(key)
            if value is not None:
                values.append(float(value))
        return float(np.mean(values)) if values else math.nan


def paired_test(a: Group, b: Group, metric: Metric) -> dict[str, Any]:
    """System a against system b on the same test examples, seeds paired by seed number.

    - ``difference``: the difference of their seed means;
    - example level: ``p_value``, a paired permutation test (a permutation swaps an example's
      outputs between the systems at every seed at once), and ``ci_low``/``ci_high``, a bootstrap
      over examples of the difference; both treat the trained seeds as fixed;
    - seed aware: ``seed_ci_low``/``seed_ci_high``, the interval of
      :func:`ketchup.math.stats.seed_aware_ci` on the per-seed differences ``seed_differences``
      (their spread, plus one bootstrap of the test examples shared by every seed), with its
      standard error ``seed_se``, degrees of freedom ``seed_df`` and minimal detectable effect
      ``mde`` (80% power, two-sided 0.05); ``seed_p_value``, the exact sign-flip test of the
      per-seed differences (never below 2 / 2^seeds).
    """
    seeds = [s for s in a.seeds if s in b.seeds]
    if not seeds:
        return {"difference": math.nan, "p_value": math.nan, "seeds": 0}
    ta = [a.runs[a.seeds.index(s)].table(metric) for s in seeds]
    tb = [b.runs[b.seeds.index(s)].table(metric) for s in seeds]
    n = len(ta[0])

    def difference(swap: np.ndarray) -> float:
        w = swap[:, None]
        return float(
            np.mean(
                [
                    metric.value(np.where(w, y, x)) - metric.value(np.where(w, x, y))
                    for x, y in zip(ta, tb, strict=True)
                ]
            )
        )

    def per_seed(idx: np.ndarray) -> np.ndarray:
        return np.array(
            [metric.value(x[idx]) - metric.value(y[idx]) for x, y in zip(ta, tb, strict=True)]
        )

    observed, p = stats.permutation_test(difference, n)
    _, lo, hi = stats.bootstrap_ci(lambda idx: float(per_seed(idx).mean()), n)
    seed_aware = stats.seed_aware_ci(per_seed, len(seeds), n)
    per_seed_differences = per_seed(np.arange(n)).tolist()
    _, seed_p = stats.sign_flip_test(per_seed_differences)
    return {
        "difference": observed,
        "p_value": p,
        "ci_low": lo,
        "ci_high": hi,
        "seed_ci_low": seed_aware["low"],
        "seed_ci_high": seed_aware["high"],
        "seed_se": seed_aware["se"],
        "seed_df": seed_aware["df"],
        "mde": seed_aware["mde"],
        "seed_p_value": seed_p,
        "seed_differences": per_seed_differences,
        "seeds": len(seeds),
    }


@dataclass
class Cell:
    """The results of one (task, student): every system's group and the teacher."""

    task: str
    student: str | None
    dataset: str
    metrics: list[Metric]
    groups: dict[str, Group]

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def ketchup_systems(self) -> list[str]:
        return sorted(
            (s for s in self.groups if s.startswith("ketchup_k")), key=lambda s: int(s[9:])
        )

    def best_k_system(self) -> str | None:
        """KETCHUP's K with the best mean validation score (the paper selects K this way)."""
        return _best_by_validation(self.groups, self.ketchup_systems())

    def best_baseline(self) -> str | None:
        """The non-RL baseline (SeqKD, KL, JS, TVD) with the best mean validation score."""
        return _best_by_validation(self.groups, [s for s in NON_RL_BASELINES if s in self.groups])

    def table_systems(self) -> list[tuple[str, str]]:
        """(row method, system) in the paper's order; ketchup is its best K."""
        rows = []
        for method in TABLE_ORDER:
            system = self.best_k_system() if method == "ketchup" else method
            if system in self.groups:
                rows.append((method, system))
        return rows


def _best_by_validation(groups: dict[str, Group], systems: Sequence[str]) -> str | None:
    scored = [(groups[s].validation(), s) for s in systems]
    scored = [(v, s) for v, s in scored if not math.isnan(v)]
    return max(scored)[1] if scored else None


def collect(runs: Sequence[Run]) -> list[Cell]:
    """Group runs into one Cell per (task, student); the teacher joins every student of its task."""
    teachers = {r.summary["task"]: r for r in runs if r.system == TEACHER}
    cells: dict[tuple[str, str], Cell] = {}
    for run in runs:
        if run.system == TEACHER:
            continue
        s = run.summary
        key = (s["task"], s["student"])
        if key not in cells:
            metrics = [METRICS[m] for m in s["metrics"]]
            cells[key] = Cell(s["task"], s["student"], s["dataset"], metrics, {})
        cells[key].groups.setdefault(run.system, Group(run.system)).runs.append(run)
    for (task, _), cell in cells.items():
        if task in teachers:
            cell.groups[TEACHER] = Group(TEACHER, [teachers[task]])
        for group in cell.groups.values():
            group.runs.sort(key=lambda r: -1 if r.seed is None else r.seed)
            _check_same_examples(group.runs)
    return [cells[key] for key in sorted(cells)]


def _check_same_examples(runs: Sequence[Run]) -> None:
    first = [row["id"] for row in runs[0].rows]
    for run in runs[1:]:
        if [row["id"] for row in run.rows] != first:
            raise ValueError(
                f"{run.scores_path} and {runs[0].scores_path} score different examples; "
                "rerun their score jobs"
            )
