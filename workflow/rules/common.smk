# Validation and every helper of the workflow. Rules call only these functions.
import json
import os
import re

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
import yaml
from snakemake.utils import update_config, validate

from ketchup.config import (
    SPLITS,
    TEACHER_FREE_METHODS,
    WARM_START_METHOD,
    WARM_STARTED_METHODS,
    ConfigError,
    job_distill_section,
    parse_config,
    split_system,
    variance_distill_section,
)
from ketchup.tasks import task_kind
from ketchup.figures import (
    KINDS as FIGURE_KINDS,
    STUDY_KINDS as STUDY_FIGURE_KINDS,
    kinds_for as figure_kinds_for,
)
from ketchup.progress import FD_VARIABLE as PROGRESS_FD
from ketchup.judge.stage import (
    ANSWER_FILES as JUDGE_ANSWER_FILES,
    DRY_RUN_FILES as JUDGE_DRY_RUN_FILES,
)
from ketchup.workflow_env import (
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
    record_lock_owner()


onsuccess:
    logger.info(results_line())


def load_study(config):
    """Validate the config (schema defaults filled in place) and type it, before any job runs."""
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


# Snakemake reads `--config key=value` with YAML's BaseLoader, so a nested value such as
# judge='{enabled: true}' arrives with every leaf a string; type those leaves again.
for key, value in workflow.config_settings.config.items():
    if isinstance(value, (dict, list)):
        update_config(config, {key: retyped(value)})

STUDY = load_study(config)


def one_of(names):
    """A wildcard constraint that matches exactly these names."""
    return "|".join(re.escape(str(n)) for n in names)


def global_resource(name):
    """The value of a global resource (--resources or the profile), or None."""
    return (
        workflow.global_resources[name].value
        if name in workflow.global_resources
        else None
    )


# workflow/profiles/default sets `gpu_autodetect=1`: local runs then never start more GPU jobs than
# there are GPUs (Snakemake ignores a resource that has no global limit). Other profiles, and an
# explicit `--resources gpu=N`, leave it alone.
if global_resource("gpu_autodetect") and global_resource("gpu") is None:
    workflow.register_resource("gpu", detect_gpus())


def section_json(section):
    """A config section as canonical JSON: what a rule passes to its verb, and its params trigger."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def rule_resources(rule_name):
    """Scheduler resources of a rule, from the config's `resources:` section."""
    res = config["resources"][rule_name]
    return {"mem_mb": res["mem_mb"], "runtime": res["runtime"], "gpu": res["gpu"]}


def launcher(rule_name, parallel=True):
    """How a job starts its verb: `python -m ketchup`, on its own GPU(s) when it asks for any.

    With gpu >= 1 the job runs under `python -m ketchup.gpu_slots N --`, which gives it N free
    GPUs of its own (CUDA_VISIBLE_DEVICES; Snakemake only counts GPUs, it does not assign them).
    A training rule given several GPUs runs data-parallel under `accelerate launch` (see
    src/ketchup/distributed.py); other rules just see their GPUs.

    The job's output goes to its log; descriptor 3, Snakemake's own stderr duplicated before that
    redirect, takes the verb's short progress lines (src/ketchup/progress.py).
    """
    gpus = config["resources"][rule_name]["gpu"]
    progress = f"{PROGRESS_FD}=3 3>&2"
    if gpus == 0:
        return f"{progress} python -m ketchup"
    slots = f"{progress} python -m ketchup.gpu_slots {gpus} --"
    if gpus == 1 or not parallel:
        return f"{slots} python -m ketchup"
    return (
        f"{slots} accelerate launch --multi_gpu --num_processes {gpus} --num_machines 1"
        " --mixed_precision no --dynamo_backend no -m ketchup"
    )


def rule_threads(rule_name):
    return config["resources"][rule_name]["threads"]


def task_dir(task):
    return f"{RESULTS}/{task}"


def tokenizer_path(task):
    """The vocabulary every model of a task shares: the trained one, or the pretrained teacher's."""
    if STUDY.teacher.model.from_scratch:
        return f"{task_dir(task)}/tokenizer"
    return STUDY.teacher.model.name_or_path


def tokenizer_inputs(wildcards):
    """The tokenizer directory as a rule input when the workflow trains it, else nothing."""
    return [tokenizer_path(wildcards.task)] if STUDY.teacher.model.from_scratch else []


def teacher_model(task):
    """The teacher: the fine-tuned checkpoint, or the pretrained model as it is (prompted)."""
    if STUDY.teacher.mode == "finetune":
        return f"{task_dir(task)}/teacher/model"
    return STUDY.teacher.model.name_or_path


def distill_systems():
    """The distill jobs' method wildcard: each system (ketchup_k<K>), and kl, the warm start."""
    return sorted({*STUDY.distill.systems, WARM_START_METHOD})


def student_model(task, student, system, seed):
    """A distilled student's checkpoint (the distill rule's output)."""
    return f"{task_dir(task)}/students/{student}/{system}/seed{seed}/model"


def warm_start_model(wildcards, seed=None):
    """The kl student of a (task, student, seed): where the on-policy methods start."""
    seed = wildcards.seed if seed is None else seed
    return student_model(wildcards.task, wildcards.student, WARM_START_METHOD, seed)


def distill_inputs(wildcards):
    """What a system reads beyond the data: teacher outputs, the teacher, the warm start."""
    method, _ = split_system(wildcards.method)
    inputs = []
    if method != "sft":
        inputs.append(f"{task_dir(wildcards.task)}/teacher/outputs/train.jsonl")
    if method not in TEACHER_FREE_METHODS and STUDY.teacher.mode == "finetune":
        inputs.append(teacher_model(wildcards.task))
    if method in WARM_STARTED_METHODS:
        inputs.append(warm_start_model(wildcards))
    return inputs


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


def variance_tables(task):
    """Gradient variance and bias by K, one table per student, on its first seed's warm start."""
    return [
        f"{task_dir(task)}/students/{student}/grad_variance.csv"
        for student in STUDY.students
    ]


# ----------------------------------------------------------------------------------------------
# Results: a run is the teacher ("teacher") or one student system at one seed
# ("<student>/<system>/seed<s>"); each is generated, then scored, per task.
TEACHER_RUN = "teacher"
# Snakemake's report() flag under another name: a line that starts with `report` would be read
# as the `report:` directive.
in_report = report
TABLES = ["main", "k_grid", "variance", "paper", "provenance"]
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
    return [f"{task_dir(task)}/scores/{run}.json" for run in score_runs()]


def run_parts(run):
    """(student, system, seed) of a student run; None for the teacher."""
    if run == TEACHER_RUN:
        return None
    student, system, seed = run.split("/")
    return student, system, int(seed.removeprefix("seed"))


def teacher_test_outputs(task):
    return f"{task_dir(task)}/teacher/outputs/test.jsonl"


def student_test_outputs(task, student, system, seed):
    """A student's test outputs (the generate rule's output)."""
    return f"{task_dir(task)}/students/{student}/{system}/seed{seed}/test_outputs.jsonl"


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
        f"{RESULTS}/figures/{{task}}_{student}_{kind}"
        for student in STUDY.students
        for kind in figure_kinds() + judge_figure_kinds()
    ]
    return stems + [
        f"{RESULTS}/figures/{{task}}_{kind}" for kind in study_figure_kinds()
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
    files = [f"{RESULTS}/tables/{n}.{ext}" for n in TABLES for ext in TABLE_FORMATS]
    return files + [f"{RESULTS}/tables/judge.{ext}" for ext in ("md", "html")]


def table_outputs():
    """table_files(), the HTML of each in the report (shown inline, with its caption)."""
    captions = {
        f"{RESULTS}/tables/{n}.html": f"../report/{n}_table.rst" for n in TABLES
    }
    captions[f"{RESULTS}/tables/judge.html"] = "../report/judge.rst"
    return [
        (
            in_report(path, caption=captions[path], category="Tables")
            if path in captions
            else path
        )
        for path in table_files()
    ]


# ----------------------------------------------------------------------------------------------
# LLM-as-judge (judge.enabled): per task and student, the teacher and every system's first seed
# rated pointwise; KETCHUP at its best K against LLMR and the best non-RL baseline, pairwise.
def judge_dir(task, student):
    return f"{task_dir(task)}/judge/{student}"


def judge_outputs():
    """The judge job's files ({task} and {student} left as wildcards)."""
    base = f"{RESULTS}/{{task}}/judge/{{student}}"
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
        f"{task_dir(task)}/scores/{run}.json"
        for run in student_runs()
        if run_parts(run)[0] == student
    ]


