# Helpers only (no rules) for rules/bakeoff.smk; included right after rules/common.smk.
# ---- the bake-off: random, PDS, and pool-level MATES and LESS arms at one budget -----------------
BAKEOFF = config.get("bakeoff") or {}
if "bakeoff" in config["methods"]:
    if not BAKEOFF:
        raise ValueError("config key bakeoff is required when methods include bakeoff")
    for _need in ("random", "pds"):
        if _need not in config["methods"]:
            raise ValueError(
                f"config key methods must include {_need} when it includes bakeoff"
            )
    if not LESS:
        raise ValueError(
            "config key less is required when methods include bakeoff (its LoRA, warm-up and features)"
        )
    _ratios = {}
    for _arm in BAKEOFF_ARMS:
        if _arm not in config["select"] or "ratio" not in config["select"][_arm]:
            raise ValueError(
                f"config key select.{_arm}.ratio is required when methods include bakeoff"
            )
        _ratios[_arm] = config["select"][_arm]["ratio"]
    if len(set(_ratios.values())) > 1:
        raise ValueError(
            "config keys select.{random,pds,mates_pool,less_pool}.ratio must be equal for the"
            f" bake-off (one budget), got {_ratios}"
        )
BAKEOFF_SEED = BAKEOFF.get("seed", 0)


def bakeoff_less_epochs(wildcards):
    root = f"results/{wildcards.run}/bakeoff/less_pool"
    return [f"{root}/warmup/epoch-{e}/model.safetensors" for e in LESS_EPOCHS]


def bakeoff_less_features(wildcards):
    root = f"results/{wildcards.run}/bakeoff/less_pool/features"
    return {
        "pool": [f"{root}/epoch-{e}/pool-{s}.npy" for e in LESS_EPOCHS for s in BLOCKS],
        "target": [f"{root}/epoch-{e}/target.npy" for e in LESS_EPOCHS],
    }


def bakeoff_evals(wildcards):
    files = []
    # external score files (rules/common_external.smk) join the leaderboard
    for arm in BAKEOFF_ARMS + EXTERNAL_ARMS:
        files += method_evals(arm, wildcards.run)
    return files


def bakeoff_metrics():
    """The leaderboard page's columns: the primary metric first, then the shared suite."""
    first = BAKEOFF.get("primary", "target/pds_target_eval")
    rest = [f"target/{t}" for t in eval_targets()] + [
        "ppl_token/all",
        "bits_per_byte/all",
        "lastword/acc",
        "choice/acc",
    ]
    return [first] + [m for m in rest if m != first]


def bakeoff_targets():
    if "bakeoff" not in config["methods"]:
        return []
    return [
        f"results/{RUN}/bakeoff/leaderboard.tsv",
        f"results/{RUN}/bakeoff/leaderboard.html",
    ]
