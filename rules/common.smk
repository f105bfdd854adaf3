# Helpers only (no rules): config validation, wildcard constraints, named input/param helpers.
import json
import re
import sys
from types import SimpleNamespace
from pathlib import Path

from snakemake.utils import validate

# Jobs run `python -m winnow` from the checkout's src/ (also inside conda envs and Slurm jobs,
# which inherit the environment), so the code that runs is the code that was hashed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
from winnow.provenance import command_hash  # noqa: E402
from winnow.workflow_env import export_source_tree  # noqa: E402

export_source_tree(SRC)

validate(config, schema="../workflow/schemas/config.schema.yaml")

RUN = config["run"]
_fractions = config["corpus"].get(
    "split_fractions", {"train": 0.9, "val": 0.05, "test": 0.05}
)
if abs(sum(_fractions.values()) - 1.0) > 1e-9:
    raise ValueError(
        f"config key corpus.split_fractions must sum to 1, got {sum(_fractions.values())}"
    )
if config["select"].get("random", {}).get("temperature", 0) <= 0:
    raise ValueError(
        "config key select.random.temperature must be > 0: on equal scores, temperature 0 would"
        " make every seed pick the same (lowest) example ids"
    )
SHARDS = list(range(config["tokenize"]["num_shards"]))
ENV = "../envs/winnow.yaml"


# Methods that select data (trained per seed, compared with random); `ablation` is not one of them.
SELECTION_METHODS = [m for m in config["methods"] if m not in ("ablation", "mates")]
# Methods whose scores come from a fitted scorer (the others have their own score rule).
SCORERS = [m for m in config["methods"] if m in ("pds",)]
if (
    "mates" in config
):  # `snakemake mates` works whenever the block exists; `all` needs it in methods
    SCORERS.append(r"mates_s\d+_k\d+")  # one data influence model per seed and stage
if "pds" in config["methods"]:
    for key in ("pds_proxy", "pds_target"):
        if key not in config["subsets"]:
            raise ValueError(
                f"config key subsets.{key} is required when methods include pds"
            )
    for key in ("pds", "select"):
        if key == "pds" and "pds" not in config:
            raise ValueError("config key pds is required when methods include pds")
    if "pds" not in config["select"]:
        raise ValueError("config key select.pds is required when methods include pds")


if "mates" in config["methods"] and "mates" not in config:
    raise ValueError("config key mates is required when methods include mates")
if "mates" in config:
    if "mates" not in config["select"]:
        raise ValueError(
            "config key select.mates is required when methods include mates"
        )
    if config["mates"]["stages"] < 2:
        raise ValueError(
            "config key mates.stages must be ≥ 2 (stage 0 is random selection)"
        )


wildcard_constraints:
    run=RUN,
    scorer="|".join(SCORERS) or "no-scorer",
    shard=r"\d+",
    seed=r"\d+",
    method=r"[a-z][a-z0-9_]*",
    subset=r"[A-Za-z0-9_]+",
    arm="mates|mrandom",
    k=r"\d+",
    split="val|test",


for _target in config["eval"].get("targets", []):
    if _target not in config["subsets"]:
        raise ValueError(
            f"config key eval.targets names {_target!r}, which is not a key of subsets"
        )


