# The eval layer: perplexity per domain, lm-eval on local tasks, and one table over all models.


# Rolling-window perplexity (token, word, char; bits per byte) per domain on held-out docs.
# The eval commands that load a model share this rule's shape: every named input is passed as
# --NAME PATH, in order, and the command's config block as --params.
rule eval_ppl:
    input:
        model=MODEL,
        tokenizer=TOKENIZER,
        docs=DOCS,
    output:
        "results/{run}/eval/{method}/s{seed}/ppl.json",
    log:
        logs("eval_ppl/{method}-s{seed}.log"),
    benchmark:
        benchmarks("eval_ppl/{method}-s{seed}.tsv")
    conda:
        ENV
    threads: THREADS["eval"]
    resources:
        **job_resources("infer"),
    params:
        **cli_params("eval ppl"),
        command="ppl",
        trust=model_trust(),
        inputs=input_flags,
        device=eval_device(),
    shell:
        "python -m winnow eval {params.command:q} {params.trust:q} {params.inputs:q}"
        " --params {params.cfg:q} --device {params.device:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"


# lm-eval (offline, task YAMLs generated at run time with absolute paths) on the local tasks.
use rule eval_ppl as eval_harness with:
    input:
        model=MODEL,
        tokenizer=TOKENIZER,
        lastword="results/{run}/eval/tasks/lastword.jsonl",
        choice="results/{run}/eval/tasks/choice.jsonl",
    output:
        "results/{run}/eval/{method}/s{seed}/harness.json",
    log:
        logs("eval_harness/{method}-s{seed}.log"),
    benchmark:
        benchmarks("eval_harness/{method}-s{seed}.tsv")
    params:
        **cli_params("eval harness"),
        command="harness",


# Mean loss on a target subset (e.g. the PDS target J): per-example token-mean CE, averaged.
use rule eval_ppl as eval_target with:
    input:
        model=MODEL,
        examples=EXAMPLES,
        manifest=MANIFEST,
        ids="results/{run}/subsets/{subset}/ids.parquet",
    output:
        "results/{run}/eval/{method}/s{seed}/target-{subset}.json",
    log:
        logs("eval_target/{method}-s{seed}-{subset}.log"),
    benchmark:
        benchmarks("eval_target/{method}-s{seed}-{subset}.tsv")
    params:
        **cli_params("eval target"),
        command="target",


# One row per (method, seed): the headline numbers of every evaluated model, side by side.
rule eval_table:
    input:
        all_model_evals,
    output:
        report(
            "results/{run}/eval/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
    log:
        logs("eval_table.log"),
    conda:
        ENV
    params:
        code=script_code("eval_table.py", "eval table"),
    script:
        "../workflow/scripts/eval_table.py"


# A method against random at the same size and seed: per-seed differences, means, wins.
rule eval_compare:
    input:
        compare_inputs,
    output:
        report(
            "results/{run}/eval/compare-{method}.tsv",
            caption="../report/compare.rst",
            category="Evaluation",
            subcategory="{method}",
        ),
    log:
        logs("eval_compare/{method}.log"),
    conda:
        ENV
    params:
        code=script_code("eval_compare.py", "eval compare"),
    script:
        "../workflow/scripts/eval_compare.py"
