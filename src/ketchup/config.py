"""The study configuration: JSON-schema validation with defaults, then typed dataclasses.

`config.schema.yaml` (beside this file; workflow/schemas/config.schema.yaml links to it) is the one
place that holds defaults and allowed values. `load_config` validates a YAML file against it, fills
the defaults, then builds the dataclasses below, which reject unknown and missing keys by name and
check what a schema cannot say (cross-field rules). Each CLI verb gets only its stage's section
(`parse_section`), so Snakemake reruns a stage only when that section changes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ketchup.errors import ConfigError, yaml_number_hint

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

Method = Literal[
    "sft",
    "seqkd",
    "kl",
    "js",
    "tvd",
    "llmr",
    "llmr_mean",
    "llmr_minvar",
    "ketchup",
    "gkd",
    "minillm",
]
Dataset = Literal[
    "embedded", "arithmetic", "xsum", "europarl_en_nl", "gsm8k", "dailydialog", "dart", "file"
]
Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# sft, seqkd and kl train from the student's initialisation on fixed sequences; the first two
# never run the teacher model (sft reads references, seqkd the teacher's cached outputs).
TEACHER_FREE_METHODS = frozenset({"sft", "seqkd"})
# Trained from the KL-distilled student on sequences the student samples (js / tvd mix in the
# teacher's outputs): the paper's warm start, one cached `kl` job per (task, student, seed).
WARM_STARTED_METHODS = frozenset(
    {"js", "tvd", "llmr", "llmr_mean", "llmr_minvar", "ketchup", "gkd", "minillm"}
)
WARM_START_METHOD = "kl"


# ----------------------------------------------------------------------------------------------
# Typed sections. Field names and types mirror the schema; defaults live in the schema only.


@dataclass(frozen=True)
class SplitLimits:
    train: int | None
    validation: int | None
    test: int | None


@dataclass(frozen=True)
class SplitFiles:
    train: str
    validation: str
    test: str


@dataclass(frozen=True)
class EmbeddedTaskConfig:
    n_train: int
    n_validation: int
    n_test: int
    n_references: int
    seed: int


@dataclass(frozen=True)
class TaskConfig:
    dataset: Dataset
    files: SplitFiles | None
    revision: str | None
    source_field: str | None
    target_field: str | None
    references_field: str | None
    prompt: str | None
    metric: Literal["bleu", "rouge", "accuracy"] | None
    selection_metric: Literal["bleu", "chrf", "rouge1", "rouge2", "rougeL", "accuracy"] | None
    max_examples: SplitLimits
    embedded: EmbeddedTaskConfig

    def check(self, where: str) -> None:
        if self.dataset == "file":
            for key in ("files", "source_field"):
                if getattr(self, key) is None:
                    raise ConfigError(
                        f"config key '{where}.{key}': required when dataset is 'file'"
                    )
            if self.target_field is None and self.references_field is None:
                raise ConfigError(
                    f"config key '{where}.target_field': required when dataset is 'file' (or "
                    "references_field, a column with a list of references)"
                )
        if self.revision is not None and self.dataset in ("embedded", "arithmetic", "file"):
            raise ConfigError(
                f"config key '{where}.revision': pins a hub dataset; dataset "
                f"'{self.dataset}' is not loaded from the hub"
            )
        if self.selection_metric is not None:
            from ketchup.data.catalog import DATASET_METRICS, REPORTED_METRICS

            if self.metric is None and self.dataset not in DATASET_METRICS:
                raise ConfigError(
                    f"config key '{where}.dataset': unknown dataset {self.dataset!r}; known "
                    f"datasets: {', '.join(DATASET_METRICS)}"
                )
            metric = self.metric if self.metric is not None else DATASET_METRICS[self.dataset]
            allowed = REPORTED_METRICS.get(metric, ("accuracy",))
            if self.selection_metric not in allowed:
                raise ConfigError(
                    f"config key '{where}.selection_metric': {self.selection_metric!r} is not a "
                    f"metric this task reports; allowed: {', '.join(allowed)}"
                )
        if self.prompt is not None and "{source}" not in self.prompt:
            raise ConfigError(
                f"config key '{where}.prompt': must contain the placeholder {{source}}"
            )


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str | None
    architecture: dict[str, Any] | None
    precision: Literal["auto", "float32", "bfloat16", "float16"]
    # last and defaulted (the schema's default) so that ModelConfig(None, arch, precision) builds
    revision: str | None = None

    @property
    def from_scratch(self) -> bool:
        return self.name_or_path is None

    def check(self, where: str) -> None:
        if (self.name_or_path is None) == (self.architecture is None):
            raise ConfigError(
                f"config key '{where}': set exactly one of name_or_path (a pretrained model) "
                "and architecture (a model built from scratch)"
            )
        if self.architecture is not None:
            # the transformers config, built now (no weights): a bad size is refused by key here,
            # not as a tensor error inside the first job
            from ketchup.models.architectures import architecture_config

            architecture_config(self.architecture, where=where)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    eval_every: int
    patience: int
    max_source_length: int
    max_target_length: int
    seed: int
    parallel: Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int
    batch_size: int
    num_beams: int


@dataclass(frozen=True)
class TeacherConfig:
    mode: Literal["finetune", "prompted"]
    model: ModelConfig
    train: TrainConfig
    generation: GenerationConfig
    # its outputs' source length; parse_config fills null with evaluation.max_source_length
    max_source_length: int | None

    def outputs_source_length(self) -> int:
        """The source length of the teacher's outputs (set, or filled in by parse_config)."""
        if self.max_source_length is None:
            raise ConfigError(
                "config key 'teacher.max_source_length': needed to write the teacher's outputs "
                "(the workflow sets it to evaluation.max_source_length when it is null)"
            )
        return self.max_source_length

    def check(self, where: str) -> None:
        self.model.check(f"{where}.model")
        if self.mode == "prompted" and self.model.from_scratch:
            raise ConfigError(
                f"config key '{where}.mode': 'prompted' needs a pretrained model "
                f"(set {where}.model.name_or_path)"
            )


