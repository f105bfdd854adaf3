# Helpers only (no rules) for rules/ablation.smk; included right after rules/common.smk.
# ---------------------------------------------------------------------------------------------
# Modular data ablations (rules/ablation.smk): config checks and input/param helpers.
# Partitions are values of config ablation.column; a mixture is named by its sorted partitions
# joined with "+" (winnow.methods.ablation.mixture_name), e.g. results/{run}/ablation/mixtures/kjv+pydocs/.
# ---------------------------------------------------------------------------------------------
from winnow.methods.ablation import (  # noqa: E402
    MIXTURE_PATTERN,
    NAME_PATTERN,
    expand_mixtures,
    mixture_name,
    parse_mixture,
)

ABLATION = config.get("ablation") or {}
if "ablation" in config["methods"] and not ABLATION:
    raise ValueError("config key ablation is required when methods include ablation")
ABLATION_PARTS = list(ABLATION.get("partitions", []))
ABLATION_MIXTURES = (
    expand_mixtures(ABLATION["mixtures"], ABLATION_PARTS) if ABLATION else []
)
if ABLATION and not ABLATION_MIXTURES:
    raise ValueError(
        f"config key ablation.mixtures gives no mixture of the partitions {ABLATION_PARTS}"
    )
ABLATION_MACROS = {
    name: [sorted(member) for member in members]
    for name, members in ABLATION.get("macro_merges", {}).items()
}
for _name, _members in ABLATION_MACROS.items():
    for _member in _members:
        if set(_member) - set(ABLATION_PARTS):
            raise ValueError(
                f"config key ablation.macro_merges.{_name} names {sorted(set(_member) - set(ABLATION_PARTS))},"
                " which are not in ablation.partitions"
            )
if ABLATION and isinstance(ABLATION["seed_mix"], str):
    if ABLATION["seed_mix"] not in config["subsets"]:
        raise ValueError(
            f"config key ablation.seed_mix names {ABLATION['seed_mix']!r}, which is not a key of subsets"
        )


def ablation_seed_ids(wildcards):
    """The seed model's ids: a named subset, one partition, or equal shares of several."""
    mix = ABLATION["seed_mix"]
    if isinstance(mix, str):
        return f"results/{wildcards.run}/subsets/{mix}/ids.parquet"
    if len(set(mix)) == 1:
        return f"results/{wildcards.run}/ablation/partitions/{mix[0]}/ids.parquet"
    return f"results/{wildcards.run}/ablation/mixtures/{mixture_name(mix)}/ids.parquet"


def ablation_mixture_parts(wildcards):
    return [
        f"results/{wildcards.run}/ablation/partitions/{p}/ids.parquet"
        for p in parse_mixture(wildcards.mix)
    ]


def ablation_merge_members(wildcards):
    return [
        f"results/{wildcards.run}/ablation/components/{p}/model/model.safetensors"
        for p in parse_mixture(wildcards.mix)
    ]


def ablation_macro_members(wildcards):
    """A macro merge averages merges (a member of ≥ 2 partitions) and components (a member of 1)."""
    files = []
    for member in ABLATION_MACROS[wildcards.macro]:
        kind, name = (
            ("components", member[0])
            if len(member) == 1
            else ("merges", mixture_name(member))
        )
        files.append(
            f"results/{wildcards.run}/ablation/{kind}/{name}/model/model.safetensors"
        )
    return files


def ablation_seed_config():
    """The seed model: the train block (schedule, warm-up, lr) for ablation.seed_steps steps."""
    if not ABLATION:
        return ""
    cfg = json.loads(train_config())
    cfg["steps"] = ABLATION["seed_steps"]
    cfg["seed"] = ABLATION.get("seed", 0)
    return as_json(cfg)


def ablation_cpt_config(n_parts):
    """Continued pretraining of the seed: n_parts × ablation.budget_steps at constant ablation.lr.

    ablation.lr null (the default) stays null here: `train lm` then takes the lr of the seed's last
    optimizer step from the --resume-from folder (the seed model, an input of the rule).
    """
    if not ABLATION:
        return ""
    cfg = json.loads(train_config())
    cfg.update(
        steps=n_parts * ABLATION["budget_steps"],
        lr=ABLATION.get("lr"),
        schedule="constant",
        warmup_steps=0,
        seed=ABLATION.get("seed", 0),
    )
    return as_json(cfg)


def ablation_seed_model():
    """The seed model's files that continued pretraining resumes from (weights and AdamW state)."""
    seed = model_files(results("ablation/seed"))
    return {
        "init": seed["model"],
        "init_optimizer": seed["optimizer"],
        "init_state": seed["state"],
    }


def ablation_mixture_config(wildcards):
    return ablation_cpt_config(len(parse_mixture(wildcards.mix)))


def ablation_max_docs():
    return ABLATION.get("max_docs_per_domain", config["eval"]["max_docs_per_domain"])


def ablation_models():
    """Every evaluated model of the ablation, as paths under results/{run}/ablation/."""
    names = [mixture_name(m) for m in ABLATION_MIXTURES]
    return (
        ["seed"]
        + [f"components/{p}" for p in ABLATION_PARTS]
        + [f"mixtures/{n}" for n in names]
        + [f"merges/{n}" for n in names]
        + [f"macros/{n}" for n in ABLATION_MACROS]
    )


def ablation_evals(wildcards):
    return [
        f"results/{wildcards.run}/ablation/eval/{m}/ppl.json" for m in ablation_models()
    ]


def ablation_spec():
    """What the correlation report needs to know besides the eval files (a JSON param)."""
    return as_json(
        {
            "partitions": ABLATION_PARTS,
            "mixtures": ABLATION_MIXTURES,
            "macros": ABLATION_MACROS,
            "metric": ABLATION.get("metric", "ppl_token"),
        }
    )


def ablation_targets():
    """The correlation report (and with it every ablation model and eval)."""
    if not ABLATION:
        return []
    return [f"results/{RUN}/ablation/correlation.tsv"]
