# Standard lm-eval tasks and the user's own task YAMLs (config eval.harness; docs/evaluation.md):
# checked once per run (names resolve, data loads offline), then run on every evaluated model.


# Every eval.harness task resolves with lm-eval's TaskManager and its data loads offline.
rule eval_harness_check:
    input:
        harness_include_files(),
    output:
        "results/{run}/eval/harness-tasks.json",
    log:
        logs("eval_harness_check.log"),
    conda:
        ENV
    params:
        **cli_params("eval harness-check"),
    shell:
        "python -m winnow eval harness-check --params {params.cfg:q} --out {output:q} > {log:q} 2>&1"


# lm-eval on the checked eval.harness tasks; results join ppl/harness/target in the tables.
use rule eval_ppl as eval_harness_tasks with:
    input:
        model=MODEL,
        tokenizer=TOKENIZER,
        resolved="results/{run}/eval/harness-tasks.json",
    output:
        "results/{run}/eval/{method}/s{seed}/harness-tasks.json",
    log:
        logs("eval_harness_tasks/{method}-s{seed}.log"),
    benchmark:
        benchmarks("eval_harness_tasks/{method}-s{seed}.tsv")
    params:
        **cli_params("eval harness-tasks"),
        command="harness-tasks",
