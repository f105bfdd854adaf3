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
# The predictor and its prefilter (less.predictor.mode): `full` selects from exact scores of the
# whole pool and runs the prefilter beside it as a measurement; `prefilter` selects from the
# prefilter's scores, so the whole pool's features are built only with compare_full.
LESS_PREDICTOR = {
    "fit_fraction": 0.5,
    "seed": 0,
    "mode": "full",
    "featurize_fraction": 0.15,
    "compare_full": False,
    **(LESS.get("predictor") or {}),
}
LESS_PREFILTER = LESS_PREDICTOR["mode"] == "prefilter"
LESS_FULL_FEATURES = not LESS_PREFILTER or bool(LESS_PREDICTOR["compare_full"])
if LESS and LESS_PREFILTER:
    _covered = LESS_PREDICTOR["fit_fraction"] + LESS_PREDICTOR["featurize_fraction"]
    if _covered < config["select"]["less"]["ratio"]:
        raise ValueError(
            "config keys less.predictor.fit_fraction + featurize_fraction"
            f" ({_covered:g}) must be at least select.less.ratio in mode prefilter:"
            " the selection would take examples without exact scores"
        )
if LESS.get("base", "random") != "random":
    check_input_path("less.base", LESS["base"])
LESS_EPOCHS = list(range(1, LESS.get("warmup", {}).get("epochs", 0) + 1))
LESS_SHARDS = list(range(LESS.get("data", {}).get("num_shards", 2)))
LESS_ARMS = LESS.get("arms", ["less", "random", "full"])
LESS_DATA = results("less/data")
# less.data.source: corpus builds instruction tasks from the corpus's domains; files reads the
# user's pool / target / eval files (winnow.data.instruct_files), checked here at parse time.
LESS_DATA_CFG = LESS.get("data", {})
LESS_FILES = LESS_DATA_CFG.get("files") or {}
LESS_FROM_FILES = LESS_DATA_CFG.get("source", "corpus") == "files"
if LESS and LESS_FROM_FILES:
    from winnow.data.instruct_files import check_path as _check_less_file

    for _key in ("pool", "target", "eval"):
        _path = LESS_FILES.get(_key)
        if not _path:
            raise ValueError(
                f"config key less.data.files.{_key} is required with less.data.source: files"
            )
        check_input_path(f"less.data.files.{_key}", _path)
        if Path(_path).resolve().is_relative_to(Path("results").resolve()):
            raise ValueError(
                f"config key less.data.files.{_key} names {_path!r} under results/, which the"
                " workflow owns; keep your data elsewhere in the project"
            )
        _check_less_file(f"less.data.files.{_key}", _path)
elif LESS:
    for _key in ("max_per_task", "target_task", "n_choice"):
        if _key not in LESS_DATA_CFG:
            raise ValueError(
                f"config key less.data.{_key} is required with less.data.source: corpus"
            )


def less_data_inputs(wildcards):
    """The corpus's docs, or the user's three files, and the tokenizer."""
    files = {"tokenizer": f"results/{wildcards.run}/tokenizer/tokenizer.json"}
    if LESS_FROM_FILES:
        files.update({k: LESS_FILES[k] for k in ("pool", "target", "eval")})
    else:
        files["docs"] = f"results/{wildcards.run}/data/docs.parquet"
    return files


def less_data_source_args(wildcards, input, output):
    """--docs, or --files-config (paths as the inputs name them) and --rejects."""
    if not LESS_FROM_FILES:
        return ["--docs", input.docs]
    files = {
        **{k: v for k, v in LESS_FILES.items() if k not in ("pool", "target", "eval")},
        **{k: input[k] for k in ("pool", "target", "eval")},
    }
    return ["--files-config", as_json(files), "--rejects", output.rejects]


# Files mode also writes the malformed records it skipped; the corpus mode's outputs are unchanged.
LESS_DATA_EXTRA_OUT = (
    {"rejects": f"{LESS_DATA}/rejects.parquet"} if LESS_FROM_FILES else {}
)


