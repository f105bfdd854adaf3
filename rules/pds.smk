# PDS (data selection via optimal control, Gu et al. 2024): gamma from the PMP solver on a proxy
# sample, a data scorer fitted to gamma, the pool scored block by block, then the shared `select`.


# θ0 of the solver: the shared train layer, on random pool data, for a few steps.
use rule train_lm as pds_init with:
    input:
        **lm_inputs(ids=POOL),
    output:
        **model_files("results/{run}/pds/init"),
    log:
        logs("pds_init.log"),
    benchmark:
        benchmarks("pds_init.tsv")
    params:
        train=pds_init_config(),
        ckpt_root="results/{run}/pds/init/checkpoints",


# PMP solver: forward SGD trajectory (θ every k steps + batches as ids, under trajectory/), costates
# backward with Hessian-vector products, per-example contributions by forward-mode JVP → gamma.
rule pds_solve:
    input:
        examples=EXAMPLES,
        manifest=MANIFEST,
        init="results/{run}/pds/init/model/model.safetensors",
        pool=POOL,
        proxy="results/{run}/subsets/pds_proxy/ids.parquet",
        target="results/{run}/subsets/pds_target/ids.parquet",
    output:
        gamma="results/{run}/pds/gamma.parquet",
        report="results/{run}/pds/solver.json",
    log:
        logs("pds_solve.log"),
    benchmark:
        benchmarks("pds_solve.tsv")
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("solver"),
    params:
        **cli_params("pds solve"),
        trust=model_trust(),
        work_dir="results/{run}/pds/trajectory",
        device=eval_device(),
    shell:
        "python -m winnow pds solve {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --init {input.init:q} --pool {input.pool:q} --proxy {input.proxy:q}"
        " --target {input.target:q} --params {params.cfg:q} --work-dir {params.work_dir:q}"
        " --device {params.device:q} --gamma {output.gamma:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"
