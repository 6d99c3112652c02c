# The teacher: fine-tuned on the task (mode: finetune), and its greedy outputs per split.


rule teacher:
    input:
        split_files(),
        # the trained tokenizer, or a pretrained teacher's own files (its weights too)
        tokenizer_inputs,
        fetched("model-teacher"),
    output:
        directory(study_path("{task}/teacher/model")),
    log:
        job_log("teacher"),
    benchmark:
        job_benchmark("teacher")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("teacher")
    resources:
        **rule_resources("teacher"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=lambda w: teacher_training_json(),
        data_dir=lambda w: data_dir(w.task),
        tokenizer=lambda w: tokenizer_path(w.task),
        out_dir=lambda w: teacher_dir(w.task),
        keep=keep_checkpoints_arg(),
    shell:
        launcher("teacher") + " train-teacher --data-dir {params.data_dir:q}"
        " --tokenizer {params.tokenizer:q} --task-json {params.task:q}"
        " --config-json {params.cfg:q} {params.keep} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule teacher_outputs:
    input:
        data=study_path("{task}/data/{split}.jsonl"),
        teacher=teacher_inputs,
        hub=fetched("model-teacher"),
    output:
        outputs=study_path("{task}/teacher/outputs/{split}.jsonl"),
        config=study_path("{task}/teacher/outputs/teacher-outputs-{split}.config.json"),
    log:
        job_log("teacher_outputs_{split}"),
    benchmark:
        job_benchmark("teacher_outputs_{split}")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("teacher_outputs")
    resources:
        **rule_resources("teacher_outputs"),
    params:
        task=lambda w: section_json(config["tasks"][w.task]),
        cfg=lambda w: section_json(config["teacher"]),
        data_dir=lambda w: data_dir(w.task),
        teacher=lambda w: teacher_model(w.task),
    shell:
        launcher("teacher_outputs", parallel=False)
        + " teacher-outputs --teacher {params.teacher:q}"
        " --data-dir {params.data_dir:q} --split {wildcards.split} --task-json {params.task:q}"
        " --config-json {params.cfg:q} --out {output.outputs:q} > {log:q} 2>&1"
