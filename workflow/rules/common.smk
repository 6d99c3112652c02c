# Validation and every helper of the workflow. Rules call only these functions.
import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
import yaml
from snakemake.utils import validate

from ketchup.config import (
    SPLITS,
    TEACHER_FREE_METHODS,
    WARM_START_METHOD,
    WARM_STARTED_METHODS,
    ConfigError,
    job_distill_section,
    overlay_error,
    merge_configs,
    parse_config,
    read_config_files,
    split_system,
    teacher_training_section,
    variance_distill_section,
)
from ketchup.models.loading import local_directory, model_reference
from ketchup.data.registry import task_kind
from ketchup.report.figures import (
    KINDS as FIGURE_KINDS,
    STUDY_KINDS as STUDY_FIGURE_KINDS,
    kinds_for as figure_kinds_for,
)
from ketchup.evaluate.judge.prompts import template_files
from ketchup.train.progress import FD_VARIABLE as PROGRESS_FD
from ketchup.stages.judge import (
    ANSWER_FILES as JUDGE_ANSWER_FILES,
    DRY_RUN_FILES as JUDGE_DRY_RUN_FILES,
)
from ketchup.report import studies
from ketchup.report.studies import INDEX as STUDIES_INDEX, STUDY_CONFIG
from ketchup.ops.workflow_env import (
    detect_gpus,
    record_lock_owner,
    remove_stale_lock,
    run_this_checkout,
)

RESULTS = "results"


run_this_checkout(workflow.basedir)

# A run killed with SIGKILL leaves Snakemake's lock behind; the next run removes it when the run
# that took it is dead (so `snakemake --cores all` just resumes), and records itself as the owner.
if workflow.is_main_process:
    stale = remove_stale_lock()
    if stale:
        logger.warning(f"ketchup: {stale}")


onstart:
    stop_on_gpu_shortfall()
    record_lock_owner()


onsuccess:
    logger.info(results_line())


def load_study(config):
    """Validate the config (schema defaults filled in place) and type it, before any job runs."""
    overlay = overlay_error(config, workflow.config_settings.configfiles)
    if overlay:
        raise WorkflowError(overlay)
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as schema_error:
        # Snakemake's message is the whole schema dump; ours names the key on one line.
        try:
            parse_config(config)
        except ConfigError as e:
            raise WorkflowError(f"invalid config: {e}") from None
        raise schema_error
    try:
        return parse_config(config)
    except ConfigError as e:
        raise WorkflowError(f"invalid config: {e}") from None


