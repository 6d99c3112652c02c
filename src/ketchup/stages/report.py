"""Stages `tables` and `figures`: the study's tables and figures from `ketchup score` summaries."""

from __future__ import annotations

from pathlib import Path

from ketchup.files import csv_text, read_csv, write_text
from ketchup.results import collect, load_run


def _cells(score_files):
    return collect([load_run(path) for path in score_files])


def _variance(files) -> dict[tuple[str, str], list[dict[str, str]]]:
    """grad_variance.csv files by (task, student), from their path results/<task>/students/<s>/."""
    out = {}
    for path in files:
        p = Path(path)
        out[(p.parents[2].name, p.parent.name)] = read_csv(p)
    return out


def _write(out_dir: Path, name: str, tables, records) -> None:
    write_text(out_dir / f"{name}.md", "\n".join(t.markdown() for t in tables))
    write_text(out_dir / f"{name}.tex", "\n".join(t.latex() for t in tables))
    columns = list(dict.fromkeys(key for record in records for key in record))
    write_text(
        out_dir / f"{name}.csv",
        csv_text([{c: r.get(c, "") for c in columns} for r in records], columns),
    )


def tables_stage(args) -> int:
    from ketchup.tables import k_table, main_table, paper_table

    cells = _cells(args.scores)
    out_dir = Path(args.out_dir)
    main, main_records = main_table(cells)
    _write(out_dir, "main", main, main_records)
    grid, grid_records = k_table(cells, _variance(args.variance))
    _write(out_dir, "k_grid", grid, grid_records)
    paper, paper_records = paper_table(cells)
    _write(out_dir, "paper", [paper], paper_records)
    print((out_dir / "main.md").read_text())
    return 0


def figures_stage(args) -> int:
    from ketchup import figures
    from ketchup.config import WARM_STARTED_METHODS, split_system

    cells = [c for c in _cells(args.scores) if c.task == args.task]
    variance = _variance(args.variance)
    out_dir = Path(args.out_dir)
    written = []
    for cell in cells:
        stem = out_dir / f"{cell.task}_{cell.student}"
        on_policy = [
            s for s in cell.groups if s != "teacher" and split_system(s)[0] in WARM_STARTED_METHODS
        ]
        for kind in args.kinds:
            if kind == "metric_vs_k":
                fig = figures.metric_vs_k(cell)
            elif kind == "grad_variance":
                fig = figures.grad_variance(cell, variance[(cell.task, cell.student)])
            elif kind == "training_curves":
                fig = figures.training_curves(cell, on_policy)
            elif kind == "methods":
                fig = figures.methods(cell)
            else:
                continue
            written += figures.save(fig, Path(f"{stem}_{kind}"))
    if "gain_vs_size" in args.kinds:
        parameters = {
            c.student: g.runs[0].summary.get("parameters")
            for c in cells
            for name, g in c.groups.items()
            if name != "teacher"
        }
        fig = figures.gain_vs_size(cells, parameters)
        written += figures.save(fig, out_dir / f"{args.task}_gain_vs_size")
    print(f"figures: wrote {len(written)} files under {out_dir}")
    return 0
