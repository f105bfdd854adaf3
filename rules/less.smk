# LESS (Xia et al. 2024, gradient similarity for targeted instruction tuning): a LoRA warm-up on a
# random 5% of an instruction pool, projected Adam-preconditioned per-example LoRA gradients at
# every warm-up epoch, cosine matching against the target task's reference points, the top 5%
# fine-tuned next to a random 5% and the whole pool; plus a predictor that learns the score from
# cheap inputs, and a prefilter that uses it to featurise only a sample and the predicted top
# (less.predictor.mode). Example ids under less/ refer to the instruction store
# less/data/examples.parquet.


# Instruction items from the corpus (own token store), pool/target/eval ids, subtask labels and
# the lm-eval define-choice task.
rule less_data:
    input:
        unpack(less_data_inputs),
        contract=contract_gate(),
    output:
        **LESS_DATA_EXTRA_OUT,
        instructions=f"{LESS_DATA}/instructions.parquet",
        tokens=expand(
            f"{LESS_DATA}/tokens-{{shard}}.bin", shard=LESS_SHARDS, allow_missing=True
        ),
        examples=f"{LESS_DATA}/examples.parquet",
        manifest=f"{LESS_DATA}/manifest.json",
        pool=f"{LESS_DATA}/pool.parquet",
        target=f"{LESS_DATA}/target.parquet",
        eval_ids=f"{LESS_DATA}/eval.parquet",
        subtasks=f"{LESS_DATA}/subtasks.parquet",
        choice=f"{LESS_DATA}/define-choice.jsonl",
    log:
        logs("less_data.log"),
    conda:
        ENV
    params:
        **cli_params("less data"),
        source=less_data_source_args,
    shell:
        "python -m winnow less data {params.source:q} --tokenizer {input.tokenizer:q}"
        " --params {params.cfg:q}"
        " --instructions {output.instructions:q} --tokens {output.tokens:q} --examples {output.examples:q}"
        " --manifest {output.manifest:q} --pool {output.pool:q} --target {output.target:q}"
        " --eval-ids {output.eval_ids:q} --subtasks {output.subtasks:q} --choice {output.choice:q}"
        " > {log:q} 2>&1"


# Warm-up: LoRA on a seeded random fraction of the pool; one checkpoint per epoch (adapter, Adam
# moments keyed by parameter name) and each epoch's mean learning rate in warmup.json.
rule less_warmup:
    input:
        unpack(less_model_inputs),
        pool=f"{LESS_DATA}/pool.parquet",
    output:
        epochs=less_warmup_epochs(SimpleNamespace(run="{run}", seed="{seed}")),
        report="results/{run}/less/s{seed}/warmup/warmup.json",
    log:
        logs("less_warmup/s{seed}.log"),
    benchmark:
        benchmarks("less_warmup/s{seed}.tsv")
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("lora"),
    params:
        **cli_params("less train"),
        trust=model_trust(),
        lora=verbatim(less_lora() if LESS else ""),
        recipe=less_train_recipe(LESS["warmup"]["epochs"]) if LESS else "",
        seed="{seed}",
        ckpt_root="results/{run}/less/s{seed}/warmup/checkpoints",
    shell:
        "python -m winnow less train {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --base {input.base:q} --ids {input.pool:q} --params {params.cfg:q}"
        " --lora-config {params.lora:q} --train-config {params.recipe:q} --seed {params.seed:q}"
        " --ckpt-root {params.ckpt_root:q} --epochs-out {output.epochs:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# Gradient features at one warm-up epoch: Adam features of the pool (one .npy per token shard of
