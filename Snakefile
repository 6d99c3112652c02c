# KETCHUP reproduction workflow: `snakemake --cores all` runs the study described by config.yaml.
# Rules live in workflow/rules/, helpers in workflow/rules/common.smk, the code in src/ketchup.
from snakemake.utils import min_version

min_version("9.0")


# `--configfile X` replaces config.yaml instead of being merged into it (Snakemake merges by
# default, which would mix the embedded task into the paper's study); `--config k=v` still overrides.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    task=one_of(STUDY.tasks),
    split=one_of(SPLITS),
    student=one_of(STUDY.students),
    method=one_of(distill_systems()),
    seed=one_of(STUDY.distill.seeds),
    run=one_of(score_runs()),
    item=one_of(HUB_ITEMS),


include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/results.smk"


# Seconds of CPU work each, or the network (fetch): on a cluster they run where Snakemake runs.
localrules:
    all,
    fetch,
    score,
    tables,
    figures,
    judge,


rule all:
    default_target: True
    input:
        all_targets(),