def retyped(value):
    """A nested `--config` value with its strings read again as YAML scalars (true, 3, 1e-4, null)."""
    if isinstance(value, dict):
        return {key: retyped(v) for key, v in value.items()}
    if isinstance(value, list):
        return [retyped(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) else value


def merged_config():
    """The config files merged as `ketchup check-config` merges them (a changed `model_type`
    replaces its architecture block, where Snakemake would mix two architectures' keys), then
    `--config` on top. Snakemake reads `--config key=value` with YAML's BaseLoader, so a nested
    value such as judge='{enabled: true}' arrives with every leaf a string: typed again here.
    """
    try:
        merged = read_config_files(*workflow.configfiles)
    except ConfigError as e:
        raise WorkflowError(f"invalid config: {e}") from None
    for key, value in workflow.config_settings.config.items():
        typed = retyped(value) if isinstance(value, (dict, list)) else value
        merged = merge_configs(merged, {key: typed})
    return merged


config.clear()
config.update(merged_config())
STUDY = load_study(config)


def one_of(names):
    """A wildcard constraint that matches exactly these names."""
    return "|".join(re.escape(str(n)) for n in names)


def resource_value(value):
    """A resource's value: Snakemake 9.0 keeps plain numbers, later versions Resource objects."""
    return getattr(value, "value", value)


def global_resource(name):
    """The value of a global resource (--resources or the profile), or None."""
    if name not in workflow.global_resources:
        return None
    return resource_value(workflow.global_resources[name])


# workflow/profiles/default sets `gpu_autodetect=1`: local runs then never start more GPU jobs than
# there are GPUs (Snakemake ignores a resource that has no global limit). Other profiles, and an
# explicit `--resources gpu=N`, leave it alone.
if global_resource("gpu_autodetect") and global_resource("gpu") is None:
    workflow.register_resource("gpu", detect_gpus())


def section_json(section):
    """A config section as canonical JSON: what a rule passes to its verb, and its params trigger."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def rule_resources(rule_name):
    """Scheduler resources of a rule, from the config's `resources:` section.

    tasks: 0 makes a SLURM GPU job one task holding all its GPUs: snakemake-executor-plugin-slurm
    passes --ntasks-per-gpu=<tasks> when `tasks` is 1 or more (older versions did by default), and
    with --ntasks-per-gpu=1 a job asking for 2 GPUs ran its command twice, one GPU each, so
    gpu_slots' own processes were started twice. A job without GPUs gets --ntasks=1 either way.
    """
    res = config["resources"][rule_name]
    return {
        "mem_mb": res["mem_mb"],
        "runtime": res["runtime"],
        "gpu": res["gpu"],
        "tasks": 0,
    }


# Compute jobs never reach the hub: what they read was fetched by the local rule `fetch` on the
# submitting machine (a cluster node often has no network), and they load it from the cache.
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"


def requested_gpus(rule_name):
    """The GPUs a rule's jobs ask for: `--set-resources <rule>:gpu=N` when given, else the
    config's `resources.<rule>.gpu`. (Snakemake lowers a job's own `gpu` resource to the global
    limit, 0 on a machine without GPUs, which would hide that GPUs were asked for.)
    """
    overwrite = workflow.resource_settings.overwrite_resources.get(rule_name, {})
    if "gpu" in overwrite:
        return int(resource_value(overwrite["gpu"]))
    return config["resources"][rule_name]["gpu"]


def launcher(rule_name, parallel=True):
    """The start of a job's shell command: `python -m ketchup` with the hub offline (OFFLINE), on
    the GPUs the job was given.

    `{resources.gpu}` is filled in when the job runs, so `--set-resources distill:gpu=2` or a
    profile's resources count, not the config as parsed (and a new count reruns nothing).
    `python -m ketchup.ops.gpu_slots N --rule <rule>` gives the job N free GPUs of its own
    (CUDA_VISIBLE_DEVICES; Snakemake only counts GPUs, it does not assign them), none with N = 0,
    or stops with one line saying how to run on the CPU when the machine shows fewer than N; with
    --data-parallel, a training verb given several GPUs runs as N processes under `accelerate
    launch` (see src/ketchup/models/parallel.py); other verbs just see their GPUs.

    The job's output goes to its log; descriptor 3, Snakemake's own stderr duplicated before that
    redirect, takes the verb's short progress lines (src/ketchup/train/progress.py).
    """
    mode = " --data-parallel" if parallel else ""
    return (
        f"{OFFLINE} {PROGRESS_FD}=3 3>&2 python -m ketchup.ops.gpu_slots {{resources.gpu}}"
        f" --rule {rule_name}{mode} -- python -m ketchup"
    )


def gpu_shortfall():
    """One line for a local run whose rules ask for more GPUs than the machine shows, else None.

    Those jobs would stop one by one (see `launcher`); said once before any job starts.
    """
    available = global_resource("gpu")
    if not global_resource("gpu_autodetect") or available is None:
        return None
    prompted = STUDY.teacher.mode != "finetune"  # then the teacher rule has no job
    short = [
        name
        for name in config["resources"]
        if requested_gpus(name) > available and not (prompted and name == "teacher")
    ]
    if not short:
        return None
    return (
        f"ketchup: this machine shows {available} GPU(s), fewer than the config asks for in "
        f"rules {', '.join(short)} (resources.<rule>.gpu), whose jobs will stop. To run them on "
        f"the CPU, pass --set-resources {' '.join(f'{name}:gpu=0' for name in short)} or set "
        "gpu: 0 under resources: in the config"
    )


if workflow.is_main_process and gpu_shortfall():
    logger.warning(gpu_shortfall())


def stop_on_gpu_shortfall():
    """Before the first job of a local run: stop when rules ask for more GPUs than the machine
    shows. Snakemake would lower those jobs' `gpu` to what there is, and they would run on fewer
    GPUs than asked (none on a CPU machine) without a word. Dry runs only warn (above).
    """
    line = gpu_shortfall()
    if line:
        raise WorkflowError(line.replace(", whose jobs will stop", ""))


# ----------------------------------------------------------------------------------------------
# The hub: one `fetch` job per hub model (the teacher's, each student's) and per task of a hub
# dataset, whose record every job that reads it waits for. The study is fixed once parsed, so
# its hub items are found once.
HUB_MODELS = studies.hub_models(STUDY)
HUB_DATASETS = studies.hub_datasets(STUDY)
HUB_ITEMS = [*HUB_MODELS, *HUB_DATASETS]


def fetched(*items):
    """The fetch records of these items, for those that the study reads from the hub."""
    return [study_path("hub", f"{item}.json") for item in items if item in HUB_ITEMS]


def fetch_args(wildcards):
    """The fetch verb's arguments (a list: `:q` quotes each): a model with its revision when the
    config pins one, or a task."""
    model = HUB_MODELS.get(wildcards.item)
    if model is not None:
        revision = model.revision
        return [
            "--model",
            model.name_or_path,
            *(["--revision", revision] if revision else []),
        ]
    task = HUB_DATASETS[wildcards.item]
    # what the download depends on, so that a new prompt or example cap fetches nothing again
    where = {
        k: v
        for k, v in config["tasks"][task].items()
        if k in ("dataset", "files", "revision")
    }
    return ["--task", task, "--task-json", section_json(where)]


def rule_threads(rule_name):
    return config["resources"][rule_name]["threads"]


def study_path(*parts):
    """A path under the study's own directory, results/<study>/: every file a job writes.

    Studies with other names never write the same file, so they sit side by side in one
    directory. A part may be a wildcard ("{task}") that the rule fills in.
    """
    return "/".join([RESULTS, STUDY.study, *map(str, parts)])


def task_dir(task):
    return study_path(task)


def data_dir(task):
    return study_path(task, "data")


def split_files(task="{task}"):
    """The prepare_data outputs of a task: train, validation and test.jsonl."""
    return [f"{data_dir(task)}/{split}.jsonl" for split in SPLITS]


def job_log(name, task="{task}"):
    return study_path(task, "logs", f"{name}.log")


def job_benchmark(name, task="{task}"):
    return study_path(task, "benchmarks", f"{name}.tsv")


def task_files(wildcards):
    """A task's own data files (`files:`): an edit reruns the task's prepare_data and after."""
    files = STUDY.tasks[wildcards.task].files
    return sorted({files.train, files.validation, files.test}) if files else []


def local_files(model):
    """The files of a model's local directory (`name_or_path`), [] for a hub id: as inputs, an
    edit of any of them reruns the jobs that read the model. A directory that does not exist is
    listed as it is, so that Snakemake names it as a missing input."""
    directory = local_directory(model.name_or_path) if model.name_or_path else None
    if directory is None:
        return []
    if not os.path.isdir(directory):
        return [directory]
    return sorted(
        str(path)
        for path in Path(directory).rglob("*")
        if path.is_file()
        and not any(p.startswith(".") for p in path.relative_to(directory).parts)
    )


def tokenizer_path(task):
    """The vocabulary every model of a task shares: the trained one, or the pretrained teacher's."""
    if STUDY.teacher.model.from_scratch:
        return f"{task_dir(task)}/tokenizer"
    return model_reference(STUDY.teacher.model)


