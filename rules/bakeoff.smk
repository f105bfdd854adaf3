# The bake-off: random, PDS, MATES and LESS selecting from one pool (subsets.pool) at one budget.
# The model-aware arms share PDS's warm model θ0, its proxy sample (what they label) and its target
# set (what they aim at), and one data scorer carries each arm's labels to the whole pool; then each
# arm is one more method of the spine (select → train_lm → evals), and a leaderboard sums it up.


# MATES arm: exact oracle influence on θ0 (one AdamW step per proxy candidate, from θ0's moments),
# measured on the PDS target; the shared scorer (rules/scorer.smk, scorer `mates_pool`) fits it.
use rule mates_oracle as bakeoff_mates_oracle with:
    input:
        ckpt="results/{run}/pds/init/model/model.safetensors",
        examples=EXAMPLES,
        manifest=MANIFEST,
        reference_ids="results/{run}/subsets/pds_target/ids.parquet",
        probe="results/{run}/subsets/pds_proxy/ids.parquet",
    output:
        oracle="results/{run}/bakeoff/mates_pool/oracle.parquet",
        report="results/{run}/bakeoff/mates_pool/oracle.json",
    log:
        logs("bakeoff_mates_oracle.log"),
    benchmark:
        benchmarks("bakeoff_mates_oracle.tsv")
    params:
        seed=BAKEOFF_SEED,
        cfg=block_params("mates oracle", n_probe=BAKEOFF.get("n_probe")),


# LESS arm, warm-up: LoRA on θ0 over a seeded fraction of the pool (less.warmup, less.lora).
use rule less_warmup as bakeoff_less_warmup with:
    input:
        examples=EXAMPLES,
        manifest=MANIFEST,
        base="results/{run}/pds/init/model/model.safetensors",
        pool=POOL,
    output:
        epochs=bakeoff_less_epochs(SimpleNamespace(run="{run}")),
        report="results/{run}/bakeoff/less_pool/warmup/warmup.json",
    log:
        logs("bakeoff_less_warmup.log"),
    benchmark:
        benchmarks("bakeoff_less_warmup.tsv")
    params:
        seed=BAKEOFF_SEED,
        ckpt_root="results/{run}/bakeoff/less_pool/warmup/checkpoints",


# LESS arm, features at one warm-up epoch: Adam features of the proxy sample, SGD features of the
# PDS target (the same projection and store format as rules/less.smk).
use rule less_features as bakeoff_less_features with:
    input:
        examples=EXAMPLES,
        manifest=MANIFEST,
        base="results/{run}/pds/init/model/model.safetensors",
        checkpoint="results/{run}/bakeoff/less_pool/warmup/epoch-{epoch}/model.safetensors",
        pool="results/{run}/subsets/pds_proxy/ids.parquet",
        target="results/{run}/subsets/pds_target/ids.parquet",
    output:
        pool=expand(
            "results/{{run}}/bakeoff/less_pool/features/epoch-{{epoch}}/pool-{block}.npy",
            block=BLOCKS,
        ),
        target="results/{run}/bakeoff/less_pool/features/epoch-{epoch}/target.npy",
    log:
        logs("bakeoff_less_features/epoch{epoch}.log"),
    benchmark:
        benchmarks("bakeoff_less_features/epoch{epoch}.tsv")
    params:
        blocks=verbatim(["--shards-per-block", SHARDS_PER_BLOCK]),


# LESS arm, labels: lr-weighted cosine of each proxy example with the target, averaged over the
# target (one subtask); the shared scorer (scorer `less_pool`) fits these.
rule bakeoff_less_match:
    input:
        unpack(bakeoff_less_features),
        warmup="results/{run}/bakeoff/less_pool/warmup/warmup.json",
    output:
        scores="results/{run}/bakeoff/less_pool/labels.parquet",
        report="results/{run}/bakeoff/less_pool/match.json",
    log:
        logs("bakeoff_less_match.log"),
    conda:
        ENV
    params:
        # One subtask: the mean over the target, whatever less.aggregate says.
        **cli_params("less match", aggregate="mean"),
    shell:
        "python -m winnow less match --pool-features {input.pool:q} --target-features {input.target:q}"
        " --warmup {input.warmup:q} --params {params.cfg:q} --out {output.scores:q} --report {output.report:q}"
        " > {log:q} 2>&1"


# Every arm's models over every seed on the shared suite: mean ± sd, ranked by bakeoff.primary.
rule bakeoff_leaderboard:
    input:
        bakeoff_evals,
    output:
        table=report(
            "results/{run}/bakeoff/leaderboard.tsv",
            caption="../report/bakeoff.rst",
            category="Bake-off",
        ),
        html=report(
            "results/{run}/bakeoff/leaderboard.html",
            caption="../report/bakeoff.rst",
            category="Bake-off",
        ),
    log:
        logs("bakeoff_leaderboard.log"),
    conda:
        ENV
    params:
        **cli_params("eval leaderboard"),
        metrics=verbatim([f"--metrics={m}" for m in bakeoff_metrics()]),
    shell:
        "python -m winnow eval leaderboard --evals {input:q} --params {params.cfg:q}"
        " {params.metrics:q} --baseline random --out {output.table:q} --html {output.html:q}"
        " > {log:q} 2>&1"
