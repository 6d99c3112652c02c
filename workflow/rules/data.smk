# Data: a task's splits, and the tokenizer of from-scratch models.


rule prepare_data:
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
    shell:
        "python -m ketchup prepare-data --task {wildcards.task:q} --config-json {params.cfg:q}"
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
    shell:
        "python -m ketchup train-tokenizer --data-dir {params.data_dir:q} --config-json {params.cfg:q}"
        " --out-dir {output:q} > {log:q} 2>&1"
