# The selection core: any method's scores → selected ids. `random` is the baseline selector.


# Equal scores over the pool: Gumbel-top-k on them (temperature > 0) is a uniform sample per seed.
rule random_scores:
    input:
        pool=POOL,
    output:
        "results/{run}/scores/random/scores.parquet",
    log:
        logs("random_scores.log"),
    conda:
        ENV
    params:
        code=code("select random-scores"),
    shell:
        "python -m winnow select random-scores --pool {input.pool:q}"
        " --out {output:q} --threads {threads:q} > {log:q} 2>&1"


# Top-k (temperature 0, ties by example_id) or Gumbel-top-k sampling from softmax(goodness/τ);
# the seed drives the Gumbel noise, so each seed is one replicate of the method.
rule select:
    input:
        scores="results/{run}/scores/{method}/scores.parquet",
    output:
        ids="results/{run}/selected/{method}/s{seed}/ids.parquet",
        manifest="results/{run}/selected/{method}/s{seed}/manifest.json",
    log:
        logs("select/{method}-s{seed}.log"),
    conda:
        ENV
    params:
        args=select_args,
        code=code("select select"),
    shell:
        "python -m winnow select select --scores {input.scores:q} {params.args:q} --seed {wildcards.seed:q}"
        " --out {output.ids:q} --manifest {output.manifest:q} --threads {threads:q} > {log:q} 2>&1"
