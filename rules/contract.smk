# The data contract: fails with one message listing every config key whose data the corpus lacks
# (names what exists instead); every job reading subsets, partitions or tasks takes its output
# (as ancient(): a gate, not data). src/winnow/data/contract.py has the checks.
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
    # the message is the point of the job: on the console (tail of the log), not only in its log
    shell:
        "python -m winnow data contract --ingest {input.ingest:q} --manifest {input.manifest:q}"
        " --config {params.config:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"
        " || {{ tail -n 60 {log:q} >&2; exit 1; }}"