def results_line():
    """The one line a finished run ends with: where its tables and figures are."""
    figures = [t for t in all_targets() if t.startswith(f"{RESULTS}/figures/")]
    kinds = dict.fromkeys(
        k
        for t in figures
        for k in (*FIGURE_KINDS, *STUDY_FIGURE_KINDS, "judge_win_rates")
        if t.endswith(f"_{k}.png")
    )
    return (
        f"ketchup: tables in {RESULTS}/tables/ ({', '.join(TABLES)}: "
        f"{' '.join(TABLE_FORMATS)}; judge: md html), {len(figures) // 2} figures in {RESULTS}/figures/ "
        f"({', '.join(kinds)}; png svg); with captions: snakemake --report report.html"
    )


def all_targets():
    """The targets of the default run: every stage the workflow has so far, for every task."""
    targets = []
    for task in STUDY.tasks:
        targets += [f"{task_dir(task)}/data/{split}.jsonl" for split in SPLITS]
        # the teacher's outputs on train feed SeqKD / KL; on test, the results tables
        targets += [
            f"{task_dir(task)}/teacher/outputs/{s}.jsonl" for s in ("train", "test")
        ]
        targets += student_models(task)
        targets += variance_tables(task)
        targets += score_summaries(task)
        targets += [
            f"{stem.replace('{task}', task)}.{ext}"
            for stem in figure_stems()
            for ext in ("png", "svg")
        ]
        targets += judge_markers(task)
    return targets + table_files()
