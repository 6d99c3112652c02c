# Students: one job per (task, student, method, seed).


rule distill:
    input:
        data=expand("results/{{task}}/data/{split}.jsonl", split=SPLITS),
        tokenizer=tokenizer_inputs,
        teacher=distill_teacher_inputs,
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
        cfg=section_json(config["distill"]),
        data_dir=lambda w: f"results/{w.task}/data",
        tokenizer=lambda w: tokenizer_path(w.task),
        teacher=lambda w: teacher_model(w.task),
        teacher_outputs=lambda w: f"results/{w.task}/teacher/outputs/train.jsonl",
        out_dir=lambda w: f"results/{w.task}/students/{w.student}/{w.method}/seed{w.seed}",
    shell:
        "python -m ketchup distill --teacher {params.teacher:q} --tokenizer {params.tokenizer:q}"
        " --data-dir {params.data_dir:q} --teacher-outputs {params.teacher_outputs:q}"
        " --method {wildcards.method} --seed {wildcards.seed} --task-json {params.task:q}"
        " --student-json {params.student:q} --generation-json {params.generation:q}"
        " --config-json {params.cfg:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
