# Students: one job per (task, student, system, seed); a system is a method, with ketchup once
# per K (ketchup_k4). The on-policy systems start from the kl student of the same seed.


rule distill:
    input:
        data=split_files(),
        tokenizer=tokenizer_inputs,
        upstream=distill_inputs,
        hub=lambda w: fetched("model-teacher", f"model-student-{w.student}"),
    output:
        directory(study_path("{task}/students/{student}/{method}/seed{seed}/model")),
    log:
        job_log("distill_{student}_{method}_seed{seed}"),
    benchmark:
        job_benchmark("distill_{student}_{method}_seed{seed}")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("distill")
    resources:
        **rule_resources("distill"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        student=lambda w: section_json(config["students"][w.student]),
        generation=lambda w: section_json(config["teacher"]["generation"]),
        cfg=distill_job_json,
        data_dir=lambda w: data_dir(w.task),
        tokenizer=lambda w: tokenizer_path(w.task),
        teacher=lambda w: teacher_model(w.task),
        teacher_precision=config["teacher"]["model"]["precision"],
        teacher_outputs=lambda w: teacher_outputs_file(w.task, "train"),
        warm_start=warm_start_arg,
        keep=keep_checkpoints_arg(),
        out_dir=lambda w: student_dir(w.task, w.student, w.method, w.seed),
    shell:
        # a teacher spread over the job's GPUs serves one process holding them all
        launcher("distill", parallel=STUDY.distill.teacher_placement != "spread")
        + " distill --teacher {params.teacher:q} --tokenizer {params.tokenizer:q}"
        " --data-dir {params.data_dir:q} --teacher-outputs {params.teacher_outputs:q}"
        " --method {wildcards.method} --seed {wildcards.seed} --task-json {params.task:q}"
        " --student-json {params.student:q} --generation-json {params.generation:q}"
        " --teacher-precision {params.teacher_precision}"
        " --config-json {params.cfg:q} {params.warm_start} {params.keep}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# Theorem 1, measured: the variance, signal and direction of the update of every policy-gradient
# system (llmr, its baselines, each K), on the same rollout sets, from the first seed's warm start.
rule grad_variance:
    input:
        data=study_path("{task}/data/validation.jsonl"),
        teacher=teacher_inputs,
        student=variance_student,
        hub=fetched("model-teacher"),
    output:
        table=variance_table(),
        config=study_path("{task}/students/{student}/grad-variance.config.json"),
    log:
        job_log("grad_variance_{student}"),
    benchmark:
        job_benchmark("grad_variance_{student}")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("grad_variance")
    resources:
        **rule_resources("grad_variance"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=lambda w: section_json(variance_section()),
        data_dir=lambda w: data_dir(w.task),
        teacher=lambda w: teacher_model(w.task),
        precision=lambda w: config["students"][w.student]["model"]["precision"],
        teacher_precision=config["teacher"]["model"]["precision"],
    shell:
        launcher("grad_variance", parallel=False)
        + " grad-variance --teacher {params.teacher:q}"
        " --student {input.student:q} --data-dir {params.data_dir:q}"
        " --task-json {params.task:q} --config-json {params.cfg:q}"
        " --precision {params.precision} --teacher-precision {params.teacher_precision}"
        " --out {output.table:q} > {log:q} 2>&1"
