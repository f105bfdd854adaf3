# The eval layer: perplexity per domain, lm-eval on local tasks, and one table over all models.


# Rolling-window perplexity (token, word, char; bits per byte) per domain on held-out docs.
rule eval_ppl:
    input:
        model="results/{run}/models/{method}/s{seed}/model/model.safetensors",
        tokenizer="results/{run}/tokenizer/tokenizer.json",
        docs="results/{run}/data/docs.parquet",
    output:
        "results/{run}/eval/{method}/s{seed}/ppl.json",
    log:
        "results/{run}/logs/eval_ppl/{method}-s{seed}.log",
    benchmark:
        "results/{run}/benchmarks/eval_ppl/{method}-s{seed}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        split=config["eval"]["split"],
        max_docs=config["eval"]["max_docs_per_domain"],
        batch_size=config["eval"]["batch_size"],
        device=eval_device(),
        code=code("eval ppl"),
    shell:
        "python -m winnow eval ppl --model {input.model} --tokenizer {input.tokenizer} --docs {input.docs}"
        " --split {params.split} --max-docs-per-domain {params.max_docs} --batch-size {params.batch_size}"
        " --device {params.device} --out {output} --threads {threads} > {log} 2>&1"


# lm-eval (offline, task YAMLs generated at run time with absolute paths) on the local tasks.
rule eval_harness:
    input:
        model="results/{run}/models/{method}/s{seed}/model/model.safetensors",
        tokenizer="results/{run}/tokenizer/tokenizer.json",
        lastword="results/{run}/eval/tasks/lastword.jsonl",
        choice="results/{run}/eval/tasks/choice.jsonl",
    output:
        "results/{run}/eval/{method}/s{seed}/harness.json",
    log:
        "results/{run}/logs/eval_harness/{method}-s{seed}.log",
    benchmark:
        "results/{run}/benchmarks/eval_harness/{method}-s{seed}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        limit=harness_limit_arg(),
        batch_size=config["eval"]["batch_size"],
        device=eval_device(),
        code=code("eval harness"),
    shell:
        "python -m winnow eval harness --model {input.model} --tokenizer {input.tokenizer}"
        " --lastword {input.lastword} --choice {input.choice} {params.limit}"
        " --batch-size {params.batch_size} --device {params.device} --out {output}"
        " --threads {threads} > {log} 2>&1"


# One row per (method, seed): the headline numbers of every evaluated model, side by side.
rule eval_table:
    input:
        ppl=expand(
            "results/{{run}}/eval/{method}/s{seed}/ppl.json",
            method=config["methods"],
            seed=config["seeds"],
        ),
        harness=expand(
            "results/{{run}}/eval/{method}/s{seed}/harness.json",
            method=config["methods"],
            seed=config["seeds"],
        ),
    output:
        "results/{run}/eval/summary.tsv",
    log:
        "results/{run}/logs/eval_table.log",
    conda:
        ENV
    params:
        code=code("eval table"),
    shell:
        "python -m winnow eval table --ppl {input.ppl} --harness {input.harness}"
        " --out {output} > {log} 2>&1"
