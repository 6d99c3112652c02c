# The teacher: fine-tuned on the task (mode: finetune), and its greedy outputs per split.


rule teacher:
    input:
        expand("results/{{task}}/data/{split}.jsonl", split=SPLITS),
        tokenizer_inputs,
        fetched("model-teacher"),
    output:
        directory("results/{task}/teacher/model"),
    log:
        "results/{task}/logs/teacher.log",
    benchmark:
        "results/{task}/benchmarks/teacher.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("teacher")
    resources:
        **rule_resources("teacher"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=teacher_training_json(),
        data_dir=lambda w: f"results/{w.task}/data",
        tokenizer=lambda w: tokenizer_path(w.task),
        out_dir=lambda w: f"results/{w.task}/teacher",
        launcher=launcher("teacher"),
    shell:
        "{params.launcher} train-teacher --data-dir {params.data_dir:q} --tokenizer {params.tokenizer:q}"
        " --task-json {params.task:q} --config-json {params.cfg:q} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


rule teacher_outputs:
    input:
        data="results/{task}/data/{split}.jsonl",
        teacher=lambda w: (
            [teacher_model(w.task)] if STUDY.teacher.mode == "finetune" else []
        ),
        hub=fetched("model-teacher"),
    output:
        outputs="results/{task}/teacher/outputs/{split}.jsonl",
        config="results/{task}/teacher/outputs/teacher-outputs-{split}.config.json",
    log:
        "results/{task}/logs/teacher_outputs_{split}.log",
    benchmark:
        "results/{task}/benchmarks/teacher_outputs_{split}.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("teacher_outputs")
    resources:
        **rule_resources("teacher_outputs"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=section_json(config["teacher"]),
        data_dir=lambda w: f"results/{w.task}/data",
        teacher=lambda w: teacher_model(w.task),
    shell:
        launcher("teacher_outputs", parallel=False)
        + " teacher-outputs --teacher {params.teacher:q} --data-dir {params.data_dir:q}"
        " --split {wildcards.split} --task-json {params.task:q} --config-json {params.cfg:q}"
        " --out {output.outputs:q} > {log:q} 2>&1"