# the instruction store), SGD features of the target's reference points; each .npy has a JSON
# sidecar checked on reuse.
rule less_features:
    input:
        unpack(less_model_inputs),
        checkpoint="results/{run}/less/s{seed}/warmup/epoch-{epoch}/model.safetensors",
        pool=f"{LESS_DATA}/pool.parquet",
        target=f"{LESS_DATA}/target.parquet",
    output:
        pool=expand(
            "results/{{run}}/less/s{{seed}}/features/epoch-{{epoch}}/pool-{shard}.npy",
            shard=LESS_SHARDS,
        ),
        target="results/{run}/less/s{seed}/features/epoch-{epoch}/target.npy",
    log:
        logs("less_features/s{seed}-epoch{epoch}.log"),
    benchmark:
        benchmarks("less_features/s{seed}-epoch{epoch}.tsv")
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("features"),
    params:
        **cli_params("less features"),
        trust=model_trust(),
        lora=verbatim(less_lora() if LESS else ""),
        device=eval_device(),
        # One .npy per token shard here; the bake-off's store packs shards into blocks.
        blocks=verbatim([]),
    shell:
        "python -m winnow less features {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --base {input.base:q} --checkpoint {input.checkpoint:q}"
        " --lora-config {params.lora:q} --pool {input.pool:q} --target {input.target:q}"
        " --params {params.cfg:q} --device {params.device:q}"
        " --pool-out {output.pool:q} {params.blocks:q} --target-out {output.target:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# LESS scores of the pool: Σ over epochs of w̄ (normalised mean lr) × cosine, aggregated over the
# target (mean within a subtask, max over subtasks by default).
rule less_match:
    input:
        unpack(less_features),
        warmup="results/{run}/less/s{seed}/warmup/warmup.json",
        subtasks=f"{LESS_DATA}/subtasks.parquet",
    output:
        scores="results/{run}/less/s{seed}/scores.parquet",
        report="results/{run}/less/s{seed}/match.json",
    log:
        logs("less_match/s{seed}.log"),
    conda:
        ENV
    params:
        **cli_params("less match"),
    shell:
        "python -m winnow less match --pool-features {input.pool:q} --target-features {input.target:q}"
        " --warmup {input.warmup:q} --subtasks {input.subtasks:q} --params {params.cfg:q}"
        " --out {output.scores:q} --report {output.report:q} > {log:q} 2>&1"


# The predictor: ridge on the frozen base's mean hidden states, fitted to the exact scores of a
# featurised sample; R² and Spearman on the rest, and the overlap of the selections.
rule less_predict:
    input:
        unpack(less_model_inputs),
        pool=f"{LESS_DATA}/pool.parquet",
        scores="results/{run}/less/s{seed}/scores.parquet",
    output:
        scores="results/{run}/less/s{seed}/predicted.parquet",
        report="results/{run}/less/s{seed}/predictor.json",
    log:
        logs("less_predict/s{seed}.log"),
    conda:
        ENV
    threads: THREADS["eval"]
    resources:
        **job_resources("infer"),
    params:
        **cli_params("less predict"),
        trust=model_trust(),
        device=eval_device(),
    shell:
        "python -m winnow less predict {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --base {input.base:q} --pool {input.pool:q} --scores {input.scores:q}"
        " --params {params.cfg:q} --device {params.device:q} --out {output.scores:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# ---- The prefilter (less.predictor): exact features for a seeded sample S and for the predicted top
# T of the rest only. Mode `full` runs it beside the whole pool's features (prefilter.json then holds
# the recall of the exact top-k); mode `prefilter` selects the `less` (and `predicted`) arm from it.


# S: a seeded fraction of the pool (less.predictor.fit_fraction, seed): the predictor's fit sample.
rule less_prefilter_sample:
    input:
        pool=f"{LESS_DATA}/pool.parquet",
    output:
        "results/{run}/less/s{seed}/prefilter/fit-ids.parquet",
    log:
        logs("less_prefilter_sample/s{seed}.log"),
    conda:
        ENV
    params:
        **cli_params("less prefilter-sample"),
    shell:
        "python -m winnow less prefilter-sample --pool {input.pool:q}"
        " --params {params.cfg:q} --out {output:q} > {log:q} 2>&1"


# The same feature command as less_features, over a part's id list (fit: S, top: T) at one warm-up
# epoch: one pool-0.npy for the part (every token shard in one block) and the target's features.
use rule less_features as less_prefilter_features with:
    input:
        unpack(less_model_inputs),
        checkpoint="results/{run}/less/s{seed}/warmup/epoch-{epoch}/model.safetensors",
        pool="results/{run}/less/s{seed}/prefilter/{part}-ids.parquet",
        target=f"{LESS_DATA}/target.parquet",
    output:
        pool="results/{run}/less/s{seed}/prefilter/features/{part}/epoch-{epoch}/pool-0.npy",
        target=results(
            "less/s{seed}/prefilter/features/{part}/epoch-{epoch}/target.npy"
        ),
    log:
        logs("less_prefilter_features/s{seed}-{part}-epoch{epoch}.log"),
    benchmark:
        benchmarks("less_prefilter_features/s{seed}-{part}-epoch{epoch}.tsv")
    wildcard_constraints:
        part="fit|top",
        epoch=r"\d+",
    params:
        blocks=verbatim(["--shards-per-block", len(LESS_SHARDS)]),


