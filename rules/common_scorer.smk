# The data scorers (rules/scorer.smk): one per {scorer}, PDS's, each MATES stage's and the
# bake-off's, each fitted to its labels and scoring its pool in blocks of shards.


def _mates_scorer(name):
    """``mates_s{seed}_k{k}`` → (seed, k), else None."""
    m = re.fullmatch(r"mates_s(\d+)_k(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def scorer_labels(wildcards):
    """The labels table a scorer is fitted to."""
    if wildcards.scorer == "pds":
        return f"results/{wildcards.run}/pds/gamma.parquet"
    if wildcards.scorer == "mates_pool":
        return f"results/{wildcards.run}/bakeoff/mates_pool/oracle.parquet"
    if wildcards.scorer == "less_pool":
        return f"results/{wildcards.run}/bakeoff/less_pool/labels.parquet"
    if _mates_scorer(wildcards.scorer):
        seed, k = _mates_scorer(wildcards.scorer)
        return f"results/{wildcards.run}/mates/mates/s{seed}/stage-{k}/oracle.parquet"
    raise ValueError(f"no labels known for scorer {wildcards.scorer!r}")


def scorer_label_column(wildcards):
    if _mates_scorer(wildcards.scorer) or wildcards.scorer == "mates_pool":
        return "delta"  # reference loss after − before the candidate's step (lower is better)
    if wildcards.scorer == "less_pool":
        return "score"  # LESS's matching score (higher is better)
    if wildcards.scorer == "pds":
        return (
            "gamma"
            if config["pds"]["solver"].get("variant") == "paper"
            else "grad_gamma"
        )
    raise ValueError(f"no label column known for scorer {wildcards.scorer!r}")


def scorer_pool(wildcards):
    """The ids a scorer scores: the candidate pool, or (MATES) the pool of its stage."""
    if _mates_scorer(wildcards.scorer):
        return f"results/{wildcards.run}/mates/pools/stage-{_mates_scorer(wildcards.scorer)[1]}.parquet"
    return f"results/{wildcards.run}/subsets/pool/ids.parquet"


def scorer_config(wildcards):
    if _mates_scorer(wildcards.scorer):
        return as_json(config["mates"]["scorer"])
    if wildcards.scorer in (
        "pds",
        "mates_pool",
        "less_pool",
    ):  # the bake-off: one scorer for all
        return as_json(config["pds"]["scorer"])
    raise ValueError(f"no scorer config for {wildcards.scorer!r}")


def block_scores(wildcards):
    return _block_paths(
        "results/{run}/scores/{scorer}/parts/{block}.parquet",
        run=wildcards.run,
        scorer=wildcards.scorer,
    )
