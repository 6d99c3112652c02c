"""The config: schema defaults, typed sections, and one-line errors that name the key."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import hypothesis
import pytest
import yaml

from ketchup import config as cfg
from ketchup.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def is_overlay(path: Path) -> bool:
    """A file that holds only what differs from config.yaml says how it is run with it."""
    return f"--configfile config.yaml configs/{path.name}" in path.read_text()


def config_files(path: Path) -> list[Path]:
    return [ROOT / "config.yaml", path] if is_overlay(path) else [path]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    study = cfg.load_config(*config_files(path))
    assert study.tasks and study.students
    assert all(k >= 1 for k in study.distill.ks)
    if is_overlay(path):  # and each of its keys differs from config.yaml's
        base = default_config()
        for key_path, value in _mapping_leaves(yaml.safe_load(path.read_text())):
            try:
                same = _get(base, key_path) == value
            except KeyError:  # a key config.yaml does not have (a new student, say)
                continue
            assert not same, f"{path.name}: {key_path} repeats config.yaml"


def _mapping_leaves(node, path=()):
    """(path, value) of every value that is not a mapping (a list is one value)."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _mapping_leaves(value, (*path, key))
        else:
            yield (*path, key), value


def test_defaults_are_filled_from_the_schema():
    study = cfg.parse_config(
        {
            "tasks": {"t": {"dataset": "embedded"}},
            "teacher": {"model": {"architecture": {"model_type": "t5"}}},
            "students": {"s": {"model": {"architecture": {"model_type": "t5"}}}},
        }
    )
    schema = cfg.load_schema()["$defs"]
    assert study.teacher.train.steps == schema["train"]["properties"]["steps"]["default"]
    assert study.distill.ks == [2, 4, 8, 16]
    assert study.tasks["t"].embedded.n_train == 6000
    assert study.resources.teacher.gpu == 0
    assert study.tokenizer.vocab_size == 1000


# (mutation of the default config, the key the message must name, a word the message must contain)
BAD_CONFIGS = [
    (
        lambda c: c["teacher"]["train"].update(lerning_rate=1e-3),
        "teacher.train.lerning_rate",
        "learning_rate",
    ),
    (lambda c: c.update(studnets={}), "studnets", "students"),
    (
        lambda c: c["distill"].update(methods=["ketchup", "ketchupp"]),
        "distill.methods[1]",
        "llmr_minvar",
    ),
    (lambda c: c["distill"].update(methods=["kl", "ketchupp"]), "distill.methods[1]", "ketchup"),
    (
        lambda c: c["distill"].update(policy_gradient={"weight": "rho"}),
        "distill.policy_gradient.weight",
        "pi",
    ),
    (lambda c: c["distill"].update(gkd={"beta": 1.5}), "distill.gkd.beta", "maximum"),
    (lambda c: c["distill"].update(ks=[0, 2]), "distill.ks[0]", "minimum of 1"),
    (lambda c: c["distill"].update(ks=[]), "distill.ks", "non-empty"),
    (lambda c: c["distill"].update(seeds=[1, 1]), "distill.seeds", "non-unique"),
    (lambda c: c.pop("teacher"), "teacher", "missing"),
    (lambda c: c["teacher"].pop("model"), "teacher.model", "missing"),
    (lambda c: c["teacher"]["train"].update(steps="many"), "teacher.train.steps", "integer"),
    (lambda c: c["teacher"]["train"].update(learning_rate=0), "teacher.train.learning_rate", "0"),
    (lambda c: c["teacher"].update(mode="frozen"), "teacher.mode", "finetune, prompted"),
    (
        lambda c: c["tasks"]["restaurants"].update(dataset="cnn"),
        "tasks.restaurants.dataset",
        "xsum",
    ),
    (lambda c: c["tasks"]["restaurants"].update(metric="blue"), "tasks.restaurants.metric", "bleu"),
    (
        lambda c: c["tasks"]["restaurants"].update(dataset="file"),
        "tasks.restaurants.files",
        "required",
    ),
    (
        lambda c: c["tasks"]["restaurants"].update(prompt="Summarise"),
        "tasks.restaurants.prompt",
        "{source}",
    ),
    (lambda c: c["tasks"].update({"bad/name": {"dataset": "embedded"}}), "tasks", "bad/name"),
    (
        lambda c: c["teacher"]["model"].update(name_or_path="t5-small"),
        "teacher.model",
        "exactly one",
    ),
    (
        lambda c: c["teacher"]["model"].update(architecture={"d_model": 8}),
        "teacher.model.architecture",
        "model_type",
    ),
    (lambda c: c["resources"]["teacher"].update(gpu=-1), "resources.teacher.gpu", "minimum"),
]