# Exact LESS scores of a part (the same matching command as less_match).
rule less_prefilter_match:
    input:
        unpack(less_prefilter_part_features),
        warmup="results/{run}/less/s{seed}/warmup/warmup.json",
        subtasks=f"{LESS_DATA}/subtasks.parquet",
    output:
        scores="results/{run}/less/s{seed}/prefilter/{part}-scores.parquet",
        report="results/{run}/less/s{seed}/prefilter/{part}-match.json",
    log:
        logs("less_prefilter_match/s{seed}-{part}.log"),
    wildcard_constraints:
        part="fit|top",
    conda:
        ENV
    params:
        **cli_params("less match"),
    shell:
        "python -m winnow less match --pool-features {input.pool:q} --target-features {input.target:q}"
        " --warmup {input.warmup:q} --subtasks {input.subtasks:q} --params {params.cfg:q}"
        " --out {output.scores:q} --report {output.report:q} > {log:q} 2>&1"


# The ridge on the frozen base's mean hidden states fitted on S's exact scores: predictions of the
# rest (predicted.parquet: exact on S, predicted elsewhere) and T, the best-predicted
# featurize_fraction of the pool outside S (top-ids.parquet, best first).
rule less_prefilter_predict:
    input:
        unpack(less_model_inputs),
        pool=f"{LESS_DATA}/pool.parquet",
        fit_ids="results/{run}/less/s{seed}/prefilter/fit-ids.parquet",
        fit_scores="results/{run}/less/s{seed}/prefilter/fit-scores.parquet",
    output:
        predicted="results/{run}/less/s{seed}/prefilter/predicted.parquet",
        top_ids="results/{run}/less/s{seed}/prefilter/top-ids.parquet",
        report="results/{run}/less/s{seed}/prefilter/predict.json",
    log:
        logs("less_prefilter_predict/s{seed}.log"),
    benchmark:
        benchmarks("less_prefilter_predict/s{seed}.tsv")
    conda:
        ENV
    threads: THREADS["eval"]
    resources:
        **job_resources("infer"),
    params:
        **cli_params("less prefilter-predict"),
        trust=model_trust(),
        device=eval_device(),
    shell:
        "python -m winnow less prefilter-predict {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --base {input.base:q} --pool {input.pool:q} --fit-ids {input.fit_ids:q} --fit-scores {input.fit_scores:q}"
        " --params {params.cfg:q} --device {params.device:q} --predicted {output.predicted:q}"
        " --top-ids {output.top_ids:q} --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"


# The prefilter's scores (exact on S ∪ T, the rest ranked below by prediction) and prefilter.json:
# examples featurised, cost saved and, with the whole pool's scores, the recall of the exact top-k
# next to the predict-only path's.
rule less_prefilter:
    input:
        unpack(less_prefilter_inputs),
    output:
        scores="results/{run}/less/s{seed}/prefilter/scores.parquet",
        report="results/{run}/less/s{seed}/prefilter.json",
    log:
        logs("less_prefilter/s{seed}.log"),
    conda:
        ENV
    params:
        **cli_params("less prefilter"),
        full=less_prefilter_full_arg,
    shell:
        "python -m winnow less prefilter --pool {input.pool:q} --fit-ids {input.fit_ids:q}"
        " --fit-scores {input.fit_scores:q} --top-ids {input.top_ids:q} --top-scores {input.top_scores:q}"
        " --predicted {input.predicted:q} --fit-match {input.fit_match:q} {params.full:q}"
        " --params {params.cfg:q} --out {output.scores:q} --report {output.report:q}"
        " > {log:q} 2>&1"


