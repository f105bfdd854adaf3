# The data layer: raw records → docs (+ rejects) → tokenizer → token shards + examples → id lists.


# Every input record lands in docs or in rejects (with a reason); the manifest counts both.
# No accepted document at all fails the job (the log names each input's reasons); the rejects
# then stay in logs/ingest-rejects.parquet, since a failed job's outputs are removed.
rule ingest:
    input:
        ancient(corpus_inputs()),
    output:
        docs=DOCS,
        rejects="results/{run}/data/rejects.parquet",
        manifest="results/{run}/data/ingest.json",
    log:
        logs("ingest.log"),
    benchmark:
        benchmarks("ingest.tsv")
    conda:
        ENV
    params:
        **cli_params("data ingest"),
        input_options=input_options,
        failed_rejects="results/{run}/logs/ingest-rejects.parquet",
    shell:
        "python -m winnow data ingest --inputs {input:q} --params {params.cfg:q}"
        " --input-options {params.input_options:q} --docs {output.docs:q}"
        " --rejects {output.rejects:q} --manifest {output.manifest:q}"
        " --failed-rejects {params.failed_rejects:q} --threads {threads:q} > {log:q} 2>&1"


# A byte-level BPE trained on the train split (or a local HF tokenizer folder, copied).
rule tokenizer:
    input:
        source=tokenizer_source_files,
        docs=DOCS,
    output:
        TOKENIZER,
    log:
        logs("tokenizer.log"),
    benchmark:
        benchmarks("tokenizer.tsv")
    conda:
        ENV
    params:
        **cli_params("data tokenizer"),
        local=tokenizer_local,
    shell:
        "python -m winnow data tokenizer --docs {input.docs:q} {params.local:q}"
        " --params {params.cfg:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"


# One block of packed token shards and their examples, in one folder: tokens-{shard}.bin and
# examples-{shard}.parquet (global example_id = shard * 2**32 + index).
rule tokenize:
    input:
        docs=DOCS,
        tokenizer=TOKENIZER,
    output:
        directory("results/{run}/tokens/block-{block}"),
    log:
        logs("tokenize/{block}.log"),
    benchmark:
        benchmarks("tokenize/{block}.tsv")
    conda:
        ENV
    params:
        **cli_params("data tokenize", shards_per_block=SHARDS_PER_BLOCK),
    shell:
        "python -m winnow data tokenize --docs {input.docs:q} --tokenizer {input.tokenizer:q}"
        " --block {wildcards.block:q} --params {params.cfg:q} --out {output:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# The examples table of all shards, and the manifest every reader of the shards needs (dtype,
# seq_len, and where each shard's tokens are: readers take the manifest, not a list of shards).
rule merge_examples:
    input:
        blocks=token_blocks,
        tokenizer=TOKENIZER,
    output:
        examples=EXAMPLES,
        manifest=MANIFEST,
    log:
        logs("merge_examples.log"),
    conda:
        ENV
    params:
        **cli_params("data merge-examples", shards_per_block=SHARDS_PER_BLOCK),
    shell:
        "python -m winnow data merge-examples --blocks {input.blocks:q} --tokenizer {input.tokenizer:q}"
        " --params {params.cfg:q} --out {output.examples:q} --manifest {output.manifest:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# A named, seeded id list (config subsets.{subset}): the pool, proxy samples, warm-up sets, partitions.
rule sample_subset:
    input:
        examples=EXAMPLES,
        contract=contract_gate(),
    output:
        "results/{run}/subsets/{subset}/ids.parquet",
    log:
        logs("sample_subset/{subset}.log"),
    conda:
        ENV
    params:
        args=subset_args,
        code=code("data sample-subset"),
    shell:
        "python -m winnow data sample-subset --examples {input.examples:q} {params.args:q}"
        " --out {output:q} --threads {threads:q} > {log:q} 2>&1"


# Held-out evaluation data: LAMBADA-style last-word items and 4-way next-sentence choices.
rule eval_tasks:
    input:
        docs=DOCS,
        contract=contract_gate(),
    output:
        lastword="results/{run}/eval/tasks/lastword.jsonl",
        choice="results/{run}/eval/tasks/choice.jsonl",
    log:
        logs("eval_tasks.log"),
    conda:
        ENV
    params:
        **cli_params("data eval-tasks"),
    shell:
        "python -m winnow data eval-tasks --docs {input.docs:q} --params {params.cfg:q}"
        " --lastword {output.lastword:q} --choice {output.choice:q} --threads {threads:q} > {log:q} 2>&1"
