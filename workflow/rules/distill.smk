# Students: one job per (task, student, system, seed); a system is a method, with ketchup once
# per K (ketchup_k4). The on-policy systems start from the kl student of the same seed.


rule distill:
    input:
        data=expand("results/{{task}}/data/{split}.jsonl", split=SPLITS),
        tokenizer=tokenizer_inputs,
        upstream=distill_inputs,
        hub=lambda w: fetched("model-teacher", f"model-student-{w.student}"),
    output:
        directory("results/{task}/students/{student}/{method}/seed{seed}/model"),
    log:
        "results/{task}/logs/distill_{student}_{method}_seed{seed}.log",
    benchmark:
        "results/{task}/benchmarks/distill_{student}_{method}_seed{seed}.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("distill")
    resources:
        **rule_resources("distill"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        student=lambda w: section_json(config["students"][w.student]),
        generation=section_json(config["teacher"]["generation"]),
        cfg=distill_job_json,
        data_dir=lambda w: f"results/{w.task}/data",
        tokenizer=lambda w: tokenizer_path(w.task),
        teacher=lambda w: teacher_model(w.task),
        teacher_outputs=lambda w: f"results/{w.task}/teacher/outputs/train.jsonl",
        warm_start=warm_start_arg,
        launcher=launcher("distill"),
        out_dir=lambda w: f"results/{w.task}/students/{w.student}/{w.method}/seed{w.seed}",
    shell:
        "{params.launcher} distill --teacher {params.teacher:q} --tokenizer {params.tokenizer:q}"
        " --data-dir {params.data_dir:q} --teacher-outputs {params.teacher_outputs:q}"
        " --method {wildcards.method} --seed {wildcards.seed} --task-json {params.task:q}"
        " --student-json {params.student:q} --generation-json {params.generation:q}"
        " --config-json {params.cfg:q} {params.warm_start} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


# Theorem 1, measured: the K-step estimator's gradient variance and bias against K = 1, on the
# same rollouts for every K, from the warm start of the study's first seed.
rule grad_variance:
    input:
        data="results/{task}/data/validation.jsonl",
        teacher=lambda w: (
            [teacher_model(w.task)] if STUDY.teacher.mode == "finetune" else []
        ),
        student=variance_student,
        hub=fetched("model-teacher"),
    output:
        table="results/{task}/students/{student}/grad_variance.csv",
        config="results/{task}/students/{student}/grad-variance.config.json",
    log:
        "results/{task}/logs/grad_variance_{student}.log",
    benchmark:
        "results/{task}/benchmarks/grad_variance_{student}.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("grad_variance")
    resources:
        **rule_resources("grad_variance"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=section_json(
            {
                key: config["distill"][key]
                for key in ("value", "ks", "rollout", "variance")
            }
        ),
        data_dir=lambda w: f"results/{w.task}/data",
        teacher=lambda w: teacher_model(w.task),
    shell:
        launcher("grad_variance", parallel=False)
        + " grad-variance --teacher {params.teacher:q} --student {input.student:q}"
        " --data-dir {params.data_dir:q} --task-json {params.task:q} --config-json {params.cfg:q}"
        " --out {output.table:q} > {log:q} 2>&1"
