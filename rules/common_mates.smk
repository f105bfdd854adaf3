# Helpers only (no rules) for rules/mates.smk; included right after rules/common.smk.
# ---- MATES (rules/mates.smk): stages k = 0..S-1, arms `mates` and `mrandom` ----------------------
# Stage 0 is random selection for both arms, so the `mates` arm reuses the `mrandom` stage-0 model.
MATES = config.get("mates", {})
MATES_STAGES = list(range(MATES.get("stages", 0)))


def mates_reference_size(wildcards):
    ref = MATES["reference"]
    return ref["n"] if wildcards.split == "val" else ref["n_eval"]


def _mates_stage_dir(wildcards, arm, k):
    arm = "mrandom" if int(k) == 0 else arm
    return f"results/{wildcards.run}/mates/{arm}/s{wildcards.seed}/stage-{k}"


def mates_stage_scores(wildcards):
    if wildcards.arm == "mrandom":
        return f"results/{wildcards.run}/mates/pools/stage-{wildcards.k}-equal-scores.parquet"
    if int(wildcards.k) == 0:
        raise ValueError("stage 0 of the mates arm is the random arm's stage 0")
    return f"results/{wildcards.run}/scores/mates_s{wildcards.seed}_k{wildcards.k}/scores.parquet"


def mates_select_args(wildcards):
    seed = int(wildcards.seed) * 1000 + int(
        wildcards.k
    )  # a different draw at every stage
    spec = config["select"]["mates"]
    if wildcards.arm == "mrandom":
        spec = {"direction": "higher", "ratio": spec["ratio"], "temperature": 1.0}
    # The key is named when ratio × stage_size keeps 0.
    return spec_select_args(spec, "select.mates.ratio", seed=seed)


def _corpus_inputs(wildcards):
    return {
        "examples": f"results/{wildcards.run}/tokens/examples.parquet",
        "manifest": f"results/{wildcards.run}/tokens/manifest.json",
        "tokenizer": f"results/{wildcards.run}/tokenizer/tokenizer.json",
    }


def mates_train_inputs(wildcards):
    k = int(wildcards.k)
    inputs = {
        **_corpus_inputs(wildcards),
        "ids": f"{_mates_stage_dir(wildcards, wildcards.arm, k)}/ids.parquet",
    }
    if k > 0:
        inputs["resume"] = (
            f"{_mates_stage_dir(wildcards, wildcards.arm, k - 1)}/model/model.safetensors"
        )
    return inputs


def mates_resume_arg(wildcards):
    k = int(wildcards.k)
    if k == 0:
        return []
    return [
        "--resume-from",
        f"{_mates_stage_dir(wildcards, wildcards.arm, k - 1)}/model",
    ]


def mates_stage_config(wildcards):
    """Constant lr after a warm-up in stage 0 (MATES's WSD stable phase), same for both arms."""
    cfg = json.loads(train_config())
    k = int(wildcards.k)
    cfg.update(
        steps=MATES["stage_steps"],
        schedule="constant",
        warmup_steps=cfg.get("warmup_steps", 0) if k == 0 else 0,
        seed=int(wildcards.seed) * 1000 + k,
    )
    return as_json(cfg)


def mates_previous_model(wildcards):
    k = int(wildcards.k)
    if k < 1:
        raise ValueError(
            "the oracle of stage k probes the end of stage k-1: k must be ≥ 1"
        )
    return f"{_mates_stage_dir(wildcards, 'mates', k - 1)}/model/model.safetensors"


def mates_probe_seed(wildcards):
    return int(wildcards.seed) * 1000 + int(wildcards.k)


def mates_decay_inputs(wildcards):
    k = int(wildcards.k)
    stage = _mates_stage_dir(wildcards, wildcards.arm, k)
    return {
        **_corpus_inputs(wildcards),
        "ids": f"{stage}/ids.parquet",
        "resume": f"{stage}/model/model.safetensors",
    }


def mates_decay_config(wildcards):
    cfg = json.loads(train_config())
    cfg.update(
        steps=MATES["decay_steps"],
        schedule="exp",
        warmup_steps=0,
        half_life=MATES["decay_half_life"],
        seed=int(wildcards.seed) * 1000 + int(wildcards.k),
    )
    return as_json(cfg)


def mates_models():
    """(method, seed) of every MATES evaluation checkpoint: mrandom_k0..., mates_k1..."""
    out = []
    for seed in config["seeds"]:
        for k in MATES_STAGES:
            out.append((f"mrandom_k{k}", seed))
            if k > 0:
                out.append((f"mates_k{k}", seed))
    return out


def mates_compare_inputs(wildcards):
    files = []
    for method, seed in mates_models():
        base = f"results/{wildcards.run}/eval/{method}/s{seed}"
        files += [f"{base}/reference.json"] + model_evals(
            SimpleNamespace(run=wildcards.run, method=method, seed=seed)
        )
    return files


def mates_targets():
    if not MATES:
        return []
    files = [f"results/{RUN}/mates/compare.tsv"]
    for seed in config["seeds"]:
        for k in MATES_STAGES[1:]:
            files.append(f"results/{RUN}/scorers/mates_s{seed}_k{k}/fit.json")
            files.append(f"results/{RUN}/mates/mates/s{seed}/stage-{k}/oracle.json")
    return files
