"""`ketchup plan`: what a study will cost before it runs: jobs, GPU-hours and disk per rule.

Jobs are the ones the workflow schedules for the config from scratch (`snakemake -n --forceall`
counts the same; a test compares them). Each job's compute is estimated from parameter counts,
token counts and step counts, the usual way:

- 2 N FLOPs per token of a forward pass and 6 N per trained token (forward and backward); for an
  encoder-decoder, N is the encoder's parameters for source tokens and the rest for target tokens;
  generating T tokens with the KV cache costs one forward over the prompt and T tokens;
- every sequence at its length cap (`max_source_length`, `max_target_length`, `max_new_tokens`),
  every run to its last step (no early stop): an upper bound;
- divided by an achieved throughput per GPU, which is an assumption (printed as one) until a GPU
  measurement calibrates it: `ketchup bench --gpu` writes results/bench/gpu_calibration.json, and
  `ketchup plan --calibration FILE` reads it.

Parameter counts: a model built from `architecture` is built on PyTorch's meta device (no memory)
and counted; a local directory from its config.json; a hub id from the table of the paper's models
below, or from the local hub cache. Disk: a trained model's directory holds the model and the best
checkpoint (4 bytes per parameter each) and the resumable checkpoint (model and AdamW's two
moments: 12 bytes per parameter); text files about 4 bytes per token.

Memory per GPU of an on-policy distill job, for each engine (`distill.train.parallel`) and teacher
placement (`distill.teacher_placement`) over the job's `resources.distill.gpu` GPUs:
- the student in training: float32 weights, gradients and AdamW's two moments, 16 bytes per
  parameter, whole on every GPU under ddp, split over the GPUs under fsdp (plus one block
  gathered at a time, left out);
- the no-grad teacher at its precision (2 bytes per parameter in bfloat16): whole on every GPU
  (replicate), or split over the GPUs (shard, spread);
- activations of the student's trained pass: 34 bytes per token, hidden unit and layer (the
  per-layer estimate of Korthikanti et al. 2022 for 16-bit activations without recomputation,
  attention scores left out), for each GPU's share of the batch at the length caps;
- logits: the student's and the teacher's (rows x new tokens x vocabulary, float32), each with
  its log-softmax: 16 bytes per logit.
An estimate to compare choices, not a measurement: the CUDA context, the allocator's slack and
the decoding's KV cache come on top. A config whose choice does not fit `--gpu-memory` GiB is
refused, naming the keys that would make it fit.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketchup.config import (
    SPLITS,
    TEACHER_FREE_METHODS,
    WARM_START_METHOD,
    WARM_STARTED_METHODS,
    ConfigError,
    ModelConfig,
    StudyConfig,
    TaskConfig,
    TrainConfig,
    split_system,
)
from ketchup.report.studies import hub_datasets, hub_models

# An H100 SXM's dense bfloat16 peak; the assumed share of it that a distillation job achieves.
H100_BF16_PEAK = 989.4e12
ASSUMED_SHARE = 0.40
BYTES_PER_TOKEN = 4  # text files: about 4 characters of English per token
TRAINED_MODEL_BYTES = 4 + 4 + 12  # per parameter: model/, best/, checkpoint/ (model + AdamW)
CALIBRATION_FILE = "results/bench/gpu_calibration.json"

# The paper's models, counted from their published configs (each tied tensor once):
# hub id -> (parameters, of which on the encoder side; 0 for decoder-only models).
KNOWN_SIZES: dict[str, tuple[int, int]] = {
    "google/flan-t5-xl": (2_783_959_040, 1_223_560_192),
    "t5-base": (222_903_552, 109_628_544),
    "t5-small": (60_506_624, 35_330_816),
    "Qwen/Qwen1.5-4B": (3_950_369_280, 0),
    "Qwen/Qwen1.5-0.5B": (463_987_712, 0),
}
KNOWN_SIZES.update({f"google-t5/{name}": KNOWN_SIZES[name] for name in ("t5-base", "t5-small")})

# (hidden, layers of encoder and decoder, vocabulary) of the same models, for the memory estimate.
KNOWN_SHAPES: dict[str, tuple[int, int, int]] = {
    "google/flan-t5-xl": (2048, 48, 32128),
    "t5-base": (768, 24, 32128),
    "t5-small": (512, 12, 32128),
    "Qwen/Qwen1.5-4B": (2560, 40, 151936),
    "Qwen/Qwen1.5-0.5B": (1024, 24, 151936),
}
KNOWN_SHAPES.update({f"google-t5/{name}": KNOWN_SHAPES[name] for name in ("t5-base", "t5-small")})

# Rows per split of the paper's hub datasets (before carving and max_examples), approximate
# where the hub's count may move by a few rows between revisions.
HUB_ROWS: dict[str, dict[str, int]] = {
    "xsum": {"train": 204_045, "validation": 11_332, "test": 11_334},
    "europarl_en_nl": {"train": 2_000_000},
    "gsm8k": {"train": 7_473, "test": 1_319},
    "dailydialog": {"train": 11_118, "validation": 1_000, "test": 1_000},
    "dart": {"train": 30_526, "validation": 2_768, "test": 6_959},
}


# --------------------------------------------------------------------------------------------
# Model sizes and FLOPs


@dataclass(frozen=True)
class ModelSize:
    """A model's parameter count, the encoder's share of it, and where the count comes from."""

    parameters: int
    encoder: int  # 0 for a decoder-only model
    origin: str
    hidden: int = 0  # the model's width, layers (encoder and decoder) and vocabulary, 0 if unknown
    layers: int = 0
    vocab: int = 0

    def forward_flops(self, source_tokens: int, target_tokens: int) -> float:
        """One forward pass (or KV-cached generation) over a prompt and its target tokens."""
        if self.encoder:
            decoder = self.parameters - self.encoder
            return 2.0 * (self.encoder * source_tokens + decoder * target_tokens)
        return 2.0 * self.parameters * (source_tokens + target_tokens)

    def train_flops(self, source_tokens: int, target_tokens: int) -> float:
        """Forward and backward (twice the forward) over one training sequence."""
        return 3.0 * self.forward_flops(source_tokens, target_tokens)


def _count_built(config: Any, origin: str) -> ModelSize:
    """Build `config`'s model on the meta device (no memory, no weights) and count it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto_cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto_cls.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.get_encoder().parameters()) if seq2seq else 0
    hidden = next(
        (
            getattr(config, k)
            for k in ("d_model", "hidden_size", "n_embd")
            if getattr(config, k, None)
        ),
        0,
    )
    if seq2seq:
        layers = config.num_layers + (
            getattr(config, "num_decoder_layers", None) or config.num_layers
        )
    else:
        layers = next(
            (
                getattr(config, k)
                for k in ("num_hidden_layers", "n_layer")
                if getattr(config, k, None)
            ),
            0,
        )
    return ModelSize(total, encoder, origin, int(hidden), int(layers), int(config.vocab_size))