def tokenizer_inputs(wildcards):
    """The tokenizer directory the workflow trains, or the pretrained teacher's own files."""
    if STUDY.teacher.model.from_scratch:
        return [tokenizer_path(wildcards.task)]
    return local_files(STUDY.teacher.model)


def teacher_dir(task):
    return study_path(task, "teacher")


def teacher_training_json():
    return section_json(teacher_training_section(config["teacher"]))


def teacher_model(task):
    """The teacher: the fine-tuned checkpoint, or the pretrained model as it is (prompted)."""
    if STUDY.teacher.mode == "finetune":
        return f"{teacher_dir(task)}/model"
    return model_reference(STUDY.teacher.model)


def teacher_inputs(wildcards):
    """What reading the teacher reads: its fine-tuned checkpoint, or its pretrained files."""
    if STUDY.teacher.mode == "finetune":
        return [teacher_model(wildcards.task)]
    return local_files(STUDY.teacher.model)


def keep_checkpoints_arg():
    return "--keep-checkpoints" if STUDY.keep_checkpoints else ""


def distill_systems():
    """The distill jobs' method wildcard: each system (ketchup_k<K>), and kl, the warm start."""
    return sorted({*STUDY.distill.systems, WARM_START_METHOD})


def student_dir(task, student, system, seed):
    """A distilled student's job directory: model/, log.jsonl, its test outputs."""
    return study_path(task, "students", student, system, f"seed{seed}")