@pytest.mark.parametrize("mutate,key,hint", BAD_CONFIGS, ids=[b[1] for b in BAD_CONFIGS])
def test_bad_config_names_the_key(mutate, key, hint):
    data = default_config()
    mutate(data)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_config(data)
    message = str(err.value)
    assert f"'{key}" in message, message
    assert hint in message, message
    assert "\n" not in message


def _dataclass_tree(cls) -> dict:
    """Field names of a dataclass, nested dataclasses expanded."""
    tree = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = [t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)]
        tree[f.name] = _dataclass_tree(inner[0]) if inner else None
    return tree


def _schema_tree(schema: dict, defs: dict) -> dict | None:
    if "$ref" in schema:
        return _schema_tree(defs[schema["$ref"].split("/")[-1]], defs)
    if "oneOf" in schema:
        refs = [s for s in schema["oneOf"] if "$ref" in s]
        return _schema_tree(refs[0], defs) if refs else None
    if "properties" in schema and schema.get("additionalProperties") is False:
        return {k: _schema_tree(v, defs) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        return _schema_tree(schema["additionalProperties"], defs)
    return None


def test_dataclasses_mirror_the_schema():
    """The typed config and the schema describe the same keys at every level."""
    schema = cfg.load_schema()
    assert _dataclass_tree(cfg.StudyConfig) == _schema_tree(schema, schema["$defs"])


def test_parse_section_fills_defaults_and_rejects_unknown_keys():
    train = cfg.parse_section(cfg.TrainConfig, '{"steps": 3}', "train", "teacher.train")
    assert train.steps == 3 and train.batch_size == 32
    with pytest.raises(cfg.ConfigError, match=r"'teacher\.train\.stepz': unknown key"):
        cfg.parse_section(cfg.TrainConfig, '{"stepz": 3}', "train", "teacher.train")
    with pytest.raises(cfg.ConfigError, match="not valid JSON"):
        cfg.parse_section(cfg.TrainConfig, "{steps: 3", "train", "teacher.train")


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(cfg.ConfigError, match="'x.extra': unknown key"):
        cfg.from_dict(cfg.TokenizerConfig, {"vocab_size": 10, "extra": 1}, "x")
    with pytest.raises(cfg.ConfigError, match="'x.vocab_size': missing"):
        cfg.from_dict(cfg.TokenizerConfig, {}, "x")
    with pytest.raises(cfg.ConfigError, match="expected int"):
        cfg.from_dict(cfg.TokenizerConfig, {"vocab_size": True}, "x")


def test_check_config_verb(tmp_path, capsys):
    assert main(["check-config", str(ROOT / "config.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    bad = copy.deepcopy(default_config())
    bad["distill"]["ks"] = [0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["check-config", str(path)]) == 1
    assert "distill.ks[0]" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # several files: merged in order, as `snakemake --configfile A B` merges them
    assert main(["check-config", str(ROOT / "config.yaml"), str(ROOT / "configs/seeds.yaml")]) == 0
    assert "seeds: [0, 1, 2]" in capsys.readouterr().out


def test_enabled_judge_needs_a_model():
    data = default_config()
    data["judge"] = {"enabled": True}
    with pytest.raises(cfg.ConfigError, match=r"'judge\.model': required"):
        cfg.parse_config(data)


def test_systems_expand_ketchup_once_per_k():
    distill = cfg.load_config(ROOT / "config.yaml").distill
    assert distill.systems == [
        *("sft", "seqkd", "kl", "js", "tvd", "llmr", "llmr_mean", "llmr_minvar"),
        *(f"ketchup_k{k}" for k in distill.ks),
        *("gkd", "minillm"),
    ]
    assert cfg.split_system("ketchup_k16") == ("ketchup", 16)
    assert cfg.split_system("llmr_minvar") == ("llmr_minvar", 1)
    for bad in ("ketchup", "ketchup_k0", "ketchup_kx", "llmr_k2", "ppo"):
        with pytest.raises(cfg.ConfigError, match="ketchup_k<K>"):
            cfg.split_system(bad)


def test_a_job_sees_only_the_distill_keys_its_method_reads():
    """Adding a K or a seed, or retuning another method, leaves a job's section unchanged."""
    data = default_config()
    cfg.parse_config(data)  # fills the defaults in place
    before = {s: cfg.job_distill_section(data["distill"], s) for s in ("kl", "llmr", "gkd", "js")}
    assert before["kl"] == {"teacher_placement": "replicate"}  # its teacher pass, no rollout
    placed = {"train", "rollout", "teacher_placement"}
    assert set(before["llmr"]) == {*placed, "value", "policy_gradient"}
    assert set(before["gkd"]) == {*placed, "gkd"}
    assert set(before["js"]) == {*placed, "f_distill"}
    data["distill"].update(ks=[2, 32], seeds=[0, 5], gkd={"beta": 0.1})
    after = {s: cfg.job_distill_section(data["distill"], s) for s in before}
    assert after["llmr"] == before["llmr"] and after["js"] == before["js"]
    assert after["gkd"] != before["gkd"]
    ketchup = cfg.job_distill_section(data["distill"], "ketchup_k32")
    # KETCHUP also reads the sequence-end convention; K = 1 is the same under both
    assert ketchup == {**after["llmr"], "sequence_end": "equations"}
    data["distill"]["sequence_end"] = "released"
    assert cfg.job_distill_section(data["distill"], "llmr") == after["llmr"]
    assert cfg.job_distill_section(data["distill"], "ketchup_k2")["sequence_end"] == "released"


# Generated bad configs: a leaf of a shipped config given a value of the wrong type, or an unknown
# key added to one of its sections. Every one must fail with one line naming exactly that key,
# never a traceback or a silent default.
def _leaves(node, path=()):
    """(path, value) of every leaf; list items are leaves of their own."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, (dict, list)) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _sections(node, path=()):
    """Paths of the closed sections (dicts with a fixed set of keys), for unknown keys."""
    open_maps = {("tasks",), ("students",), ("resources",)}  # keys are names the user picks
    if isinstance(node, dict) and "architecture" not in path and path not in open_maps:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from _sections(value, (*path, key))


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _wrong_type(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "12 steps"
    if isinstance(value, (list, dict)):  # empty ones
        return 3.5
    return [1, 2]  # a string or null where a list never goes


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=hypothesis.strategies.data())
def test_generated_bad_configs_fail_naming_the_key(path, data):
    config = cfg.read_config_files(*config_files(path))
    leaves = [p for p, _ in _leaves(config) if "architecture" not in p]
    sections = list(_sections(config))
    if data.draw(hypothesis.strategies.booleans(), label="unknown key"):
        section = data.draw(hypothesis.strategies.sampled_from(sections), label="section")
        _get(config, section)["zz_unknown"] = 1
        target = (*section, "zz_unknown")
    else:
        target = data.draw(hypothesis.strategies.sampled_from(leaves), label="leaf")
        parent = _get(config, target[:-1])
        parent[target[-1]] = _wrong_type(parent[target[-1]])
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_config(config)
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(f"config key '{_dotted(target)}': "), (target, message)


def test_config_files_merge_in_order_without_changing_their_inputs(tmp_path):
    base = {"a": {"b": 1, "c": [1]}, "x": 1}
    merged = cfg.merge_configs(base, {"a": {"b": 2}, "d": {"e": 3}, "x": {"y": 1}})
    assert merged == {"a": {"b": 2, "c": [1]}, "d": {"e": 3}, "x": {"y": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "x": 1}
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("distill: {seeds: [3, 4], train: {steps: 7}}\n")
    study = cfg.load_config(ROOT / "config.yaml", overlay)
    assert study.distill.seeds == [3, 4] and study.distill.train.steps == 7
    assert study.distill.train.batch_size == 32  # config.yaml's, untouched by the overlay
    overlay.write_text("distill: {seeds: [3, 3]}\n")
    with pytest.raises(cfg.ConfigError, match=r"overlay.yaml: config key 'distill.seeds'"):
        cfg.load_config(ROOT / "config.yaml", overlay)


@pytest.mark.parametrize(
    "text,written",
    [("2e-5", "2.0e-5"), ("1E3", "1.0e+3"), ("1.0e5", "1.0e+5"), ("-.5e-3", "-0.5e-3")],
)
def test_a_number_yaml_reads_as_text_says_how_to_write_it(tmp_path, text, written):
    """YAML 1.1 (PyYAML) reads 2e-5 as a string: the error says what to write instead, and the
    spelling it suggests is one YAML reads as that number."""
    path = tmp_path / "config.yaml"
    path.write_text(
        (ROOT / "config.yaml")
        .read_text()
        .replace("learning_rate: 2.0e-5", f"learning_rate: {text}")
    )
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(path)
    message = str(err.value)
    assert "config key 'distill.train.learning_rate'" in message and "\n" not in message
    assert f"(YAML reads {text} as text: write {written})" in message
    assert yaml.safe_load(f"x: {written}")["x"] == float(text)
    quoted = default_config()
    quoted["teacher"]["train"]["grad_clip"] = "1.0"
    with pytest.raises(cfg.ConfigError, match=r"teacher\.train\.grad_clip'.*without quotes"):
        cfg.parse_config(quoted)


def test_an_overlay_given_alone_says_to_put_config_yaml_first(capsys):
    seeds = "configs/seeds.yaml"
    expected = (
        f"{seeds} has no tasks, teacher, students: it changes config.yaml, so give both, "
        f"config.yaml first: --configfile config.yaml {seeds}"
    )
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(seeds)
    assert str(err.value) == expected
    assert main(["check-config", seeds]) == 1
    assert capsys.readouterr().err.strip() == f"ketchup check-config: error: {expected}"


@pytest.mark.parametrize(
    "key,value,problem",
    [
        ("d_model", "many", "expected an integer, got 'many'"),
        ("num_heads", -7, "-7 is not allowed; a size or count must be at least 1"),
        ("d_kv", [1, 2], "expected an integer, got [1, 2]"),
        ("num_decoder_layers", 0, "0 is not allowed; a count must be at least 1"),
        ("dropout_rate", 1.5, "1.5 is not allowed; a dropout probability is between 0 and 1"),
        ("d_modle", 64, "T5Config does not know 'd_modle'"),
    ],
)
def test_a_bad_architecture_value_is_refused_naming_its_key(key, value, problem):
    """The transformers config is built from each `architecture` when the config is checked
    (no weights), so a value the model could not be built with fails here, by key."""
    data = default_config()
    data["students"]["t5-tiny"]["model"]["architecture"][key] = value
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_config(data)
    message = str(err.value)
    where = "students.t5-tiny.model.architecture"
    assert message.startswith(f"config key '{where}") and "\n" not in message, message
    assert problem in message, message
    if key != "d_modle":
        assert message.startswith(f"config key '{where}.{key}': ")


def test_study_names_and_the_new_keys_are_checked():
    data = default_config()
    assert cfg.parse_config(copy.deepcopy(data)).study == "default"
    data["study"] = "my study"
    with pytest.raises(cfg.ConfigError, match=r"config key 'study': 'my study' does not match"):
        cfg.parse_config(data)
    data = default_config()
    data["tasks"]["restaurants"]["references_field"] = ["refs"]
    with pytest.raises(cfg.ConfigError, match=r"'tasks\.restaurants\.references_field'"):
        cfg.parse_config(data)
    data = default_config()
    data["tasks"]["restaurants"]["revision"] = "main"
    with pytest.raises(
        cfg.ConfigError, match=r"'tasks\.restaurants\.revision': pins a hub dataset"
    ):
        cfg.parse_config(data)


def test_a_changed_model_type_replaces_the_architecture_block(tmp_path, capsys):
    """An overlay that turns the T5 student into a GPT-2 gets GPT-2's keys only (T5's d_ff and
    d_kv mean nothing to GPT2Config); one that keeps the type changes only the keys it names."""
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}
    overlay = tmp_path / "gpt2.yaml"
    overlay.write_text(yaml.safe_dump({"students": {"t5-tiny": {"model": {"architecture": gpt2}}}}))
    study = cfg.load_config(ROOT / "config.yaml", overlay)
    assert study.students["t5-tiny"].model.architecture == gpt2
    assert main(["check-config", str(ROOT / "config.yaml"), str(overlay)]) == 0
    assert "valid" in capsys.readouterr().out

    base = default_config()["students"]["t5-tiny"]["model"]["architecture"]
    wider = {"students": {"t5-tiny": {"model": {"architecture": {"model_type": "t5", "d_ff": 8}}}}}
    merged = cfg.merge_configs(default_config(), wider)
    assert merged["students"]["t5-tiny"]["model"]["architecture"] == {**base, "d_ff": 8}


def test_the_teacher_reads_sources_as_far_as_the_study_evaluates_them():
    """teacher.max_source_length null (the paper's configs) is evaluation.max_source_length in
    the parsed config, in either mode; set, it is the teacher's own."""
    for name in ("paper.yaml", "paper_qwen.yaml"):
        data = yaml.safe_load((ROOT / "configs" / name).read_text())
        study = cfg.parse_config(data)
        assert study.teacher.max_source_length == study.evaluation.max_source_length == 512
        assert data["teacher"]["max_source_length"] == 512  # what the workflow's jobs are given
        assert study.teacher.train.max_source_length == 128  # unused by a prompted teacher
    data = default_config()
    data["teacher"]["max_source_length"] = 40
    assert cfg.parse_config(data).teacher.outputs_source_length() == 40
    unfilled = cfg.parse_section(
        cfg.TeacherConfig, data["teacher"] | {"max_source_length": None}, "teacher", "teacher"
    )
    with pytest.raises(cfg.ConfigError, match=r"config key 'teacher\.max_source_length'"):
        unfilled.outputs_source_length()


def test_both_paper_configs_train_with_the_released_codes_policy_gradient():
    """configs/paper.yaml and configs/paper_qwen.yaml run LLMR and KETCHUP as the released
    KETCHUP code does wherever a key can say it (docs/paper_configs.md lists the rest): greedy
    rollouts, weight pi, denom 1, no normalisation, reward_clip 50, per-sequence baseline and
    token mean, its sequence end, V = max."""
    released = {"weight": "pi", "normalize": "none", "denom": 1.0, "clip": 50.0}
    for name in ("paper.yaml", "paper_qwen.yaml"):
        distill = cfg.parse_config(yaml.safe_load((ROOT / "configs" / name).read_text())).distill
        pg = distill.policy_gradient
        assert {k: getattr(pg, k) for k in released} == released, name
        assert pg.scope == "sequence" and pg.uniform_ce == 0.0, name
        assert distill.sequence_end == "released" and distill.value == "max", name
        assert distill.rollout.greedy, name
