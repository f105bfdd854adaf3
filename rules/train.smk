# The train layer: a causal LM trained on exactly the selected ids.


# Intermediate checkpoints go to checkpoints/ (not outputs, so a killed job's rerun resumes from them).
rule train_lm:
    input:
        **lm_inputs(ids="results/{run}/selected/{method}/s{seed}/ids.parquet"),
    output:
        **model_files("results/{run}/models/{method}/s{seed}"),
    log:
        logs("train_lm/{method}-s{seed}.log"),
    benchmark:
        benchmarks("train_lm/{method}-s{seed}.tsv")
    wildcard_constraints:
        method="|".join(SELECTION_METHODS),  # MATES and ablation models have rules of their own
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("train"),
    params:
        model=verbatim(model_config()),
        train=train_seed_config,
        resume=[],  # from scratch (or the pretrained model); see resume_from()
        ckpt_root="results/{run}/models/{method}/s{seed}/checkpoints",
        code=code("train lm"),
    shell:
        "python -m winnow train lm --examples {input.examples:q} --manifest {input.manifest:q}"
        " --tokenizer {input.tokenizer:q} --ids {input.ids:q}"
        " --model-config {params.model:q} --train-config {params.train:q} {params.resume:q}"
        " --ckpt-root {params.ckpt_root:q} --out {output.model:q} --threads {threads:q} > {log:q} 2>&1"