def student_model(task, student, system, seed):
    """A distilled student's checkpoint (the distill rule's output)."""
    return f"{student_dir(task, student, system, seed)}/model"


def warm_start_model(wildcards, seed=None):
    """The kl student of a (task, student, seed): where the on-policy methods start."""
    seed = wildcards.seed if seed is None else seed
    return student_model(wildcards.task, wildcards.student, WARM_START_METHOD, seed)


def distill_inputs(wildcards):
    """What a system reads beyond the data: teacher outputs, the teacher, the warm start."""
    method, _ = split_system(wildcards.method)
    inputs = []
    if method != "sft":
        inputs.append(teacher_outputs_file(wildcards.task, "train"))
    if method not in TEACHER_FREE_METHODS:
        inputs += teacher_inputs(wildcards)
    if method in WARM_STARTED_METHODS:
        inputs.append(warm_start_model(wildcards))
    else:  # initialised from the student's pretrained files when it has them
        inputs += local_files(STUDY.students[wildcards.student].model)
    return list(dict.fromkeys(inputs))


def warm_start_arg(wildcards):
    method, _ = split_system(wildcards.method)
    if method not in WARM_STARTED_METHODS:
        return ""
    return f"--warm-start {warm_start_model(wildcards)}"


def distill_job_json(wildcards):
    """Only the distill keys this system's training reads: other changes rerun nothing here."""
    return section_json(job_distill_section(config["distill"], wildcards.method))


def student_models(task):
    """Every distilled student of a task: (student, system, seed) checkpoints."""
    return [student_model(task, *run_parts(run)) for run in student_runs()]


def variance_student(wildcards):
    """The fixed student of the gradient-variance table: the warm start of the first seed."""
    return warm_start_model(wildcards, seed=STUDY.distill.seeds[0])


def variance_section():
    """The distill keys the gradient-variance job reads: what the measured systems train with."""
    return variance_distill_section(config["distill"])


def variance_table(task="{task}", student="{student}"):
    """The trained updates' variance, signal and direction of one student's policy-gradient
    systems, on its first seed's warm start."""
    return study_path(task, "students", student, "grad_variance.csv")


def variance_tables(task):
    return [variance_table(task, student) for student in STUDY.students]


# ----------------------------------------------------------------------------------------------
# Results: a run is the teacher ("teacher") or one student system at one seed
# ("<student>/<system>/seed<s>"); each is generated, then scored, per task.
TEACHER_RUN = "teacher"
# Snakemake's report() flag under another name: a line that starts with `report` would be read
# as the `report:` directive.
in_report = report
TABLES = ["main", "k_grid", "variance", "sizes", "paper", "provenance"]
TABLE_FORMATS = ("md", "html", "csv", "tex")


def student_runs():
    return [
        f"{student}/{system}/seed{seed}"
        for student in STUDY.students
        for system in STUDY.distill.systems
        for seed in STUDY.distill.seeds
    ]


def score_runs():
    return [TEACHER_RUN, *student_runs()]


def score_summaries(task):
    return [score_file(run, task) for run in score_runs()]


