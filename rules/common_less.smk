# Helpers only (no rules) for rules/less.smk; included right after rules/common.smk.
# ---- LESS (rules/less.smk): instruction store under less/data/, per-seed warm-up and features,
# arms `less` (top 5% by matching), `random` (random 5%), `full` (the whole pool) and, optionally,
# `predicted` (top 5% by the learned predictor) fine-tuned with the same LoRA recipe.
LESS = config.get("less") or {}
if "less" in config["methods"] and not LESS:
    raise ValueError("config key less is required when methods include less")
if LESS:
    for _key in ("less", "less_random"):
        if _key not in config["select"]:
            raise ValueError(
                f"config key select.{_key} is required when methods include less"
            )
    if config["select"]["less_random"].get("temperature", 0) <= 0:
        raise ValueError(
            "config key select.less_random.temperature must be > 0 (a uniform draw per seed)"
        )
LESS_EPOCHS = list(range(1, LESS.get("warmup", {}).get("epochs", 0) + 1))
LESS_SHARDS = list(range(LESS.get("data", {}).get("num_shards", 2)))
LESS_ARMS = LESS.get("arms", ["less", "random", "full"])
LESS_DATA = "results/{run}/less/data"


def less_store(wildcards):
    """The instruction token store every LESS step reads."""
    d = LESS_DATA.format(run=wildcards.run)
    return {
        "examples": f"{d}/examples.parquet",
        "manifest": f"{d}/manifest.json",
    }


def less_base(wildcards):
    """model.safetensors of the base: the spine's random model of this seed, or a local folder."""
    base = LESS.get("base", "random")
    if base == "random":
        return f"results/{wildcards.run}/models/random/s{wildcards.seed}/model/model.safetensors"
    return str(Path(base) / "model.safetensors")


def less_warmup_epochs(wildcards):
    return [
        f"results/{wildcards.run}/less/s{wildcards.seed}/warmup/epoch-{e}/model.safetensors"
        for e in LESS_EPOCHS
    ]


def less_lora():
    lora = {"dropout": 0.1, "target_modules": ["query_key_value", "dense"]}
    lora.update(LESS["lora"])
    return as_json(lora)


def less_train_recipe(epochs=None):
    recipe = dict(LESS["train"])
    if epochs is not None:
        recipe["epochs"] = epochs
    return as_json(recipe)


def less_features(wildcards):
    """Pool features of every (epoch, shard) and target features of every epoch, of one seed."""
    root = f"results/{wildcards.run}/less/s{wildcards.seed}/features"
    return {
        "pool": [
            f"{root}/epoch-{e}/pool-{s}.npy" for e in LESS_EPOCHS for s in LESS_SHARDS
        ],
        "target": [f"{root}/epoch-{e}/target.npy" for e in LESS_EPOCHS],
    }


def less_arm_ids(wildcards):
    """The examples an arm fine-tunes on: the whole pool (`full`) or its selection."""
    if wildcards.arm == "full":
        return f"results/{wildcards.run}/less/data/pool.parquet"
    return f"results/{wildcards.run}/less/{wildcards.arm}/s{wildcards.seed}/ids.parquet"


def less_arm_scores(wildcards):
    run, seed = wildcards.run, wildcards.seed
    return {
        "less": f"results/{run}/less/s{seed}/scores.parquet",
        "predicted": f"results/{run}/less/s{seed}/predicted.parquet",
        "random": f"results/{run}/less/random-scores.parquet",
    }[wildcards.arm]


def less_select_args(wildcards):
    spec = config["select"]["less_random" if wildcards.arm == "random" else "less"]
    return (
        f"--direction {spec['direction']} --ratio {spec['ratio']}"
        f" --temperature {spec.get('temperature', 0.0)} --seed {wildcards.seed}"
    )


def less_compare_inputs(wildcards):
    evals, selections = [], []
    for arm in LESS_ARMS:
        for seed in config["seeds"]:
            evals.append(f"results/{wildcards.run}/less/{arm}/s{seed}/eval.json")
            selections.append(
                less_arm_ids(SimpleNamespace(run=wildcards.run, arm=arm, seed=seed))
            )
    return {"evals": evals, "selections": selections}


def less_targets():
    if not LESS:
        return []
    files = [
        f"results/{RUN}/less/compare.tsv",
        f"results/{RUN}/less/composition.tsv",
    ]
    for seed in config["seeds"]:
        files.append(f"results/{RUN}/less/s{seed}/predictor.json")
        files.append(f"results/{RUN}/less/s{seed}/match.json")
    return files
