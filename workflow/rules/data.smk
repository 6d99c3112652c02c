# Data: the hub's models and datasets, a task's splits, and the tokenizer of from-scratch models.


# Local (the submitting machine has the network): every job that reads the item waits for its
# record and runs with the hub offline. A local directory or local `files` are only recorded.
rule fetch:
    output:
        "results/hub/{item}.json",
    log:
        "results/logs/fetch_{item}.log",
    conda:
        "../../envs/ketchup.yaml"
    params:
        args=fetch_args,
    shell:
        "python -m ketchup fetch {params.args:q} --out {output:q} > {log:q} 2>&1"


rule prepare_data:
    input:
        lambda w: fetched(f"data-{w.task}"),
    output:
        expand("results/{{task}}/data/{split}.jsonl", split=SPLITS),
        config="results/{task}/data/prepare-data.config.json",
    log:
        "results/{task}/logs/prepare_data.log",
    benchmark:
        "results/{task}/benchmarks/prepare_data.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("prepare_data")
    resources:
        **rule_resources("prepare_data"),
    params:
        cfg=lambda w: section_json(config["tasks"][w.task]),
        out_dir=lambda w: f"results/{w.task}/data",
        launcher=launcher("prepare_data"),
    shell:
        "{params.launcher} prepare-data --task {wildcards.task:q} --config-json {params.cfg:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule tokenizer:
    input:
        "results/{task}/data/train.jsonl",
    output:
        directory("results/{task}/tokenizer"),
    log:
        "results/{task}/logs/tokenizer.log",
    benchmark:
        "results/{task}/benchmarks/tokenizer.tsv"
    conda:
        "../../envs/ketchup.yaml"
    threads: rule_threads("tokenizer")
    resources:
        **rule_resources("tokenizer"),
    params:
        cfg=section_json(config["tokenizer"]),
        data_dir=lambda w: f"results/{w.task}/data",
        launcher=launcher("tokenizer"),
    shell:
        "{params.launcher} train-tokenizer --data-dir {params.data_dir:q} --config-json {params.cfg:q}"
        " --out-dir {output:q} > {log:q} 2>&1"