@dataclass(frozen=True)
class StudentConfig:
    model: ModelConfig
    train: TrainConfig

    def check(self, where: str) -> None:
        self.model.check(f"{where}.model")


@dataclass(frozen=True)
class RolloutConfig:
    greedy: bool
    top_k: int
    temperature: float
    max_new_tokens: int
    max_source_length: int
    drop_truncated: bool


@dataclass(frozen=True)
class VarianceConfig:
    rollout_sets: int
    sources: int
    sketch_dim: int | None
    seed: int


@dataclass(frozen=True)
class PolicyGradientConfig:
    weight: Literal["pi", "ratio", "none"]
    normalize: Literal["none", "std"]
    denom: float
    clip: float | None
    uniform_ce: float
    scope: Literal["batch", "sequence"]


@dataclass(frozen=True)
class GkdConfig:
    beta: float
    lmbda: float
    temperature: float
    top_k: int


@dataclass(frozen=True)
class MinillmConfig:
    teacher_mix: float
    clip_ratio: float
    length_norm: bool
    whiten: bool
    single_step: bool


@dataclass(frozen=True)
class FDistillConfig:
    beta: float


@dataclass(frozen=True)
class DistillConfig:
    methods: list[Method]
    ks: list[int]
    seeds: list[int]
    value: Literal["max", "soft"]
    sequence_end: Literal["equations", "released"]
    teacher_placement: Literal["replicate", "shard", "spread"]
    train: TrainConfig
    rollout: RolloutConfig
    policy_gradient: PolicyGradientConfig
    gkd: GkdConfig
    minillm: MinillmConfig
    f_distill: FDistillConfig
    variance: VarianceConfig

    @property
    def systems(self) -> list[str]:
        """One name per trained system: each method, with ketchup once per K (ketchup_k4)."""
        names = []
        for method in self.methods:
            names += [f"ketchup_k{k}" for k in self.ks] if method == "ketchup" else [method]
        return names