def run_parts(run):
    """(student, system, seed) of a student run; None for the teacher."""
    if run == TEACHER_RUN:
        return None
    student, system, seed = run.split("/")
    return student, system, int(seed.removeprefix("seed"))


def teacher_outputs_file(task, split):
    return f"{teacher_dir(task)}/outputs/{split}.jsonl"


def teacher_test_outputs(task):
    return teacher_outputs_file(task, "test")


def student_test_outputs(task, student, system, seed):
    """A student's test outputs (the generate rule's output)."""
    return f"{student_dir(task, student, system, seed)}/test_outputs.jsonl"


def run_outputs(wildcards):
    """The test outputs a run is scored on: the teacher's, or the student's `generate` file."""
    parts = run_parts(wildcards.run)
    if parts is None:
        return teacher_test_outputs(wildcards.task)
    return student_test_outputs(wildcards.task, *parts)


def run_model(wildcards):
    """The model of a run, whose validation score the score file records ([] when prompted)."""
    parts = run_parts(wildcards.run)
    if parts is None:
        return (
            [teacher_model(wildcards.task)] if STUDY.teacher.mode == "finetune" else []
        )
    return [student_model(wildcards.task, *parts)]


def score_file(run, task="{task}", ext="json"):
    """A run's score summary (json) or per-example scores (csv)."""
    return study_path(task, "scores", f"{run}.{ext}")


def run_json(wildcards):
    parts = run_parts(wildcards.run)
    student, system, seed = parts if parts else (None, TEACHER_RUN, None)
    return section_json(
        {"task": wildcards.task, "student": student, "system": system, "seed": seed}
    )


def figure_kinds():
    """What the study can draw: the K figures only with KETCHUP in the methods, the baselines'
    training curves only with a baseline that trains on-policy."""
    return figure_kinds_for(STUDY.distill.methods)


def study_figure_kinds():
    """Figures over students: the gain over LLMR by size needs several students and both methods."""
    methods = STUDY.distill.methods
    if len(STUDY.students) > 1 and "ketchup" in methods and "llmr" in methods:
        return ["gain_vs_size"]
    return []


def figure_stems():
    """The figures of one task ({task} left as a wildcard), without extension."""
    stems = [
        study_path("figures", f"{{task}}_{student}_{kind}")
        for student in STUDY.students
        for kind in figure_kinds() + judge_figure_kinds()
    ]
    return stems + [
        study_path("figures", f"{{task}}_{kind}") for kind in study_figure_kinds()
    ]


def figure_outputs():
    """PNG (in the HTML report, with a caption from workflow/report/) and SVG of each figure."""
    outputs = []
    for stem in figure_stems():
        kinds = (*FIGURE_KINDS, *STUDY_FIGURE_KINDS, "judge_win_rates")
        kind = next(k for k in kinds if stem.endswith(k))
        outputs.append(
            in_report(
                f"{stem}.png",
                caption=f"../report/{kind}.rst",
                category="Figures",
                subcategory="{task}",
            )
        )
        outputs.append(f"{stem}.svg")
    return outputs


def table_files():
    """Every file of the tables job: each table as Markdown, HTML, CSV and LaTeX; the judge's."""
    files = [
        study_path("tables", f"{n}.{ext}") for n in TABLES for ext in TABLE_FORMATS
    ]
    return files + [study_path("tables", f"judge.{ext}") for ext in ("md", "html")]


def table_outputs():
    """table_files(), the HTML of each in the report (shown inline, with its caption)."""
    captions = {
        study_path("tables", f"{n}.html"): f"../report/{n}_table.rst" for n in TABLES
    }
    captions[study_path("tables", "judge.html")] = "../report/judge.rst"
    return [
        (
            in_report(path, caption=captions[path], category="Tables")
            if path in captions
            else path
        )
        for path in table_files()
    ]


def study_config_file():
    """The study's resolved config (results/<study>/config.yaml), written by the tables job."""
    return study_path(STUDY_CONFIG)


def studies_index():
    """results/studies.md: every study present with its config; the tables job of each study
    rewrites it (no job's declared output: the studies share it)."""
    return f"{RESULTS}/{STUDIES_INDEX}"


