# Modular data ablations (Na et al. 2024, "ez-data-ablations"): a seed model; one component per
# partition (continued pretraining of the seed at a fixed budget); mixture models on unions of
# partitions with equal shares; merges (uniform parameter averages of components); perplexity per
# domain; how well merged models predict mixture models. Helpers are in common_ablation.smk.


# A mixture is its sorted partitions joined with "+" (kjv+pydocs); a partition name has no "+".
wildcard_constraints:
    part=NAME_PATTERN,
    mix=MIXTURE_PATTERN,
    macro=NAME_PATTERN,


# The train ids of one partition (examples whose ablation.column is {part}) + counts per split.
rule ablation_partition:
    input:
        examples=EXAMPLES,
        docs=DOCS,
        contract=contract_gate(),
    output:
        ids="results/{run}/ablation/partitions/{part}/ids.parquet",
        report="results/{run}/ablation/partitions/{part}/partition.json",
    log:
        logs("ablation_partition/{part}.log"),
    conda:
        ENV
    params:
        **cli_params("ablation partition"),
    shell:
        "python -m winnow ablation partition --examples {input.examples:q} --docs {input.docs:q}"
        " --params {params.cfg:q} --value={wildcards.part:q} --splits train --out {output.ids:q}"
        " --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"


# Equal shares of a mixture's partitions (small ones repeated): what its mixture model trains on.
rule ablation_mixture_ids:
    input:
        ablation_mixture_parts,
    output:
        "results/{run}/ablation/mixtures/{mix}/ids.parquet",
    log:
        logs("ablation_mixture_ids/{mix}.log"),
    conda:
        ENV
    params:
        **cli_params("ablation mix"),
    shell:
        "python -m winnow ablation mix --parts {input:q} --params {params.cfg:q} --out {output:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# The seed model: the shared trainer from scratch on the seed mix (train block, seed_steps steps).
use rule train_lm as ablation_seed with:
    input:
        **lm_inputs(ids=ablation_seed_ids),
    output:
        **model_files("results/{run}/ablation/seed"),
    log:
        logs("ablation_seed.log"),
    benchmark:
        benchmarks("ablation_seed.tsv")
    params:
        train=ablation_seed_config(),
        ckpt_root="results/{run}/ablation/seed/checkpoints",


# A component: the seed (weights and AdamW state) trained on one partition for budget_steps steps,
# at constant ablation.lr (null: the seed's final lr, read from the seed folder's trainer_state.json).
use rule train_lm as ablation_component with:
    input:
        **lm_inputs(ids="results/{run}/ablation/partitions/{part}/ids.parquet"),
        **ablation_seed_model(),
    output:
        **model_files("results/{run}/ablation/components/{part}"),
    log:
        logs("ablation_component/{part}.log"),
    benchmark:
        benchmarks("ablation_component/{part}.tsv")
    params:
        train=ablation_cpt_config(1),
        resume=resume_from("init"),
        ckpt_root="results/{run}/ablation/components/{part}/checkpoints",


# A mixture model: the seed trained on the mixture's equal-share ids for |S| × budget_steps steps
# (at the components' lr).
use rule train_lm as ablation_mixture with:
    input:
        **lm_inputs(ids="results/{run}/ablation/mixtures/{mix}/ids.parquet"),
        **ablation_seed_model(),
    output:
        **model_files("results/{run}/ablation/mixtures/{mix}"),
    log:
        logs("ablation_mixture/{mix}.log"),
    benchmark:
        benchmarks("ablation_mixture/{mix}.tsv")
    params:
        train=ablation_mixture_config,
        resume=resume_from("init"),
        ckpt_root="results/{run}/ablation/mixtures/{mix}/checkpoints",


# A merge: the uniform parameter average of a mixture's components (integer buffers copied).
rule ablation_merge:
    input:
        ablation_merge_members,
    output:
        model="results/{run}/ablation/merges/{mix}/model/model.safetensors",
        config="results/{run}/ablation/merges/{mix}/model/config.json",
        members="results/{run}/ablation/merges/{mix}/members.json",
    log:
        logs("ablation_merge/{mix}.log"),
    conda:
        ENV
    resources:
        mem_mb=4000,
    params:
        code=code("ablation merge"),
    shell:
        "python -m winnow ablation merge --models {input:q} --out {output.model:q}"
        " --members {output.members:q} --threads {threads:q} > {log:q} 2>&1"


# A macro merge (ablation.macro_merges): the uniform average of merges and components.
use rule ablation_merge as ablation_macro with:
    input:
        ablation_macro_members,
    output:
        model="results/{run}/ablation/macros/{macro}/model/model.safetensors",
        config="results/{run}/ablation/macros/{macro}/model/config.json",
        members="results/{run}/ablation/macros/{macro}/members.json",
    log:
        logs("ablation_macro/{macro}.log"),


# Rolling-window perplexity per domain (every domain of the test split, held-out ones included)
# of the seed, a component, mixture, merge or macro merge: the shared `eval ppl`.
use rule eval_ppl as ablation_ppl with:
    input:
        model="results/{run}/ablation/{model}/model/model.safetensors",
        tokenizer=TOKENIZER,
        docs=DOCS,
    output:
        "results/{run}/ablation/eval/{model}/ppl.json",
    log:
        logs("ablation_ppl/{model}.log"),
    benchmark:
        benchmarks("ablation_ppl/{model}.tsv")
    wildcard_constraints:
        model=r"seed|(?:components|mixtures|merges|macros)/[^/]+",
    # Many small evals: one thread each, so two share a 2-core machine (and their start-up).
    threads: 1
    params:
        cfg=block_params("eval ppl", max_docs_per_domain=ablation_max_docs()),


# Merged vs mixture perplexity across mixtures (and the naive mean of components): per domain and
# pooled, Pearson and Spearman; the points, every model's perplexities, and a scatter plot.
rule ablation_correlate:
    input:
        ablation_evals,
    output:
        table=report(
            "results/{run}/ablation/correlation.tsv",
            caption="../report/ablation_table.rst",
            category="Ablations",
        ),
        json="results/{run}/ablation/correlation.json",
        points="results/{run}/ablation/points.tsv",
        ppl="results/{run}/ablation/ppl.parquet",
        plot=report(
            "results/{run}/ablation/correlation.png",
            caption="../report/ablation_scatter.rst",
            category="Ablations",
        ),
    log:
        logs("ablation_correlate.log"),
    conda:
        ENV
    params:
        spec=ablation_spec(),
        code=code("ablation correlate"),
    shell:
        "python -m winnow ablation correlate --evals {input:q} --spec {params.spec:q}"
        " --table {output.table:q} --json {output.json:q} --points {output.points:q} --ppl {output.ppl:q}"
        " --plot {output.plot:q} > {log:q} 2>&1"