# The keys of the `distill` section that each method's training reads: a job gets only these, so
# that adding a K or a seed, or retuning another method, reruns nothing that did not change.
_ONPOLICY_KEYS = ("train", "rollout", "teacher_placement")
_METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "sft": (),
    "seqkd": (),
    "kl": ("teacher_placement",),
    "js": (*_ONPOLICY_KEYS, "f_distill"),
    "tvd": (*_ONPOLICY_KEYS, "f_distill"),
    "gkd": (*_ONPOLICY_KEYS, "gkd"),
    "minillm": (*_ONPOLICY_KEYS, "minillm"),
    # K = 1 is the same under both sequence-end conventions, so only ketchup reads it
    **{
        m: (*_ONPOLICY_KEYS, "value", "policy_gradient")
        for m in ("llmr", "llmr_mean", "llmr_minvar")
    },
    "ketchup": (*_ONPOLICY_KEYS, "value", "sequence_end", "policy_gradient"),
}


def method_config_keys(method: str) -> tuple[str, ...]:
    """The keys of the `distill` section that training with `method` reads."""
    return _METHOD_KEYS[method]


def job_distill_section(distill: dict[str, Any], system: str) -> dict[str, Any]:
    """The part of a (default-filled) `distill` section that training `system` depends on."""
    method, _ = split_system(system)
    return {key: distill[key] for key in method_config_keys(method)}


def teacher_training_section(teacher: dict[str, Any]) -> dict[str, Any]:
    """The `teacher` section that training the teacher reads: all but the outputs' source length
    (only teacher-outputs reads it, so changing it reruns the outputs, not the training)."""
    return {key: value for key, value in teacher.items() if key != "max_source_length"}


# The `distill` keys the gradient-variance stage reads: what the systems it measures train with.
VARIANCE_KEYS = ("methods", "ks", "value", "sequence_end", "rollout", "policy_gradient", "variance")


def variance_distill_section(distill: dict[str, Any]) -> dict[str, Any]:
    """The part of a (default-filled) `distill` section the gradient-variance stage reads."""
    return {key: distill[key] for key in VARIANCE_KEYS}


def split_system(name: str) -> tuple[str, int]:
    """'ketchup_k4' -> ('ketchup', 4); every other method has K = 1 ('llmr' -> ('llmr', 1))."""
    method, sep, k = name.rpartition("_k")
    if sep and method == "ketchup" and k.isdigit() and int(k) >= 1:
        return method, int(k)
    if name in typing.get_args(Method) and name != "ketchup":
        return name, 1
    raise ConfigError(
        f"unknown system {name!r}: a method of {', '.join(typing.get_args(Method))} with "
        "ketchup written ketchup_k<K> (e.g. ketchup_k4)"
    )


@dataclass(frozen=True)
class EvaluationConfig:
    generation: GenerationConfig
    max_source_length: int


@dataclass(frozen=True)
class JudgeConfig:
    enabled: bool
    base_url: str | None
    model: str | None
    api_key_env: str
    protocols: list[Literal["pointwise", "pairwise"]]
    max_examples: int
    concurrency: int
    timeout_s: float
    max_retries: int
    max_total_s: float
    temperature: float
    max_tokens: int
    dry_run: bool
    templates_dir: str | None

    def check(self, where: str) -> None:
        if self.enabled and not self.model:
            raise ConfigError(f"config key '{where}.model': required when {where}.enabled is true")


@dataclass(frozen=True)
class ResourceConfig:
    threads: int
    mem_mb: int
    runtime: int
    gpu: int


@dataclass(frozen=True)
class ResourcesConfig:
    prepare_data: ResourceConfig
    tokenizer: ResourceConfig
    teacher: ResourceConfig
    teacher_outputs: ResourceConfig
    distill: ResourceConfig
    grad_variance: ResourceConfig
    generate: ResourceConfig
    score: ResourceConfig
    report: ResourceConfig


