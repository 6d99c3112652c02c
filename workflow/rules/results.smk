# Results: each student's test outputs, per-example scores of every run (the teacher included),
# the tables across the study and the figures per task.


rule generate:
    input:
        model=study_path("{task}/students/{student}/{method}/seed{seed}/model"),
        data=study_path("{task}/data/test.jsonl"),
    output:
        outputs=study_path(
            "{task}/students/{student}/{method}/seed{seed}/test_outputs.jsonl"
        ),
        config=study_path(
            "{task}/students/{student}/{method}/seed{seed}/generate-test.config.json"
        ),
    log:
        job_log("generate_{student}_{method}_seed{seed}"),
    benchmark:
        job_benchmark("generate_{student}_{method}_seed{seed}")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=lambda w: section_json(config["evaluation"]),
        data_dir=lambda w: data_dir(w.task),
        precision=lambda w: config["students"][w.student]["model"]["precision"],
    shell:
        launcher("generate", parallel=False) + " generate --model {input.model:q}"
        " --data-dir {params.data_dir:q} --split test --task-json {params.task:q}"
        " --config-json {params.cfg:q} --precision {params.precision}"
        " --out {output.outputs:q} > {log:q} 2>&1"


rule score:
    input:
        outputs=run_outputs,
        data=study_path("{task}/data/test.jsonl"),
        model=run_model,
    output:
        csv=score_file("{run}", ext="csv"),
        summary=score_file("{run}"),
    log:
        job_log("score_{run}"),
    benchmark:
        job_benchmark("score_{run}")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        run=run_json,
        data_dir=lambda w: data_dir(w.task),
        model=lambda w, input: f"--model {input.model[0]}" if input.model else "",
    shell:
        "python -m ketchup score --outputs {input.outputs:q} --data-dir {params.data_dir:q}"
        " --split test --task-json {params.task:q} --run-json {params.run:q} {params.model}"
        " --out {output.csv:q} > {log:q} 2>&1"


# The study's tables, and its resolved config; the index of every study in results/ is refreshed
# too (not an output: each study's tables job rewrites it).
rule tables:
    input:
        scores=[s for task in STUDY.tasks for s in score_summaries(task)],
        variance=[v for task in STUDY.tasks for v in variance_tables(task)],
        judge=[j for task in STUDY.tasks for j in judge_markers(task)],
    output:
        table_outputs(),
        study=study_config_file(),
    log:
        study_path("logs", "tables.log"),
    benchmark:
        study_path("benchmarks", "tables.tsv")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("report")
    resources:
        **rule_resources("report"),
    params:
        judge=lambda w, input: " ".join(os.path.dirname(j) for j in input.judge),
        study=lambda w: section_json(config),
        out_dir=lambda w: study_path("tables"),
        index=studies_index(),
    shell:
        "python -m ketchup tables --scores {input.scores:q} --variance {input.variance:q}"
        " --judge {params.judge} --out-dir {params.out_dir:q} --study-json {params.study:q}"
        " --study-config {output.study:q} --index {params.index:q} > {log:q} 2>&1"


rule figures:
    input:
        scores=lambda w: score_summaries(w.task),
        variance=lambda w: variance_tables(w.task),
        judge=lambda w: judge_markers(w.task),
    output:
        figure_outputs(),
    log:
        job_log("figures"),
    benchmark:
        job_benchmark("figures")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("report")
    resources:
        **rule_resources("report"),
    params:
        kinds=figure_kinds() + study_figure_kinds(),
        judge=lambda w, input: " ".join(os.path.dirname(j) for j in input.judge),
        out_dir=lambda w: study_path("figures"),
    shell:
        "python -m ketchup figures --task {wildcards.task} --scores {input.scores:q}"
        " --variance {input.variance:q} --kinds {params.kinds} --judge {params.judge}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# The LLM judge: a local rule (compute nodes often have no network), in `rule all` only with
# judge.enabled. Answers are cached in cache.sqlite beside its outputs (not an output: a failed
# or interrupted run keeps every answer, and a rerun sends only what is missing).
rule judge:
    input:
        data=study_path("{task}/data/test.jsonl"),
        systems=lambda w: list(judge_systems(w).values()),
        scores=lambda w: student_score_summaries(w.task, w.student),
        templates=judge_templates(),
    output:
        judge_outputs(),
    log:
        job_log("judge_{student}"),
    conda:
        "../../envs/ketchup.yaml"
    params:
        cfg=lambda w: section_json(config["judge"]),
        systems=lambda w: " ".join(
            f"--system {name}={path}" for name, path in judge_systems(w).items()
        ),
        pairs=" ".join(f"--pair {pair}" for pair in judge_pairs()),
        kind=lambda w: judge_task_kind(w.task),
        out_dir=lambda w: judge_dir(w.task, w.student),
    shell:
        "python -m ketchup judge --data {input.data:q} {params.systems} {params.pairs}"
        " --task-kind {params.kind} --scores {input.scores:q} --config-json {params.cfg:q}"
        " --cache {params.out_dir}/cache.sqlite --out-dir {params.out_dir:q} > {log:q} 2>&1"
