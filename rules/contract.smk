# The data contract: fails with one message listing every config key whose data the corpus lacks
# (names what exists instead); every job reading subsets, partitions or tasks takes its output.
rule contract:
    input:
        ingest="results/{run}/data/ingest.json",
        manifest="results/{run}/tokens/manifest.json",
    output:
        "results/{run}/data/contract.json",
    log:
        "results/{run}/logs/contract.log",
    conda:
        ENV
    params:
        config=contract_config,
        code=code("data contract"),
    shell:
        "python -m winnow data contract --ingest {input.ingest:q} --manifest {input.manifest:q}"
        " --config {params.config:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"
