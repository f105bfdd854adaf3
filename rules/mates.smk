# MATES (model-aware data selection with data influence models, Yu et al. 2024): pretraining in
# stages; after each stage the exact oracle influence of probe candidates on the current model, a
# data influence model fitted to it, the next stage's pool scored, the next stage's data selected.
# Arms: `mates` and `mrandom` (the same staged schedule with random selection at every stage).


# Disjoint pools from one seeded permutation of the candidate pool, cut [probe | stage 0 | stage 1
# | ...]: one job per pool, so adding a stage adds one job and leaves the others' pools as they are.
rule mates_pools:
    input:
        pool=POOL,
    output:
        "results/{run}/mates/pools/{pool}.parquet",
    log:
        logs("mates_pools/{pool}.log"),
    wildcard_constraints:
        pool=r"probe|stage-\d+",
    conda:
        ENV
    params:
        **cli_params("mates pools"),
        part=lambda wildcards: wildcards.pool.removeprefix("stage-"),
    shell:
        "python -m winnow mates pools --pool {input.pool:q} --part {params.part:q}"
        " --params {params.cfg:q} --out {output:q} > {log:q} 2>&1"


# The reference task: LAMBADA-style last words from held-out text (val: for the oracle; test: eval).
# Its tokens form shard 1000000 (winnow.cli.mates.REFERENCE_SHARD), apart from the corpus ids.
rule mates_reference:
    input:
        docs=DOCS,
        tokenizer=TOKENIZER,
        contract=contract_gate(),
    output:
        tokens="results/{run}/mates/reference/{split}/tokens-1000000.bin",
        examples="results/{run}/mates/reference/{split}/examples.parquet",
        ids="results/{run}/mates/reference/{split}/ids.parquet",
        manifest="results/{run}/mates/reference/{split}/manifest.json",
    log:
        logs("mates_reference/{split}.log"),
    conda:
        ENV
    params:
        **cli_params("mates reference"),
        n=mates_reference_size,
    shell:
        "python -m winnow mates reference --docs {input.docs:q} --tokenizer {input.tokenizer:q}"
        " --split {wildcards.split:q} --n {params.n:q} --params {params.cfg:q}"
        " --tokens {output.tokens:q} --examples {output.examples:q} --ids {output.ids:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"


# Equal scores over a stage pool: the random arm's Gumbel-top-k draws a uniform sample per seed.
rule mates_random_scores:
    input:
        pool="results/{run}/mates/pools/stage-{k}.parquet",
    output:
        "results/{run}/mates/pools/stage-{k}-equal-scores.parquet",
    log:
        logs("mates_random_scores/{k}.log"),
    conda:
        ENV
    params:
        code=code("select random-scores"),
    shell:
        "python -m winnow select random-scores --pool {input.pool:q} --out {output:q} > {log:q} 2>&1"


# The data of stage k: Gumbel-top-k over the stage pool's scores (shared select command).
rule mates_select:
    input:
        scores=mates_stage_scores,
    output:
        ids="results/{run}/mates/{arm}/s{seed}/stage-{k}/ids.parquet",
        manifest="results/{run}/mates/{arm}/s{seed}/stage-{k}/selection.json",
    log:
        logs("mates_select/{arm}-s{seed}-{k}.log"),
    conda:
        ENV
    params:
        args=mates_select_args,
        code=code("select select"),
    shell:
        "python -m winnow select select --scores {input.scores:q} {params.args:q}"
        " --out {output.ids:q} --manifest {output.manifest:q} > {log:q} 2>&1"


# Stage k of pretraining; stage k ≥ 1 resumes from the end of stage k−1 (weights + AdamW moments).
use rule train_lm as mates_train with:
    input:
        unpack(mates_train_inputs),
        pretrained=pretrained_files,
    output:
        **model_files("results/{run}/mates/{arm}/s{seed}/stage-{k}"),
    log:
        logs("mates_train/{arm}-s{seed}-{k}.log"),
    benchmark:
        benchmarks("mates_train/{arm}-s{seed}-{k}.tsv")
    params:
        train=mates_stage_config,
        resume=mates_resume_arg,
        ckpt_root="results/{run}/mates/{arm}/s{seed}/stage-{k}/checkpoints",


# Oracle influence at the end of stage k−1: one exact AdamW step per probe candidate, then the
# change of the reference loss (batched over candidates; θ and moments never leave memory).
rule mates_oracle:
    input:
        ckpt=mates_previous_model,
        examples=EXAMPLES,
        manifest=MANIFEST,
        reference_examples="results/{run}/mates/reference/val/examples.parquet",
        reference_tokens="results/{run}/mates/reference/val/tokens-1000000.bin",
        reference_ids="results/{run}/mates/reference/val/ids.parquet",
        probe="results/{run}/mates/pools/probe.parquet",
    output:
        oracle="results/{run}/mates/mates/s{seed}/stage-{k}/oracle.parquet",
        report="results/{run}/mates/mates/s{seed}/stage-{k}/oracle.json",
    log:
        logs("mates_oracle/s{seed}-{k}.log"),
    benchmark:
        benchmarks("mates_oracle/s{seed}-{k}.tsv")
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("oracle"),
    params:
        **cli_params("mates oracle"),
        trust=model_trust(),
        # Each named input is its --flag: the bake-off's oracle (rules/bakeoff.smk) has other inputs.
        inputs=input_flags,
        seed=mates_probe_seed,
        device=eval_device(),
    shell:
        "python -m winnow mates oracle {params.trust:q} {params.inputs:q}"
        " --seed {params.seed:q} --params {params.cfg:q}"
        " --device {params.device:q} --out {output.oracle:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# The evaluation checkpoint of a stage: a short exponentially decaying run from its end (as MATES).
use rule train_lm as mates_decay with:
    input:
        unpack(mates_decay_inputs),
        pretrained=pretrained_files,
    output:
        **model_files("results/{run}/models/{arm}_k{k}/s{seed}"),
    log:
        logs("mates_decay/{arm}-s{seed}-{k}.log"),
    benchmark:
        benchmarks("mates_decay/{arm}-s{seed}-{k}.tsv")
    params:
        train=mates_decay_config,
        resume=resume_from("resume"),
        ckpt_root="results/{run}/models/{arm}_k{k}/s{seed}/checkpoints",


# Reference loss (held-out test last words) of an evaluation checkpoint.
use rule eval_target as mates_eval_reference with:
    input:
        model=MODEL,
        examples="results/{run}/mates/reference/test/examples.parquet",
        manifest="results/{run}/mates/reference/test/manifest.json",
        ids="results/{run}/mates/reference/test/ids.parquet",
    output:
        "results/{run}/eval/{method}/s{seed}/reference.json",
    log:
        logs("mates_eval_reference/{method}-s{seed}.log"),
    benchmark:
        benchmarks("mates_eval_reference/{method}-s{seed}.tsv")


# MATES against the random arm, stage by stage, over every seed.
rule mates_compare:
    input:
        mates_compare_inputs,
    output:
        report(
            "results/{run}/mates/compare.tsv",
            caption="../report/mates_compare.rst",
            category="MATES",
        ),
    log:
        logs("mates_compare.log"),
    conda:
        ENV
    params:
        code=code("mates compare"),
    shell:
        "python -m winnow mates compare --evals {input:q} --out {output:q} > {log:q} 2>&1"