def as_json(obj):
    """A deterministic JSON string for a shell argument (sorted keys: stable params)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def code(command):
    """Hash of the package code a CLI command runs; as a param it reruns jobs whose code changed."""
    return command_hash(command)


def shard_tokens(wildcards):
    return expand(
        "results/{run}/tokens/tokens-{shard}.bin", run=wildcards.run, shard=SHARDS
    )


def shard_examples(wildcards):
    return expand(
        "results/{run}/tokens/examples-{shard}.parquet", run=wildcards.run, shard=SHARDS
    )


def subset_args(wildcards):
    """CLI arguments of one named subset from config['subsets']."""
    spec = config["subsets"][wildcards.subset]
    args = []
    if spec.get("splits"):
        args += ["--splits", *spec["splits"]]
    if spec.get("domains"):
        args += ["--domains", *spec["domains"]]
    args += (
        ["--n", str(spec["n"])]
        if "n" in spec
        else ["--fraction", str(spec["fraction"])]
    )
    args += ["--seed", str(spec["seed"])]
    return " ".join(args)


def select_args(wildcards):
    spec = config["select"][wildcards.method]
    size = f"--ratio {spec['ratio']}" if "ratio" in spec else f"--k {spec['k']}"
    return f"--direction {spec['direction']} {size} --temperature {spec.get('temperature', 0.0)}"


def tokenizer_args(wildcards):
    tok = config["tokenizer"]
    if tok.get("kind", "bpe") == "local":
        if not tok.get("path"):
            raise ValueError(
                "config key tokenizer.path is required when tokenizer.kind is local"
            )
        trust = " --trust-remote-code" if tok.get("trust_remote_code") else ""
        return f"--local {tok['path']}{trust}"
    return (
        f"--vocab-size {tok.get('vocab_size', 8192)} --min-frequency {tok.get('min_frequency', 2)}"
        f" --max-train-chars {tok.get('max_train_chars', 20000000)}"
    )


def corpus_inputs():
    """Paths of corpus.inputs (an entry is a path, or {path, split, domain})."""
    return [i if isinstance(i, str) else i["path"] for i in config["corpus"]["inputs"]]


def ingest_args(wildcards):
    c = config["corpus"]
    forced = {
        i["path"]: {k: v for k, v in i.items() if k != "path"}
        for i in c["inputs"]
        if not isinstance(i, str)
    }
    args = [
        f"--text-field {c.get('text_field', 'text')}",
        f"--max-chars {c.get('max_chars', 1000000)}",
        f"--split-seed {c.get('split_seed', 0)}",
        f"--split-fractions '{as_json(c.get('split_fractions', {'train': 0.9, 'val': 0.05, 'test': 0.05}))}'",
    ]
    if c.get("domain_field"):
        args.append(f"--domain-field {c['domain_field']}")
    if c.get("id_field"):
        args.append(f"--id-field {c['id_field']}")
    if c.get("default_domain"):
        args.append(f"--default-domain {c['default_domain']}")
    if forced:
        args.append(f"--input-options '{as_json(forced)}'")
    return " ".join(args)


def train_config():
    keys = (
        "steps batch_size micro_batch_size lr schedule warmup_steps min_lr_ratio decay_frac half_life"
        " weight_decay betas grad_clip ckpt_every keep_checkpoints precision"
    ).split()
    return as_json({k: config["train"][k] for k in keys if k in config["train"]})


def train_seed_config(wildcards):
    cfg = json.loads(train_config())
    cfg["seed"] = int(wildcards.seed)
    return as_json(cfg)


def model_config():
    return as_json(config["model"])


def eval_device():
    return config["eval"].get("device", "auto")


def eval_targets():
    """Subsets whose loss every trained model is evaluated on (config eval.targets)."""
    return config["eval"].get("targets", [])


def model_evals(wildcards):
    """Every eval file of one (method, seed): ppl, harness, and the loss on each target subset."""
    base = f"results/{wildcards.run}/eval/{wildcards.method}/s{wildcards.seed}"
    return [f"{base}/ppl.json", f"{base}/harness.json"] + [
        f"{base}/target-{t}.json" for t in eval_targets()
    ]


def all_model_evals(wildcards):
    files = []
    for method in SELECTION_METHODS:
        for seed in config["seeds"]:
            files += model_evals(
                SimpleNamespace(
                    **{"run": wildcards.run, "method": method, "seed": seed}
                )
            )
    return files


def method_evals(method, run=RUN):
    """Every eval file of one method over all seeds."""
    files = []
    for seed in config["seeds"]:
        files += model_evals(SimpleNamespace(run=run, method=method, seed=seed))
    return files


def compare_inputs(wildcards):
    """The evals a method is compared on: its own and random's, seed by seed."""
    return method_evals(wildcards.method, wildcards.run) + method_evals(
        "random", wildcards.run
    )


