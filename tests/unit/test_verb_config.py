"""Verbs by hand: `--configfile FILE --task T [--student S]` in place of the JSON sections the
workflow's rules pass, and `ketchup --version`. (tests/workflow/test_workflow.py checks that the
sections are the very ones the rules pass.)"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from ketchup.cli import VERBS, build_parser, main
from ketchup.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
DISTILL = [
    "distill",
    "--teacher",
    "t",
    "--tokenizer",
    "tok",
    "--data-dir",
    "d",
    "--seed",
    "0",
    "--out-dir",
    "o",
]


def resolved(argv: list[str]):
    """The parsed arguments of `ketchup ARGV` with the JSON sections filled as main() fills them."""
    from ketchup.verb_config import fill_from_config

    args = build_parser().parse_args(argv)
    fill_from_config(args._verb.name, args)
    return args


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"ketchup {version('ketchup')}"


def test_prepare_data_runs_from_the_config_file(tmp_path):
    out = tmp_path / "data"
    argv = ["prepare-data", "--configfile", SMOKE, "--task", "restaurants", "--out-dir", str(out)]
    assert main(argv) == 0
    assert len(read_jsonl(out / "train.jsonl")) == 300  # smoke.yaml's n_train
    recorded = json.loads((out / "prepare-data.config.json").read_text())
    assert recorded["task_name"] == "restaurants"
    task = json.loads(resolved(argv).config_json)
    written = yaml.safe_load(Path(SMOKE).read_text())["tasks"]["restaurants"]
    assert {key: task[key] for key in written} == written
    assert task["metric"] is None and "metric" not in written  # a schema default, filled in


def test_distill_takes_only_its_method_s_keys_and_a_given_json_wins():
    args = resolved([*DISTILL, "--configfile", SMOKE, "--task", "restaurants",
                     "--student", "t5-micro", "--method", "ketchup_k4"])  # fmt: skip
    distill = json.loads(args.config_json)
    assert set(distill) == {
        "train", "rollout", "teacher_placement", "value", "sequence_end", "policy_gradient"
    }  # fmt: skip
    assert distill["train"]["steps"] == 6 and distill["rollout"]["max_new_tokens"] == 40
    assert json.loads(args.student_json)["model"]["architecture"]["d_model"] == 16
    assert json.loads(args.generation_json)["max_new_tokens"] == 80
    assert json.loads(args.task_json)["embedded"]["n_train"] == 300
    kl = resolved([*DISTILL, "--configfile", SMOKE, "--task", "restaurants",
                   "--student", "t5-micro", "--method", "kl", "--task-json", "{}"])  # fmt: skip
    # kl reads only where the teacher runs (its one teacher pass per batch)
    assert json.loads(kl.config_json) == {"teacher_placement": "replicate"}
    assert kl.task_json == "{}"


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "--task NAME is needed with --configfile (tasks in"),
        (["--task", "xsum"], "--task 'xsum': not under `tasks:` in"),
        (["--task", "restaurants", "--student", "t5-huge"], "--student 't5-huge': not under"),
    ],
)
def test_a_missing_or_unknown_name_is_one_line_naming_it(extra, message, capsys):
    argv = [*DISTILL, "--method", "kl", "--configfile", SMOKE, *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert "known: " in err or "restaurants" in err


def test_without_json_or_config_file_the_missing_arguments_are_named(capsys):
    assert main([*DISTILL, "--method", "kl"]) == 1
    err = capsys.readouterr().err
    assert "--task-json and --student-json and --generation-json and --config-json missing" in err


def test_score_of_the_teacher_and_of_a_student_run():
    base = ["score", "--outputs", "x", "--data-dir", "d", "--out", "o", "--configfile", SMOKE]
    teacher = resolved([*base, "--task", "restaurants", "--system", "teacher"])
    assert json.loads(teacher.run_json) == {
        "task": "restaurants", "student": None, "system": "teacher", "seed": None
    }  # fmt: skip
    student = resolved([*base, "--task", "restaurants", "--student", "t5-micro",
                        "--system", "llmr", "--seed", "0"])  # fmt: skip
    assert json.loads(student.run_json)["student"] == "t5-micro"


def test_every_verb_with_json_sections_documents_the_config_file():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    with_json = [
        v.name for v in VERBS if any(a.dest.endswith("_json") for a in subparsers[v.name]._actions)
    ]
    # fetch takes only what a download depends on (dataset, files, revision) and is run by its
    # local rule; tables takes the whole study config to record it: neither is a stage section
    with_json = [name for name in with_json if name not in ("fetch", "tables")]
    assert len(with_json) == 9
    for name in with_json:
        text = subparsers[name].format_help()
        assert "--configfile FILE" in text and "from --configfile" in text, name
