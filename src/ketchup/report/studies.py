"""Studies side by side: each study's resolved config, and the index of every study in results/.

Every study (the config's `study:` name) writes under results/<study>/ only. Its tables job
writes the config it ran with to results/<study>/config.yaml and then rewrites results/studies.md,
the index of every study found there; the index is no job's declared output, since the jobs of
every study rewrite it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ketchup.config import DistillConfig, ModelConfig, StudyConfig
from ketchup.data.registry import dataset_spec
from ketchup.files import write_text

STUDY_CONFIG = "config.yaml"
INDEX = "studies.md"


def hub_models(study: StudyConfig) -> dict[str, ModelConfig]:
    """{fetch item: model} of the teacher and each student that the study loads by name or path:
    one `fetch` job each (workflow/rules/data.smk)."""
    models = {"model-teacher": study.teacher.model}
    models.update({f"model-student-{name}": s.model for name, s in study.students.items()})
    return {item: model for item, model in models.items() if not model.from_scratch}


def hub_datasets(study: StudyConfig) -> dict[str, str]:
    """{fetch item: task} of the tasks whose dataset is a hub dataset: one `fetch` job each."""
    return {
        f"data-{task}": task
        for task, cfg in study.tasks.items()
        if dataset_spec(cfg.dataset).hub_id is not None
    }


_HEADER = (
    "# The studies in results/\n\n"
    "Each study (the config's `study:` name) writes under `results/<study>/` only, and records "
    "the config it ran with, defaults filled in, in `results/<study>/config.yaml`. Written by "
    "each study's tables job; do not edit.\n\n"
    "| study | tasks | teacher | students | methods | K | seeds | config | main table |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def in_schema_order(data: Any, schema: dict[str, Any] | None = None) -> Any:
    """`data` with the keys of every mapping in the order the schema lists them (config.yaml's
    order), the keys the schema does not list after them: readable whatever order the config
    arrived in (the workflow passes it with sorted keys, so that key order reruns nothing)."""
    from ketchup.config import load_schema

    defs = load_schema()["$defs"]
    schema = load_schema() if schema is None else schema
    while "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    for option in schema.get("oneOf", []):  # a section that may be null
        if isinstance(data, dict) and ("$ref" in option or option.get("type") == "object"):
            return in_schema_order(data, option)
    if not isinstance(data, dict):
        return data
    properties = schema.get("properties", {})
    named = isinstance(schema.get("additionalProperties"), dict)  # tasks, students: by name
    order = [k for k in properties if k in data] + [k for k in data if k not in properties]
    return {
        key: in_schema_order(
            data[key], properties.get(key) or (schema["additionalProperties"] if named else {})
        )
        for key in order
    }


def study_config_text(config: dict[str, Any]) -> str:
    """A study's resolved config as YAML (keys in the schema's order), with a header."""
    header = (
        f"# The resolved config of study {config.get('study')!r}: what its jobs ran with, every "
        "default filled in.\n# Rerun it with: snakemake --cores all --configfile <this file>\n"
    )
    return header + yaml.safe_dump(in_schema_order(config), sort_keys=False, allow_unicode=True)


def _model(model: dict[str, Any]) -> str:
    name = model.get("name_or_path")
    if name is None:
        arch = model.get("architecture") or {}
        return f"{arch.get('model_type', '?')} from scratch"
    return f"{name}@{model['revision']}" if model.get("revision") else name


def index_row(study_dir: Path, config: dict[str, Any]) -> str:
    distill = config.get("distill", {})
    cells = [
        f"`{study_dir.name}`",
        ", ".join(config.get("tasks", {})),
        _model(config.get("teacher", {}).get("model", {})),
        ", ".join(
            f"{name} ({_model(s.get('model', {}))})"
            for name, s in config.get("students", {}).items()
        ),
        ", ".join(distill.get("methods", [])),
        ", ".join(map(str, distill.get("ks", []))),
        ", ".join(map(str, distill.get("seeds", []))),
        f"[config.yaml]({study_dir.name}/{STUDY_CONFIG})",
    ]
    main = study_dir / "tables" / "main.md"
    cells.append(f"[main.md]({study_dir.name}/tables/main.md)" if main.is_file() else "-")
    return "| " + " | ".join(cells) + " |\n"


def study_index(results: str | Path) -> str:
    """The index of `results`: one row per results/<study>/config.yaml, by name."""
    rows = []
    for path in sorted(Path(results).glob(f"*/{STUDY_CONFIG}")):
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # being rewritten by its study's tables job, or damaged: left out
        if isinstance(config, dict):
            rows.append(index_row(path.parent, config))
    return _HEADER + "".join(rows)


def write_study(config: dict[str, Any], config_path: str | Path, index_path: str | Path) -> None:
    """Write a study's resolved config, then rewrite the index beside its directory."""
    write_text(config_path, study_config_text(config))
    write_text(index_path, study_index(Path(index_path).parent))


def measured_systems(cfg: DistillConfig, reference: str = "llmr") -> list[str]:
    """The systems whose update the variance stage measures: LLMR (always: the reference), its
    baselines and every K > 1 of the study's KETCHUP."""
    systems = [reference]
    systems += [s for s in ("llmr_mean", "llmr_minvar") if s in cfg.methods]
    if "ketchup" in cfg.methods:
        systems += [f"ketchup_k{k}" for k in sorted(cfg.ks) if k > 1]
    return systems