# ----------------------------------------------------------------------------------------------
# LLM-as-judge (judge.enabled): per task and student, the teacher and every system's first seed
# rated pointwise; KETCHUP at its best K against LLMR and the best non-RL baseline, pairwise.
def judge_dir(task, student):
    return f"{task_dir(task)}/judge/{student}"


def judge_outputs():
    """The judge job's files ({task} and {student} left as wildcards)."""
    base = judge_dir("{task}", "{student}")
    if STUDY.judge.dry_run:
        return [f"{base}/{name}" for name in JUDGE_DRY_RUN_FILES]
    # report.md joins results/tables/judge.html, which the HTML report shows
    return [f"{base}/{name}" for name in JUDGE_ANSWER_FILES]


def judge_markers(task):
    """One file per judge job of a task ([] with the judge off): what tables and figures wait for."""
    if not STUDY.judge.enabled:
        return []
    name = JUDGE_DRY_RUN_FILES[0] if STUDY.judge.dry_run else JUDGE_ANSWER_FILES[0]
    return [f"{judge_dir(task, student)}/{name}" for student in STUDY.students]


def judge_systems(wildcards):
    """NAME=FILE for the teacher and each system of the student at the first seed."""
    seed = STUDY.distill.seeds[0]
    task, student = wildcards.task, wildcards.student
    files = {TEACHER_RUN: teacher_test_outputs(task)}
    for system in STUDY.distill.systems:
        files[system] = student_test_outputs(task, student, system, seed)
    return files


def judge_templates():
    """The prompt templates the judge reads: judge.templates_dir's, or the packaged ones."""
    return [str(path) for path in template_files(STUDY.judge.templates_dir)]


def judge_pairs():
    """KETCHUP (its best K) against LLMR and the best non-RL baseline, when the study has them."""
    methods = STUDY.distill.methods
    if "ketchup" not in methods:
        return []
    pairs = ["ketchup:llmr"] if "llmr" in methods else []
    if any(m in methods for m in ("seqkd", "kl", "js", "tvd")):
        pairs.append("ketchup:baseline")
    return pairs


def judge_task_kind(task):
    """The judge's rubric for a task (summarization, translation, dialogue, data-to-text, math)."""
    return task_kind(STUDY.tasks[task])


def judge_figure_kinds():
    """The win-rate figure, when the judge answers pairwise questions (not in a dry run)."""
    judge = STUDY.judge
    pairwise = judge.enabled and not judge.dry_run and "pairwise" in judge.protocols
    return ["judge_win_rates"] if pairwise and judge_pairs() else []


def student_score_summaries(task, student):
    """The score summaries of one student's runs (every system and seed)."""
    return [
        score_file(run, task) for run in student_runs() if run_parts(run)[0] == student
    ]


def results_line():
    """The one line a finished run ends with: where its tables and figures are."""
    tables, figures = study_path("tables"), study_path("figures")
    drawn = [t for t in all_targets() if t.startswith(f"{figures}/")]
    kinds = dict.fromkeys(
        k
        for t in drawn
        for k in (*FIGURE_KINDS, *STUDY_FIGURE_KINDS, "judge_win_rates")
        if t.endswith(f"_{k}.png")
    )
    return (
        f"ketchup: tables in {tables}/ ({', '.join(TABLES)}: {' '.join(TABLE_FORMATS)}; judge: "
        f"md html), {len(drawn) // 2} figures in {figures}/ ({', '.join(kinds)}; png svg); with "
        "captions: snakemake --report report.html"
    )


def all_targets():
    """The targets of the default run: every stage the workflow has so far, for every task."""
    targets = []
    for task in STUDY.tasks:
        targets += split_files(task)
        # the teacher's outputs on train feed SeqKD / KL; on test, the results tables
        targets += [teacher_outputs_file(task, s) for s in ("train", "test")]
        targets += student_models(task)
        targets += variance_tables(task)
        targets += score_summaries(task)
        targets += [
            f"{stem.replace('{task}', task)}.{ext}"
            for stem in figure_stems()
            for ext in ("png", "svg")
        ]
        targets += judge_markers(task)
    return targets + table_files() + [study_config_file()]