@dataclass(frozen=True)
class StudyConfig:
    study: str
    keep_checkpoints: bool
    tasks: dict[str, TaskConfig]
    tokenizer: TokenizerConfig
    teacher: TeacherConfig
    students: dict[str, StudentConfig]
    distill: DistillConfig
    evaluation: EvaluationConfig
    judge: JudgeConfig
    resources: ResourcesConfig = field(repr=False)

    def check(self, where: str = "config") -> None:
        for name, task in self.tasks.items():
            task.check(f"tasks.{name}")
        self.teacher.check("teacher")
        self.judge.check("judge")
        for name, student in self.students.items():
            student.check(f"students.{name}")
        if self.distill.teacher_placement == "shard" and "minillm" in self.distill.methods:
            raise ConfigError(
                "config key 'distill.teacher_placement': shard cannot serve minillm, whose "
                "rollouts step the teacher token by token (a sharded teacher's step is a "
                "collective the processes would take a different number of times): use "
                "replicate or spread, or leave minillm out of distill.methods"
            )

    @property
    def needs_tokenizer(self) -> bool:
        """A tokenizer is trained when any model is built from scratch."""
        models = [self.teacher.model, *(s.model for s in self.students.values())]
        return any(m.from_scratch for m in models)


# ----------------------------------------------------------------------------------------------
# Schema validation with defaults (the same extension snakemake.utils.validate applies).


@functools.cache
def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as f:
        return yaml.safe_load(f)


def _default_filling_validator(schema: dict[str, Any]):
    import jsonschema

    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop:
                    # deepcopy: a mutable default must not be shared between instances
                    instance.setdefault(key, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(schema)


def error_path(error, prefix: str = "") -> str:
    """'teacher.train.learning_rate' for a jsonschema error at that location below `prefix`."""
    parts = [prefix] if prefix else []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts) or "<top level>"


def describe_error(error, prefix: str = "") -> str:
    """One line naming the key and what is allowed there."""
    path = error_path(error, prefix)
    join = "" if path == "<top level>" else f"{path}."
    if error.validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = f"{join}{unknown[0]}" if unknown else path
        return f"config key '{key}': unknown key; allowed keys: {allowed}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"config key '{join}{missing[0]}': missing (required)"
    message = error.message
    if error.validator == "enum":
        allowed = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        message = f"{error.instance!r} is not allowed; allowed values: {allowed}"
    elif error.validator in ("oneOf", "anyOf") and error.context:
        best = min(error.context, key=lambda e: len(e.message))
        message = best.message
    elif error.validator == "type":
        message += yaml_number_hint(error.instance)
    return f"config key '{path}': {message}"


def validate_with_defaults(
    data: dict[str, Any], schema: dict[str, Any] | None = None, prefix: str = ""
) -> dict[str, Any]:
    """Fill schema defaults into `data` (in place) and raise ConfigError on the first problem."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    validator = _default_filling_validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise ConfigError(describe_error(error, prefix))
    return data


def section_schema(name: str) -> dict[str, Any]:
    """The schema of one `$defs` entry, with the definitions it refers to."""
    schema = load_schema()
    if name not in schema["$defs"]:
        raise KeyError(f"no schema section {name!r}; known: {sorted(schema['$defs'])}")
    return {"$defs": schema["$defs"], **schema["$defs"][name]}


# ----------------------------------------------------------------------------------------------
# Dicts -> dataclasses, rejecting unknown and missing keys by name.


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _build(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"config key '{where}': {value!r} does not fit {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key '{where}': {value!r} is not allowed; allowed values: "
                + ", ".join(map(str, allowed))
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if not _type_ok(value, tp):
        hint = yaml_number_hint(value) if tp in (int, float) else ""
        raise ConfigError(
            f"config key '{where}': expected {getattr(tp, '__name__', tp)}, got {value!r}{hint}"
        )
    return float(value) if tp is float else value


def from_dict(cls: type, data: Any, where: str):
    """Build dataclass `cls` from `data`; unknown or missing keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"config key '{prefix}{unknown[0]}': unknown key; allowed keys: {', '.join(names)}"
        )
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"config key '{prefix}{missing[0]}': missing")
    return cls(**{n: _build(hints[n], data[n], f"{prefix}{n}") for n in names})


