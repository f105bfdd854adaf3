# The shared scorer stage (PDS, MATES, the LESS predictor): fit a small model to expensive labels,
# then score the pool one block of token shards at a time.


# A GPT-NeoX encoder + mean pooling + linear head on z-scored labels clipped to ±clip; the
# checkpoint with the best validation Spearman is kept. fit.json holds Spearman, Pearson and MSE.
rule fit_scorer:
    input:
        sources=scorer_source_files,
        examples=EXAMPLES,
        manifest=MANIFEST,
        tokenizer=TOKENIZER,
        labels=scorer_labels,
    output:
        model="results/{run}/scorers/{scorer}/model.safetensors",
        report="results/{run}/scorers/{scorer}/fit.json",
    log:
        logs("fit_scorer/{scorer}.log"),
    benchmark:
        benchmarks("fit_scorer/{scorer}.tsv")
    conda:
        ENV
    # Small scorers run faster on one thread; two score_pool jobs then share a 2-core machine.
    threads: 1
    resources:
        **job_resources("scorer"),
    params:
        scorer=scorer_config,
        column=scorer_label_column,
        device=eval_device(),
        code=code("scorer fit"),
    shell:
        "python -m winnow scorer fit --examples {input.examples:q} --manifest {input.manifest:q}"
        " --tokenizer {input.tokenizer:q} --labels {input.labels:q}"
        " --label-column {params.column:q} --scorer-config {params.scorer:q} --device {params.device:q}"
        " --out {output.model:q} --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"


# Scores of the pool examples that live in one block of token shards (resumable within the block).
rule score_pool:
    input:
        sources=scorer_source_files,
        scorer="results/{run}/scorers/{scorer}/model.safetensors",
        examples=EXAMPLES,
        manifest=MANIFEST,
        tokenizer=TOKENIZER,
        pool=scorer_pool,
    output:
        "results/{run}/scores/{scorer}/parts/{block}.parquet",
    log:
        logs("score_pool/{scorer}-{block}.log"),
    benchmark:
        benchmarks("score_pool/{scorer}-{block}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("infer"),
    params:
        trust=scorer_trust,
        batch_size=64,
        device=eval_device(),
        state="results/{run}/scores/{scorer}/parts/.state-{block}",
        code=code("scorer score"),
    shell:
        "python -m winnow scorer score {params.trust:q} --scorer {input.scorer:q} --examples {input.examples:q}"
        " --manifest {input.manifest:q} --block {wildcards.block:q}"
        " --tokenizer {input.tokenizer:q} --ids {input.pool:q} --batch-size {params.batch_size:q}"
        " --device {params.device:q} --state {params.state:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"


# One scores table (example_id, score) for the whole pool, the input of `select`.
rule merge_scores:
    input:
        block_scores,
    output:
        "results/{run}/scores/{scorer}/scores.parquet",
    log:
        logs("merge_scores/{scorer}.log"),
    conda:
        ENV
    params:
        code=code("scorer merge"),
    shell:
        "python -m winnow scorer merge --parts {input:q} --out {output:q} > {log:q} 2>&1"