# Equal scores over the pool: `random`'s Gumbel-top-k draws a uniform 5% per seed.
use rule mates_random_scores as less_random_scores with:
    input:
        pool=f"{LESS_DATA}/pool.parquet",
    output:
        "results/{run}/less/random-scores.parquet",
    log:
        logs("less_random_scores.log"),


# The shared selection code on an arm's scores (LESS: deterministic top 5%).
use rule mates_select as less_select with:
    input:
        scores=less_arm_scores,
    output:
        ids="results/{run}/less/{arm}/s{seed}/ids.parquet",
        manifest="results/{run}/less/{arm}/s{seed}/select.json",
    log:
        logs("less_select/{arm}-s{seed}.log"),
    wildcard_constraints:
        arm="less|random|predicted",
    params:
        args=less_select_args,


# LoRA fine-tune of the base on an arm's examples (the warm-up's recipe), merged for evaluation.
rule less_finetune:
    input:
        unpack(less_model_inputs),
        ids=less_arm_ids,
    output:
        model="results/{run}/less/{arm}/s{seed}/model/model.safetensors",
        report="results/{run}/less/{arm}/s{seed}/train.json",
    log:
        logs("less_finetune/{arm}-s{seed}.log"),
    benchmark:
        benchmarks("less_finetune/{arm}-s{seed}.tsv")
    wildcard_constraints:
        arm="less|random|full|predicted",
    conda:
        ENV
    threads: THREADS["train"]
    resources:
        **job_resources("lora"),
    params:
        **cli_params("less train", fraction=None),
        trust=model_trust(),
        lora=verbatim(less_lora() if LESS else ""),
        recipe=less_train_recipe() if LESS else "",
        # A fine-tune trains on all of --ids: the warm-up's fraction is not its key.
        ckpt_root="results/{run}/less/{arm}/s{seed}/checkpoints",
    shell:
        "python -m winnow less train {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --base {input.base:q} --ids {input.ids:q} --params {params.cfg:q}"
        " --lora-config {params.lora:q} --train-config {params.recipe:q} --seed {wildcards.seed:q}"
        " --ckpt-root {params.ckpt_root:q} --merged-out {output.model:q} --report {output.report:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# Target loss (test-split target-task items, overall and per subtask) and lm-eval define choice.
rule less_eval:
    input:
        unpack(less_store),
        model="results/{run}/less/{arm}/s{seed}/model/model.safetensors",
        tokenizer=TOKENIZER,
        eval_ids=f"{LESS_DATA}/eval.parquet",
        subtasks=f"{LESS_DATA}/subtasks.parquet",
        choice=f"{LESS_DATA}/define-choice.jsonl",
    output:
        "results/{run}/less/{arm}/s{seed}/eval.json",
    log:
        logs("less_eval/{arm}-s{seed}.log"),
    wildcard_constraints:
        arm="less|random|full|predicted",
    conda:
        ENV
    threads: THREADS["eval"]
    resources:
        **job_resources("infer"),
    params:
        **cli_params("less eval"),
        trust=model_trust(),
        device=eval_device(),
    shell:
        "python -m winnow less eval {params.trust:q} --examples {input.examples:q} --manifest {input.manifest:q}"
        " --model {input.model:q} --tokenizer {input.tokenizer:q}"
        " --eval-ids {input.eval_ids:q} --subtasks {input.subtasks:q} --choice {input.choice:q}"
        " --params {params.cfg:q} --device {params.device:q} --out {output:q}"
        " --threads {threads:q} > {log:q} 2>&1"


# LESS-5% against random-5% and the full pool over seeds, and what each selection is made of.
rule less_compare:
    input:
        unpack(less_compare_inputs),
        examples=f"{LESS_DATA}/examples.parquet",
    output:
        table=report(
            "results/{run}/less/compare.tsv",
            caption="../report/less_compare.rst",
            category="LESS",
        ),
        composition=report(
            "results/{run}/less/composition.tsv",
            caption="../report/less_composition.rst",
            category="LESS",
        ),
    log:
        logs("less_compare.log"),
    conda:
        ENV
    params:
        code=code("less compare"),
    shell:
        "python -m winnow less compare --evals {input.evals:q} --selections {input.selections:q}"
        " --examples {input.examples:q} --out {output.table:q} --composition {output.composition:q}"
        " > {log:q} 2>&1"
