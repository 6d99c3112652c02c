"""A verb's config sections from a study config file, for running a verb by hand.

The workflow's rules pass each verb the sections it reads as JSON (`--task-json`,
`--config-json`, ...). By hand, `--configfile config.yaml --task T [--student S]` takes them from
the file instead, validated against the schema with its defaults filled, exactly as the rules
pass them (the same keys, the same canonical JSON). A JSON argument given as well wins.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ketchup.config import (
    ConfigError,
    job_distill_section,
    parse_config,
    read_config_files,
    teacher_training_section,
    variance_distill_section,
)

Config = dict[str, Any]


def _named(config: Config, section: str, name: str | None, option: str, files: str) -> Any:
    """config[section][name], or an error naming the option and the names the file has."""
    known = ", ".join(config[section])
    if name is None:
        raise ConfigError(
            f"{option} NAME is needed with --configfile ({section} in {files}: {known})"
        )
    if name not in config[section]:
        raise ConfigError(f"{option} {name!r}: not under `{section}:` in {files} (known: {known})")
    return config[section][name]


def _run(config: Config, args: argparse.Namespace, files: str) -> dict[str, Any]:
    """score's run: the teacher of a task, or a student system at a seed."""
    _named(config, "tasks", args.task, "--task", files)
    if args.system is None:
        raise ConfigError(
            "--system NAME is needed with --configfile (teacher, kl, ketchup_k4, ...)"
        )
    if args.system == "teacher":
        return {"task": args.task, "student": None, "system": "teacher", "seed": None}
    _named(config, "students", args.student, "--student", files)
    if args.seed is None:
        raise ConfigError("--seed N is needed with --configfile for a student's run")
    return {"task": args.task, "student": args.student, "system": args.system, "seed": args.seed}


Derive = Callable[[Config, argparse.Namespace, str], Any]
# The JSON arguments every verb names alike.
SHARED: dict[str, Derive] = {
    "task_json": lambda c, a, f: _named(c, "tasks", a.task, "--task", f),
    "student_json": lambda c, a, f: _named(c, "students", a.student, "--student", f),
    "generation_json": lambda c, a, f: c["teacher"]["generation"],
    "run_json": _run,
}
# `--config-json` of each verb: the section its stage reads.
CONFIG_JSON: dict[str, Derive] = {
    "prepare-data": lambda c, a, f: _named(c, "tasks", a.task, "--task", f),
    "train-tokenizer": lambda c, a, f: c["tokenizer"],
    "train-teacher": lambda c, a, f: teacher_training_section(c["teacher"]),
    "teacher-outputs": lambda c, a, f: c["teacher"],
    "distill": lambda c, a, f: job_distill_section(c["distill"], a.method),
    "grad-variance": lambda c, a, f: variance_distill_section(c["distill"]),
    "generate": lambda c, a, f: c["evaluation"],
    "judge": lambda c, a, f: c["judge"],
}


def section_json(section: Any) -> str:
    """Canonical JSON, as the workflow's rules pass a section (common.smk's section_json)."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def json_arguments(verb: str, args: argparse.Namespace) -> list[str]:
    """The JSON arguments (dest names) of `verb` that are still unset."""
    dests = [d for d in SHARED if hasattr(args, d)]
    if verb in CONFIG_JSON:
        dests.append("config_json")
    return [d for d in dests if getattr(args, d, None) is None]


def fill_from_config(verb: str, args: argparse.Namespace) -> None:
    """Set every unset JSON argument of `verb` from `args.configfile` (in place)."""
    missing = json_arguments(verb, args)
    if not missing:
        return
    if not args.configfile:
        options = " and ".join("--" + d.replace("_", "-") for d in missing)
        raise ConfigError(f"{options} missing: pass them, or --configfile FILE with the names")
    files = " + ".join(args.configfile)
    config = read_config_files(*args.configfile)
    try:
        parse_config(config)  # validates and fills the schema's defaults in place
    except ConfigError as e:
        raise ConfigError(f"{files}: {e}") from None
    for dest in missing:
        derive = CONFIG_JSON[verb] if dest == "config_json" else SHARED[dest]
        setattr(args, dest, section_json(derive(config, args, files)))