def parse_section(cls: type, data: dict[str, Any] | str, section: str, where: str = ""):
    """A stage's config: JSON text or a dict -> schema defaults and checks -> dataclass `cls`."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise ConfigError(f"stage config is not valid JSON: {e}") from None
    data = copy.deepcopy(data)
    validate_with_defaults(data, section_schema(section), where)
    built = from_dict(cls, data, where)
    if hasattr(built, "check"):
        built.check(where)
    return built


def to_dict(obj: Any) -> Any:
    """Dataclasses back to plain data (what the stages write beside their outputs)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


BASE_CONFIG = "config.yaml"


def overlay_error(data: dict[str, Any], paths: typing.Sequence[str | Path]) -> str | None:
    """One line for config files without the study's base (tasks, teacher, students), given
    without config.yaml: an overlay such as configs/seeds.yaml, meant to go on top of it."""
    missing = [key for key in ("tasks", "teacher", "students") if key not in data]
    if not missing or not paths or any(Path(p).name == BASE_CONFIG for p in paths):
        return None
    files = " ".join(map(str, paths))
    return (
        f"{files} has no {', '.join(missing)}: it changes {BASE_CONFIG}, so give both, "
        f"{BASE_CONFIG} first: --configfile {BASE_CONFIG} {files}"
    )


def parse_config(data: dict[str, Any]) -> StudyConfig:
    """Validate a whole config mapping (in place: defaults are filled) and type it."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    validate_with_defaults(data)
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and teacher.get("max_source_length") is None:
        # The teacher's outputs read sources as far as the systems they are compared with do.
        teacher["max_source_length"] = data["evaluation"]["max_source_length"]
    study = from_dict(StudyConfig, data, "")
    study.check()
    return study


def merge_configs(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` applied key by key (nested mappings merged, anything else replaced),
    as the workflow merges the files of `--configfile A B`; neither input is modified.

    A mapping that names another `model_type` than the one it is merged into (an `architecture`
    block changed from t5 to gpt2, say) replaces it whole: one transformers config's keys mean
    nothing to another's (T5's d_ff and d_kv in a GPT-2 config).
    """
    out = copy.deepcopy(base)
    for key, value in change.items():
        old = out.get(key)
        merge = isinstance(value, dict) and isinstance(old, dict)
        if merge and "model_type" in value and "model_type" in old:
            merge = value["model_type"] == old["model_type"]
        out[key] = merge_configs(old, value) if merge else copy.deepcopy(value)
    return out


def read_config_files(*paths: str | Path) -> dict[str, Any]:
    """The mapping of one config file, or of several merged in order (later keys win)."""
    data: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = merge_configs(data, loaded or {})
    return data


def load_config(*paths: str | Path) -> StudyConfig:
    """The study of one config file, or of several merged in order (config.yaml seeds.yaml)."""
    data = read_config_files(*paths)
    overlay = overlay_error(data, paths)
    if overlay:
        raise ConfigError(overlay)
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{' + '.join(map(str, paths))}: {e}") from None


def check_config_main(args) -> int:
    """`ketchup check-config FILE [FILE ...]`: validate a study config and summarise it."""
    study = load_config(*args.configfile)
    print(
        f"{' + '.join(args.configfile)}: valid; tasks: {', '.join(study.tasks)}; students: "
        f"{', '.join(study.students)}; methods: {', '.join(study.distill.methods)}; "
        f"K grid: {study.distill.ks}; seeds: {study.distill.seeds}"
    )
    return 0