def less_store(wildcards):
    """The instruction token store every LESS step reads."""
    d = LESS_DATA.format(run=wildcards.run)
    return {
        "examples": f"{d}/examples.parquet",
        "manifest": f"{d}/manifest.json",
    }


def less_base(wildcards):
    """A file of the base's folder (jobs load its parent): the spine's random model of this seed, or
    a local folder's config.json (its weights may be sharded; less_base_files lists them).
    """
    base = LESS.get("base", "random")
    if base == "random":
        return f"results/{wildcards.run}/models/random/s{wildcards.seed}/model/model.safetensors"
    return str(Path(base) / "config.json")


def less_model_inputs(wildcards):
    """The instruction token store and the base model's files: inputs of every LESS job that runs
    the base (examples, manifest, base, base_files)."""
    return {
        **less_store(wildcards),
        "base": less_base(wildcards),
        "base_files": less_base_files(wildcards),
    }


def less_warmup_epochs(wildcards):
    return [
        f"results/{wildcards.run}/less/s{wildcards.seed}/warmup/epoch-{e}/model.safetensors"
        for e in LESS_EPOCHS
    ]


def less_lora():
    lora = {"dropout": 0.1, **LESS["lora"]}
    # null in the config: the base architecture's projections (rules/common_models.smk)
    lora["target_modules"] = LESS_LORA_TARGETS
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


def less_prefilter_part_features(wildcards):
    """Features of a prefilter part (fit: S, top: T) at every epoch, with the target's."""
    root = f"results/{wildcards.run}/less/s{wildcards.seed}/prefilter/features/{wildcards.part}"
    return {
        "pool": [f"{root}/epoch-{e}/pool-0.npy" for e in LESS_EPOCHS],
        "target": [f"{root}/epoch-{e}/target.npy" for e in LESS_EPOCHS],
    }


def less_prefilter_inputs(wildcards):
    """The prefilter's parts, and the whole pool's exact scores when the run builds them."""
    root = f"results/{wildcards.run}/less/s{wildcards.seed}"
    files = {
        "pool": f"results/{wildcards.run}/less/data/pool.parquet",
        "fit_ids": f"{root}/prefilter/fit-ids.parquet",
        "fit_scores": f"{root}/prefilter/fit-scores.parquet",
        "fit_match": f"{root}/prefilter/fit-match.json",
        "top_ids": f"{root}/prefilter/top-ids.parquet",
        "top_scores": f"{root}/prefilter/top-scores.parquet",
        "predicted": f"{root}/prefilter/predicted.parquet",
    }
    if LESS_FULL_FEATURES:
        files["full_scores"] = f"{root}/scores.parquet"
    return files


def less_prefilter_full_arg(wildcards, input):
    return ["--full-scores", input.full_scores] if "full_scores" in input.keys() else []


def less_arm_ids(wildcards):
    """The examples an arm fine-tunes on: the whole pool (`full`) or its selection."""
    if wildcards.arm == "full":
        return f"results/{wildcards.run}/less/data/pool.parquet"
    return f"results/{wildcards.run}/less/{wildcards.arm}/s{wildcards.seed}/ids.parquet"


def less_arm_scores(wildcards):
    run, seed = wildcards.run, wildcards.seed
    scores = "prefilter/scores.parquet" if LESS_PREFILTER else "scores.parquet"
    predicted = "prefilter/predicted.parquet" if LESS_PREFILTER else "predicted.parquet"
    return {
        "less": f"results/{run}/less/s{seed}/{scores}",
        "predicted": f"results/{run}/less/s{seed}/{predicted}",
        "random": f"results/{run}/less/random-scores.parquet",
    }[wildcards.arm]


def less_select_args(wildcards):
    name = "less_random" if wildcards.arm == "random" else "less"
    return spec_select_args(
        config["select"][name], f"select.{name}.ratio", seed=wildcards.seed
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
        files.append(f"results/{RUN}/less/s{seed}/prefilter.json")
        if LESS_FULL_FEATURES:
            files.append(f"results/{RUN}/less/s{seed}/predictor.json")
            files.append(f"results/{RUN}/less/s{seed}/match.json")
    return files
