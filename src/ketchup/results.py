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
from ketchup.files import read_csv
from ketchup.math import stats
from ketchup.scoring import METRICS, Metric

TEACHER = "teacher"
# The paper's main-table order (the config's method order); KETCHUP stands for its best K.
TABLE_ORDER = (TEACHER, *typing.get_args(Method))
LABELS = {
    "teacher": "Teacher",
    "sft": "Student, no distillation (SFT)",
    "seqkd": "SeqKD",
    "kl": "KL",
    "js": "JS",
    "tvd": "TVD",
    "llmr": "LLMR",
    "llmr_mean": "LLMR + mean",
    "llmr_minvar": "LLMR + min-var",
    "ketchup": "KETCHUP",
    "gkd": "GKD",
    "minillm": "MiniLLM",
}
# The paper's non-RL baselines: KETCHUP is tested against the best of them (by validation).
NON_RL_BASELINES = ("seqkd", "kl", "js", "tvd")


def system_label(system: str) -> str:
    if system.startswith("ketchup_k"):
        return f"KETCHUP (K={system[len('ketchup_k') :]})"
    return LABELS.get(system, system)


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
        from ketchup.scoring import metric_table

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
        """(seed mean, 95% low, high): bootstrap over test examples of the mean over seeds."""
        tables = self.tables(metric)
        return stats.bootstrap_ci(
            lambda idx: float(np.mean([metric.value(t[idx]) for t in tables])), len(tables[0])
        )


def paired_test(a: Group, b: Group, metric: Metric) -> dict[str, float]:
    """System a against system b on the same test examples: the difference of their seed means
    and a paired permutation test's p-value (seeds paired by seed number; a permutation swaps an
    example's outputs between the two systems at every seed at once)."""
    seeds = [s for s in a.seeds if s in b.seeds]
    if not seeds:
        return {"difference": math.nan, "p_value": math.nan, "seeds": 0}
    ta = [a.runs[a.seeds.index(s)].table(metric) for s in seeds]
    tb = [b.runs[b.seeds.index(s)].table(metric) for s in seeds]

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

    observed, p = stats.permutation_test(difference, len(ta[0]))
    return {"difference": observed, "p_value": p, "seeds": len(seeds)}


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
