# The data contract: fails with one message listing every config key whose data the corpus lacks
# (names what exists instead); every job reading subsets, partitions or tasks takes its output
# (as ancient(): a gate, not data). src/winnow/data/contract.py has the checks.
rule contract:
    # The config reaches the job here, not as a param: an edited config must not rerun this gate,
    # since Snakemake then drops the consumers' own missing outputs from the plan (their gate input
    # is ancient). An edit is checked at parse time instead (common_contract.smk), against the
    # counts ingest and tokenize recorded. The message is the point of the job: on the console.
    input:
        ingest="results/{run}/data/ingest.json",
        manifest=MANIFEST,
    output:
        "results/{run}/data/contract.json",
    log:
        logs("contract.log"),
    conda:
        ENV
    params:
        code=code("data contract"),
    run:
        checked = contract_config(wildcards)
        shell(
            "python -m winnow data contract --ingest {input.ingest:q} --manifest {input.manifest:q}"
            " --config {checked:q} --out {output:q} --threads {threads:q} > {log:q} 2>&1"
            " || {{ tail -n 60 {log:q} >&2; exit 1; }}"
        )
