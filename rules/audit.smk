# Reproducibility audit of whatever results/{run}/ holds now: every artifact re-hashed against its
# provenance sidecar (bytes, code hash, inputs, dirty tree). It never rebuilds anything first, and
# it runs on every call (`stamp` changes), so it always reports the present state.
rule audit:
    output:
        table=f"results/{RUN}/audit/audit.tsv",
        summary=f"results/{RUN}/audit/audit.json",
    log:
        f"results/{RUN}/logs/audit.log",
    conda:
        ENV
    params:
        root=lambda wildcards, output: str(Path(output.table).parent.parent),
        strict=["--strict"] if str(config.get("audit_strict")).lower() == "true" else [],
        stamp=lambda wildcards: time.time_ns(),
        code=code("audit verify"),
    shell:
        "python -m winnow audit verify --root {params.root:q} --out {output.table:q}"
        " --summary {output.summary:q} {params.strict:q} > {log:q} 2>&1"
