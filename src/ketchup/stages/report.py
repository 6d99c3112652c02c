"""Stages `tables` and `figures`: the study's tables and figures from `ketchup score` summaries."""

from __future__ import annotations

from pathlib import Path

from ketchup.files import csv_text, read_csv, write_text
from ketchup.report.results import collect, load_run


def _cells(score_files):
    return collect([load_run(path) for path in score_files])


def _variance(files) -> dict[tuple[str, str], list[dict[str, str]]]:
    """grad_variance.csv files by (task, student), from their path
    results/<study>/<task>/students/<s>/."""
    out = {}
    for path in files:
        p = Path(path)
        out[(p.parents[2].name, p.parent.name)] = read_csv(p)
    return out


def _write(out_dir: Path, name: str, tables, records) -> None:
    from ketchup.report.tables import html_page

    write_text(out_dir / f"{name}.md", "\n".join(t.markdown() for t in tables))
    title = tables[0].title if tables else name
    write_text(out_dir / f"{name}.html", html_page(title, "".join(t.html() for t in tables)))
    write_text(out_dir / f"{name}.tex", "\n".join(t.latex() for t in tables))
    columns = list(dict.fromkeys(key for record in records for key in record))
    write_text(
        out_dir / f"{name}.csv",
        csv_text([{c: r.get(c, "") for c in columns} for r in records], columns),
    )


JUDGE_NOT_RUN = (
    "# LLM-as-judge\n\nThe LLM judge was not run: `judge.enabled` is false in this config. To run "
    "it, set `judge.enabled: true`, `judge.model` and `judge.base_url` (OpenAI: null; vLLM: "
    "http://127.0.0.1:8000/v1; Ollama: http://127.0.0.1:11434/v1) and export the API key in the "
    "variable `judge.api_key_env` names; see the README's LLM-as-judge section.\n"
)


def judge_summary(judge_dirs) -> str:
    """tables/judge.md: each judge run's report, a dry run's totals, or how to enable it."""
    if not judge_dirs:
        return JUDGE_NOT_RUN
    parts = []
    for directory in map(Path, judge_dirs):
        task, student = directory.parents[1].name, directory.name
        report, dry_run = directory / "report.md", directory / "dry_run.json"
        if report.is_file():
            title = f"# LLM-as-judge: {task}, {student}"
            body = report.read_text().replace("# LLM-as-judge", title, 1)
        elif dry_run.is_file():
            totals = dry_run.read_text().strip()  # the verb writes it indented
            body = f"# LLM-as-judge (dry run): {task}, {student}\n\n```\n{totals}\n```\n"
        else:
            raise FileNotFoundError(
                f"{directory}: neither report.md nor dry_run.json (run ketchup judge)"
            )
        parts.append(body)
    return "\n".join(parts)


def tables_stage(args) -> int:
    from ketchup.report.tables import (
        html_page,
        k_table,
        main_table,
        markdown_html,
        paper_table,
        provenance_table,
        sizes_table,
        variance_table,
    )

    cells = _cells(args.scores)
    variance = _variance(args.variance)
    out_dir = Path(args.out_dir)
    main, main_records = main_table(cells)
    _write(out_dir, "main", main, main_records)
    grid, grid_records = k_table(cells, variance)
    _write(out_dir, "k_grid", grid, grid_records)
    var, var_records = variance_table(cells, variance)
    _write(out_dir, "variance", var, var_records)
    paper, paper_records = paper_table(cells)
    _write(out_dir, "paper", [paper], paper_records)
    sizes, sizes_records = sizes_table(cells)
    _write(out_dir, "sizes", [sizes], sizes_records)
    provenance, provenance_records = provenance_table(cells)
    _write(out_dir, "provenance", [provenance], provenance_records)
    judge = judge_summary(args.judge)
    write_text(out_dir / "judge.md", judge)
    write_text(out_dir / "judge.html", html_page("LLM-as-judge", markdown_html(judge)))
    if args.study_json:
        _write_study(args)
    print((out_dir / "main.md").read_text())
    return 0


def _write_study(args) -> None:
    """The study's resolved config beside its tables' directory, and the index of studies."""
    import json

    from ketchup.config import ConfigError
    from ketchup.report.studies import write_study

    if not (args.study_config and args.index):
        raise ConfigError("--study-json needs --study-config and --index")
    try:
        config = json.loads(args.study_json)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--study-json: not valid JSON ({e.msg})") from None
    write_study(config, args.study_config, args.index)


def figures_stage(args) -> int:
    from ketchup.config import ConfigError
    from ketchup.report import figures

    # checked here, not by argparse choices: the CLI stays free of the plotting imports
    kinds = list(args.kinds or figures.KINDS)
    unknown = [k for k in kinds if k not in (*figures.KINDS, *figures.STUDY_KINDS)]
    if unknown:
        known = ", ".join((*figures.KINDS, *figures.STUDY_KINDS))
        raise ConfigError(f"--kinds: unknown figure {unknown[0]!r}; known: {known}")
    cells = [c for c in _cells(args.scores) if c.task == args.task]
    variance = _variance(args.variance)
    out_dir = Path(args.out_dir)
    written = []
    for cell in cells:
        stem = out_dir / f"{cell.task}_{cell.student}"
        for kind in kinds:
            if kind == "grad_variance":
                fig = figures.grad_variance(cell, variance[(cell.task, cell.student)])
            elif kind in figures.KINDS:
                fig = getattr(figures, kind)(cell)
            else:
                continue
            written += figures.save(fig, Path(f"{stem}_{kind}"))
    for directory in map(Path, args.judge):
        summary = directory / "pairwise_summary.csv"
        if summary.is_file() and read_csv(summary):
            student = directory.name
            fig = figures.judge_win_rates(read_csv(summary), f"{args.task}, student {student}")
            written += figures.save(fig, out_dir / f"{args.task}_{student}_judge_win_rates")
    if "gain_vs_size" in kinds:
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