def method_targets(method):
    """A method's evals over every seed, with random's and the table comparing the two."""
    return (
        method_evals(method)
        + method_evals("random")
        + [f"results/{RUN}/eval/compare-{method}.tsv"]
    )


def all_targets():
    """Every configured method × seed trained and evaluated, the summary and the comparisons."""
    files = method_evals("random") + [f"results/{RUN}/eval/summary.tsv"]
    for method in SELECTION_METHODS:
        if method != "random":
            files += method_targets(method)
    if "ablation" in config["methods"]:
        files += ablation_targets()
    if "mates" in config["methods"]:
        files += mates_targets()
    return sorted(set(files))


def harness_limit_arg():
    limit = config["eval"].get("harness_limit")
    return f"--limit {limit}" if limit else ""


def pds_init_config():
    cfg = json.loads(train_config())
    cfg["steps"] = config["pds"]["init_steps"]
    cfg["seed"] = config["pds"]["solver"].get("seed", 0)
    return as_json(cfg)


def _mates_scorer(name):
    """``mates_s{seed}_k{k}`` → (seed, k), else None."""
    m = re.fullmatch(r"mates_s(\d+)_k(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def scorer_labels(wildcards):
    """The labels table a scorer is fitted to."""
    if wildcards.scorer == "pds":
        return f"results/{wildcards.run}/pds/gamma.parquet"
    if _mates_scorer(wildcards.scorer):
        seed, k = _mates_scorer(wildcards.scorer)
        return f"results/{wildcards.run}/mates/mates/s{seed}/stage-{k}/oracle.parquet"
    raise ValueError(f"no labels known for scorer {wildcards.scorer!r}")


def scorer_label_column(wildcards):
    if _mates_scorer(wildcards.scorer):
        return "delta"  # reference loss after − before the candidate's step (lower is better)
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
    if wildcards.scorer == "pds":
        return as_json(config["pds"]["scorer"])
    raise ValueError(f"no scorer config for {wildcards.scorer!r}")


def shard_scores(wildcards):
    return expand(
        "results/{run}/scores/{scorer}/parts/{shard}.parquet",
        run=wildcards.run,
        scorer=wildcards.scorer,
        shard=SHARDS,
    )


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
    """Continued pretraining of the seed: n_parts × ablation.budget_steps at constant ablation.lr."""
    if not ABLATION:
        return ""
    cfg = json.loads(train_config())
    cfg.update(
        steps=n_parts * ABLATION["budget_steps"],
        lr=ABLATION["lr"],
        schedule="constant",
        warmup_steps=0,
        seed=ABLATION.get("seed", 0),
    )
    return as_json(cfg)


def init_folder(wildcards, input):
    """The checkpoint folder that continued pretraining starts from (--resume-from)."""
    return str(Path(input.init).parent)


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


# ---- MATES (rules/mates.smk): stages k = 0..S-1, arms `mates` and `mrandom` ----------------------
# Stage 0 is random selection for both arms, so the `mates` arm reuses the `mrandom` stage-0 model.
MATES = config.get("mates", {})
MATES_STAGES = list(range(MATES.get("stages", 0)))


def mates_pool_files():
    return [f"results/{{run}}/mates/pools/stage-{k}.parquet" for k in MATES_STAGES]


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
    if wildcards.arm == "mrandom":
        ratio = config["select"]["mates"]["ratio"]
        return f"--direction higher --ratio {ratio} --temperature 1.0 --seed {seed}"
    spec = config["select"]["mates"]
    return f"--direction {spec['direction']} --ratio {spec['ratio']} --temperature {spec['temperature']} --seed {seed}"


def _corpus_inputs(wildcards):
    return {
        "examples": f"results/{wildcards.run}/tokens/examples.parquet",
        "manifest": f"results/{wildcards.run}/tokens/manifest.json",
        "shards": shard_tokens(wildcards),
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
        return ""
    return f"--resume-from {_mates_stage_dir(wildcards, wildcards.arm, k - 1)}/model"


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


def mates_decay_resume(wildcards, input):
    return str(Path(input.resume).parent)


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