def model_size(model: ModelConfig, vocab_size: int, where: str) -> ModelSize | None:
    """The size of a configured model, or None when nothing here can tell it."""
    from transformers import AutoConfig

    if model.from_scratch:
        arch = dict(model.architecture)
        model_type = arch.pop("model_type", None)
        for key in ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id"):
            arch.pop(key, None)
        try:
            config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **arch)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"config key '{where}.architecture': {err}") from None
        return _count_built(config, f"{model_type} architecture, vocabulary {vocab_size}")
    name = model.name_or_path
    if Path(name).expanduser().is_dir():
        config = AutoConfig.from_pretrained(Path(name).expanduser(), local_files_only=True)
        return _count_built(config, f"{name}/config.json")
    if name in KNOWN_SIZES:
        return ModelSize(*KNOWN_SIZES[name], "known size", *KNOWN_SHAPES[name])
    try:  # a hub model fetched before: its config is in the local cache
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None
    return _count_built(config, "hub cache")


# --------------------------------------------------------------------------------------------
# Split sizes


def _file_rows(path: Path) -> int | None:
    """Examples in a task file (JSONL, JSON, CSV or Parquet), None when it cannot be read."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open(encoding="utf-8", newline="") as f:
        if suffix == ".csv":
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
        if suffix == ".json":
            text = f.read()
            try:
                data = json.loads(text)
            except json.JSONDecodeError:  # JSON lines under a .json name
                return sum(1 for line in text.splitlines() if line.strip())
            return len(data) if isinstance(data, list) else None
        return sum(1 for line in f if line.strip())


def split_sizes(task: TaskConfig) -> dict[str, int | None]:
    """Examples per split as prepare-data writes them: carved, then capped by max_examples."""
    from ketchup.data.registry import GENERATED, carve_size, dataset_spec

    if task.dataset in GENERATED:
        e = task.embedded
        rows = {"train": e.n_train, "validation": e.n_validation, "test": e.n_test}
        carved = []
    elif task.files is not None:
        files = {split: Path(getattr(task.files, split)) for split in SPLITS}
        carved = [
            s for s in SPLITS if s != "train" and files[s].resolve() == files["train"].resolve()
        ]
        rows = {s: _file_rows(files[s]) for s in SPLITS if s not in carved}
    else:
        spec = dataset_spec(task.dataset)
        carved = [s for s in SPLITS if spec.hub_split(s) is None]
        known = HUB_ROWS.get(task.dataset, {})
        rows = {s: known.get(s) for s in SPLITS if s not in carved}
    if carved and rows["train"] is not None:
        size = carve_size(rows["train"])
        rows.update({split: size for split in carved})
        rows["train"] -= size * len(carved)
    rows = {split: rows.get(split) for split in SPLITS}
    for split in SPLITS:
        limit = getattr(task.max_examples, split)
        if limit is not None and rows[split] is not None:
            rows[split] = min(rows[split], limit)
    return rows


# --------------------------------------------------------------------------------------------
# The jobs


@dataclass(frozen=True)
class Job:
    rule: str
    flops: float | None  # None: a model's size is unknown
    disk: float  # bytes written
    what: str = ""  # wildcards, for errors and the longest-job line


def _evaluations(cfg: TrainConfig) -> int:
    """Validations of one run: every eval_every updates and after the last one."""
    return math.ceil(cfg.steps / cfg.eval_every)


def _times(n: int | None, flops: float | None) -> float | None:
    return None if n is None or flops is None else n * flops


def _add(*terms: float | None) -> float | None:
    return None if any(t is None for t in terms) else float(sum(terms))


class _Costs:
    """Per-job FLOPs of the model rules of one study (sizes resolved once)."""

    def __init__(self, study: StudyConfig):
        vocab = study.tokenizer.vocab_size
        self.study = study
        self.teacher = model_size(study.teacher.model, vocab, "teacher.model")
        self.students = {
            name: model_size(s.model, vocab, f"students.{name}.model")
            for name, s in study.students.items()
        }

    def _fwd(self, size: ModelSize | None, source: int, target: int) -> float | None:
        return None if size is None else size.forward_flops(source, target)

    def _train(self, size: ModelSize | None, source: int, target: int) -> float | None:
        return None if size is None else size.train_flops(source, target)

    def teacher_training(self, n_validation: int | None) -> float | None:
        t = self.study.teacher
        cfg, new = t.train, t.generation.max_new_tokens
        updates = cfg.steps * cfg.batch_size
        train = _times(
            updates, self._train(self.teacher, cfg.max_source_length, cfg.max_target_length)
        )
        evals = _times(n_validation, self._fwd(self.teacher, cfg.max_source_length, new))
        return _add(train, _times(_evaluations(cfg), evals))

    def teacher_outputs(self, n: int | None) -> float | None:
        t = self.study.teacher
        return _times(
            n, self._fwd(self.teacher, t.train.max_source_length, t.generation.max_new_tokens)
        )

    def distill(self, student: str, system: str, n_validation: int | None) -> float | None:
        method, _ = split_system(system)
        size, d = self.students[student], self.study.distill
        new = self.study.teacher.generation.max_new_tokens  # validation decoding
        if method in WARM_STARTED_METHODS:
            cfg, rollout = d.train, d.rollout
            source, length = rollout.max_source_length, rollout.max_new_tokens
            # per source: the student's rollouts (GKD samples in a share lmbda of its updates;
            # MiniLLM's teacher runs beside it while sampling), then one teacher pass and one
            # trained student pass per sequence (f-distill adds the teacher's output: two)
            sampled = d.gkd.lmbda if method == "gkd" else 1.0
            sequences = 2.0 if method in ("js", "tvd") else 1.0
            mixing = 1.0 if method == "minillm" else 0.0
            step = _add(
                _times(sampled, self._fwd(size, source, length)),  # rollouts
                _times(mixing, self._fwd(self.teacher, source, length)),
                _times(sequences, self._fwd(self.teacher, source, length)),  # the teacher pass
                _times(sequences, self._train(size, source, length)),
            )
            evaluations = _evaluations(cfg) + 1  # and the warm start's, at step 0
        else:
            cfg = self.study.students[student].train
            source, length = cfg.max_source_length, cfg.max_target_length
            teacher = (
                0.0 if method in TEACHER_FREE_METHODS else self._fwd(self.teacher, source, length)
            )
            step = _add(self._train(size, source, length), teacher)
            evaluations = _evaluations(cfg)
        evals = _times(n_validation, self._fwd(size, cfg.max_source_length, new))
        return _add(_times(cfg.steps * cfg.batch_size, step), _times(evaluations, evals))

    def grad_variance(self, student: str, n_validation: int | None) -> float | None:
        d, size = self.study.distill, self.students[student]
        source, length = d.rollout.max_source_length, d.rollout.max_new_tokens
        sequences = (
            None
            if n_validation is None
            else d.variance.rollout_sets * min(d.variance.sources, n_validation)
        )
        # the rollout, the student's forward and one gradient per measured system (each twice a
        # forward)
        from ketchup.report.studies import measured_systems

        student_passes = 2 + 2 * len(measured_systems(d))
        per_sequence = _add(
            _times(student_passes, self._fwd(size, source, length)),
            self._fwd(self.teacher, source, length),
        )
        return _times(sequences, per_sequence)

    def generate(self, student: str, n_test: int | None) -> float | None:
        e = self.study.evaluation
        return _times(
            n_test,
            self._fwd(self.students[student], e.max_source_length, e.generation.max_new_tokens),
        )


def _text_bytes(n: int | None, tokens: int) -> float:
    return 0.0 if n is None else float(n * tokens * BYTES_PER_TOKEN)


def _model_bytes(size: ModelSize | None) -> float:
    return 0.0 if size is None else float(TRAINED_MODEL_BYTES * size.parameters)


def study_jobs(study: StudyConfig, costs: _Costs | None = None) -> Iterator[Job]:
    """Every job of the study's DAG from scratch (as workflow/rules/ define them), with its cost."""
    costs = costs or _Costs(study)
    teacher, d = study.teacher, study.distill
    systems, seeds = d.systems, d.seeds
    warm_started = any(split_system(s)[0] in WARM_STARTED_METHODS for s in systems)
    if WARM_START_METHOD in systems:
        extra_kl_seeds = []
    else:  # the warm starts of the on-policy systems, or only grad-variance's (the first seed)
        extra_kl_seeds = list(seeds) if warm_started else [seeds[0]]
    for item in [*hub_models(study), *hub_datasets(study)]:  # a local rule: downloads only
        yield Job("fetch", 0.0, 0.0, item)
    for task_name, task in study.tasks.items():
        rows = split_sizes(task)
        n_val, n_test = rows["validation"], rows["test"]
        source = study.evaluation.max_source_length
        yield Job(
            "prepare_data",
            0.0,
            sum(
                _text_bytes(n, source + study.evaluation.generation.max_new_tokens)
                for n in rows.values()
            ),
            task_name,
        )
        if teacher.model.from_scratch:
            yield Job("tokenizer", 0.0, 20.0 * study.tokenizer.vocab_size, task_name)
        if teacher.mode == "finetune":
            yield Job(
                "teacher", costs.teacher_training(n_val), _model_bytes(costs.teacher), task_name
            )
        for split in ("train", "test"):
            n = rows[split]
            disk = _text_bytes(n, teacher.generation.max_new_tokens)
            yield Job("teacher_outputs", costs.teacher_outputs(n), disk, f"{task_name} {split}")
        runs = 0
        for student in study.students:
            size = costs.students[student]
            trained = [(s, seed) for s in systems for seed in seeds]
            trained += [(WARM_START_METHOD, seed) for seed in extra_kl_seeds]
            for system, seed in trained:
                what = f"{task_name} {student} {system} seed{seed}"
                yield Job(
                    "distill", costs.distill(student, system, n_val), _model_bytes(size), what
                )
            yield Job(
                "grad_variance", costs.grad_variance(student, n_val), 0.0, f"{task_name} {student}"
            )
            for system in systems:
                for seed in seeds:
                    what = f"{task_name} {student} {system} seed{seed}"
                    disk = _text_bytes(n_test, study.evaluation.generation.max_new_tokens)
                    yield Job("generate", costs.generate(student, n_test), disk, what)
                    runs += 1
            if study.judge.enabled:
                yield Job("judge", 0.0, 0.0, f"{task_name} {student}")
        for _ in range(runs + 1):  # every student run, and the teacher
            yield Job("score", 0.0, 0.0 if n_test is None else 200.0 * n_test, task_name)
        yield Job("figures", 0.0, 0.0, task_name)
    yield Job("tables", 0.0, 0.0)
    yield Job("all", 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# Throughput and the table

# Rules in DAG order; the resources entry whose `gpu` each rule's jobs ask for.
RULE_RESOURCES = {
    "fetch": None,  # a local rule without a GPU
    "prepare_data": "prepare_data",
    "tokenizer": "tokenizer",
    "teacher": "teacher",
    "teacher_outputs": "teacher_outputs",
    "distill": "distill",
    "grad_variance": "grad_variance",
    "generate": "generate",
    "score": "score",
    "judge": None,  # a local rule without a GPU
    "figures": "report",
    "tables": "report",
    "all": None,
}


def write_calibration(path: str | Path, achieved_flops_per_s: float, **about: Any) -> Path:
    """The file `ketchup plan --calibration` reads: the achieved FLOP/s per GPU and what was
    measured (device, dtype, workload, ...)."""
    from ketchup.files import write_json

    record = {"achieved_flops_per_s": float(achieved_flops_per_s), **about}
    write_json(Path(path), record)
    return Path(path)


@dataclass(frozen=True)
class Throughput:
    flops_per_s: float
    description: str


def read_throughput(calibration: str | None) -> Throughput:
    """The achieved FLOP/s per GPU: measured (`ketchup bench --gpu`'s file) or the assumption."""
    if calibration is None:
        return Throughput(
            ASSUMED_SHARE * H100_BF16_PEAK,
            f"ASSUMED: {ASSUMED_SHARE:.0%} of an H100 SXM's {H100_BF16_PEAK / 1e12:.0f} TFLOP/s "
            "dense bfloat16 peak, until a GPU measurement calibrates it (`ketchup bench --gpu` "
            f"writes {CALIBRATION_FILE}; then pass --calibration {CALIBRATION_FILE})",
        )
    path = Path(calibration)
    if not path.is_file():
        raise FileNotFoundError(
            f"--calibration {path}: no such file (`ketchup bench --gpu` writes it)"
        )
    try:
        data = json.loads(path.read_text())
        value = float(data["achieved_flops_per_s"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path}: not a GPU calibration (needs a number under 'achieved_flops_per_s'; {err})"
        ) from None
    if not value > 0:
        raise ConfigError(f"{path}: achieved_flops_per_s must be positive, got {value}")
    return Throughput(
        value, f"MEASURED by `ketchup bench --gpu` on {data.get('device', '?')} ({path})"
    )


@dataclass
class RuleEstimate:
    rule: str
    jobs: int
    gpus: int  # per job
    flops: float | None
    longest: Job | None
    disk: float


def rule_estimates(study: StudyConfig, jobs: list[Job]) -> list[RuleEstimate]:
    out = []
    for rule, resource in RULE_RESOURCES.items():
        mine = [job for job in jobs if job.rule == rule]
        if not mine:
            continue
        gpus = getattr(study.resources, resource).gpu if resource else 0
        known = [job for job in mine if job.flops is not None]
        flops = None if len(known) < len(mine) else sum(job.flops for job in mine)
        longest = max(known, key=lambda job: job.flops) if known else None
        out.append(RuleEstimate(rule, len(mine), gpus, flops, longest, sum(j.disk for j in mine)))
    return out


def _hours(flops: float, throughput: Throughput, gpus: int = 1) -> float:
    return flops / (throughput.flops_per_s * gpus) / 3600


def _g(value: float) -> str:
    """Three significant figures, without an exponent for everyday sizes."""
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e6 else f"{value:.2e}"


GIB = 2**30
ACTIVATION_BYTES = 34  # per token, hidden unit and layer (Korthikanti et al. 2022, 16-bit)
LOGIT_BYTES = 16  # student and teacher logits, float32, each with its log-softmax
STATE_BYTES = 16  # float32 weights, gradients and AdamW's two moments, per parameter
TEACHER_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto: bfloat16 on a GPU
CHOICES = [  # (train.parallel, teacher_placement); spread is one process holding every GPU
    ("ddp", "replicate"),
    ("ddp", "shard"),
    ("fsdp", "replicate"),
    ("fsdp", "shard"),
    ("ddp", "spread"),
]


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU of an on-policy distill job under one engine and teacher placement."""

    student: str
    parallel: str
    placement: str
    state: float
    teacher: float | None
    activations: float | None
    logits: float | None

    @property
    def total(self) -> float | None:
        parts = (self.state, self.teacher, self.activations, self.logits)
        return None if None in parts else sum(parts)


def distill_memory(study: StudyConfig, costs: _Costs | None = None) -> list[Memory]:
    """The memory per GPU of each student's on-policy distill job, for every choice in CHOICES,
    over the job's `resources.distill.gpu` GPUs (at least one)."""
    costs = costs or _Costs(study)
    d, gpus = study.distill, max(1, study.resources.distill.gpu)
    teacher = costs.teacher
    per_param = TEACHER_BYTES[study.teacher.model.precision]
    rows = []
    for name, size in costs.students.items():
        for parallel, placement in CHOICES:
            processes = 1 if placement == "spread" else gpus
            shards = gpus if parallel == "fsdp" and placement != "spread" else 1
            batch = math.ceil(d.train.batch_size / processes)
            tokens = d.rollout.max_source_length + d.rollout.max_new_tokens
            known = size is not None and size.hidden and size.layers and size.vocab
            rows.append(
                Memory(
                    name,
                    parallel,
                    placement,
                    STATE_BYTES * size.parameters / shards if size else math.nan,
                    None
                    if teacher is None
                    else per_param * teacher.parameters / (1 if placement == "replicate" else gpus),
                    ACTIVATION_BYTES * batch * tokens * size.hidden * size.layers
                    if known
                    else None,
                    LOGIT_BYTES * batch * d.rollout.max_new_tokens * size.vocab if known else None,
                )
            )
    return rows


def memory_refusal(study: StudyConfig, rows: list[Memory], gpu_gib: float) -> str | None:
    """One line when the configured engine and teacher placement do not fit `gpu_gib` per GPU:
    the keys to change and what they would make fit; None when it fits (or runs on the CPU)."""
    if study.resources.distill.gpu < 1:
        return None
    chosen = (study.distill.train.parallel, study.distill.teacher_placement)
    over = [
        r
        for r in rows
        if (r.parallel, r.placement) == chosen and r.total is not None and r.total > gpu_gib * GIB
    ]
    if not over:
        return None
    worst = max(over, key=lambda r: r.total)
    fits = [
        f"distill.train.parallel: {r.parallel} with distill.teacher_placement: {r.placement} "
        f"({r.total / GIB:.3g} GiB)"
        for r in rows
        if r.student == worst.student and r.total is not None and r.total <= gpu_gib * GIB
    ]
    fix = (
        "set " + "; or ".join(fits)
        if fits
        else "give the job more GPUs (resources.distill.gpu) or shorten distill.train.batch_size"
    )
    return (
        f"ketchup plan: student {worst.student}'s distill job needs about "
        f"{worst.total / GIB:.3g} GiB per GPU with distill.train.parallel: {chosen[0]} and "
        f"distill.teacher_placement: {chosen[1]} on {study.resources.distill.gpu} GPU(s), more "
        f"than {gpu_gib:g} GiB (--gpu-memory): {fix}"
    )


def format_memory(study: StudyConfig, rows: list[Memory]) -> list[str]:
    def gib(value: float | None) -> str:
        return "?" if value is None or math.isnan(value) else _g(value / GIB)

    gpus = max(1, study.resources.distill.gpu)
    chosen = (study.distill.train.parallel, study.distill.teacher_placement)
    lines = [
        "",
        f"memory per GPU of an on-policy distill job, GiB (resources.distill.gpu: "
        f"{study.resources.distill.gpu}, counted as {gpus}; * = the config's choice)",
        "",
        "| student | train.parallel | teacher_placement | student state | teacher | activations "
        "| logits | total |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " *" if (r.parallel, r.placement) == chosen else ""
        lines.append(
            f"| {r.student} | {r.parallel} | {r.placement}{mark} | {gib(r.state)} | "
            f"{gib(r.teacher)} | {gib(r.activations)} | {gib(r.logits)} | {gib(r.total)} |"
        )
    return lines


def format_plan(study: StudyConfig, label: str, throughput: Throughput) -> str:
    costs = _Costs(study)
    jobs = list(study_jobs(study, costs))
    estimates = rule_estimates(study, jobs)
    lines = [
        f"{label}: {len(jobs)} jobs",
        "compute: a FLOP-based estimate (2 N FLOPs per forward token, 6 N per trained token), "
        "every sequence at its length cap and every run to its last step",
        f"throughput: {throughput.flops_per_s / 1e12:.0f} TFLOP/s per GPU, "
        + throughput.description,
        "caveat: token-by-token generation (rollouts, outputs) reaches far less than matmul "
        "throughput; `ketchup bench --gpu` measures an on-policy update with its rollouts",
    ]
    models = [("teacher", study.teacher.model, costs.teacher)]
    models += [(f"student {n}", s.model, costs.students[n]) for n, s in study.students.items()]
    for name, model, size in models:
        what = model.name_or_path or "built from architecture"
        count = f"{size.parameters:.3g} parameters ({size.origin})" if size else "size UNKNOWN"
        lines.append(f"{name}: {what}, {count}")
    lines += [
        "",
        "| rule | jobs | GPUs/job | PFLOP | GPU-hours | longest job, h | disk, GB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes, total_flops, total_hours, total_disk = [], 0.0, 0.0, 0.0
    for e in estimates:
        pflop = "?" if e.flops is None else _g(e.flops / 1e15)
        hours = longest = "-"
        if e.gpus and e.flops is not None:
            hours = _g(_hours(e.flops, throughput))
            total_hours += _hours(e.flops, throughput)
        elif e.flops:
            hours = "cpu"
        if e.gpus and e.longest is not None and e.longest.flops:
            wall = _hours(e.longest.flops, throughput, e.gpus)
            longest = _g(wall)
            limit = getattr(study.resources, RULE_RESOURCES[e.rule]).runtime
            if wall * 60 > limit:
                longest += " !"
                notes.append(
                    f"! {e.rule}: the longest job ({e.longest.what}) is estimated at {wall:.3g} h "
                    f"on {e.gpus} GPU(s), more than resources.{RULE_RESOURCES[e.rule]}.runtime "
                    f"({limit} min)"
                )
        if e.flops is None:
            notes.append(f"? {e.rule}: a model's size is unknown (see above): no compute estimate")
        total_flops += e.flops or 0.0
        total_disk += e.disk
        lines.append(
            f"| {e.rule} | {e.jobs} | {e.gpus} | {pflop} | {hours} | {longest} | "
            f"{_g(e.disk / 1e9)} |"
        )
    lines.append(
        f"| total | {len(jobs)} | | {_g(total_flops / 1e15)} | {_g(total_hours)} | | "
        f"{_g(total_disk / 1e9)} |"
    )
    lines += format_memory(study, distill_memory(study, costs))
    return "\n".join(lines + ([""] + notes if notes else []))


def plan_main(args) -> int:
    """`ketchup plan --configfile FILE [FILE ...]`: jobs, GPU-hours and disk per rule."""
    from ketchup.config import load_config

    study = load_config(*args.configfile)
    print(format_plan(study, " + ".join(args.configfile), read_throughput(args.calibration)))
    refusal = memory_refusal(study, distill_memory(study), args.gpu_memory)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    return 0
