# External scores (docs/external_scores.md): a score file made elsewhere, validated and aligned to
# the pool, then the shared `select`, train and eval like every method, compared with random.


# The user's file is an input: its sha256 is in the sidecar, and a changed file reruns the arm.
rule external_scores:
    input:
        scores_file=external_file,
        examples=EXAMPLES,
        pool=POOL,
    output:
        scores="results/{run}/scores/external-{name}/scores.parquet",
        rejects="results/{run}/external/{name}/rejects.parquet",
        report="results/{run}/external/{name}/report.json",
    log:
        logs("external_scores/{name}.log"),
    wildcard_constraints:
        name=EXTERNAL_NAME,
    conda:
        ENV
    params:
        args=external_args,
        code=code("select external-scores"),
    shell:
        "python -m winnow select external-scores --scores-file {input.scores_file:q}"
        " --examples {input.examples:q} --pool {input.pool:q} {params.args:q}"
        " --out {output.scores:q} --rejects {output.rejects:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"
