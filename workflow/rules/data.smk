# Data: the hub's models and datasets, a task's splits, and the tokenizer of from-scratch models.


# Local (the submitting machine has the network): every job that reads the item waits for its
# record and runs with the hub offline. A local directory or local `files` are only recorded.
rule fetch:
    output:
        study_path("hub/{item}.json"),
    log:
        study_path("logs/fetch_{item}.log"),
    conda:
        "../../envs/ketchup.yaml"
    params:
        args=fetch_args,
    shell:
        "python -m ketchup fetch {params.args:q} --out {output:q} > {log:q} 2>&1"


rule prepare_data:
    input:
        task_files,
        lambda w: fetched(f"data-{w.task}"),
    output:
        split_files(),
        config=study_path("{task}/data/prepare-data.config.json"),
    log:
        job_log("prepare_data"),
    benchmark:
        job_benchmark("prepare_data")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("prepare_data")
    resources:
        **rule_resources("prepare_data"),
    params:
        cfg=lambda w: section_json(config["tasks"][w.task]),
        out_dir=lambda w: data_dir(w.task),
    shell:
        launcher("prepare_data", parallel=False)
        + " prepare-data --task {wildcards.task:q} --config-json {params.cfg:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule tokenizer:
    input:
        study_path("{task}/data/train.jsonl"),
    output:
        directory(study_path("{task}/tokenizer")),
    log:
        job_log("tokenizer"),
    benchmark:
        job_benchmark("tokenizer")
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("tokenizer")
    resources:
        **rule_resources("tokenizer"),
    params:
        cfg=lambda w: section_json(config["tokenizer"]),
        data_dir=lambda w: data_dir(w.task),
    shell:
        launcher("tokenizer", parallel=False)
        + " train-tokenizer --data-dir {params.data_dir:q} --config-json {params.cfg:q}"
        " --out-dir {output:q} > {log:q} 2>&1"
