# Helpers only (no rules): config validation, wildcard constraints, named input/param helpers.
import json
import os
import re
import sys
import time
from types import SimpleNamespace
from pathlib import Path

from snakemake.utils import validate

# Jobs run `python -m winnow` from the checkout's src/ (also inside conda envs and Slurm jobs,
# which inherit the environment), so the code that runs is the code that was hashed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
from winnow.data.heldout import heldout_problems  # noqa: E402
from winnow.io.shards import num_blocks  # noqa: E402
from winnow.params import command_params  # noqa: E402
from winnow.provenance import command_hash  # noqa: E402
from winnow.workflow_env import export_source_tree, keep_other_runs_locks  # noqa: E402
from winnow.workflow_script import script_hash  # noqa: E402

export_source_tree(SRC)
# A run that exits removes only its own locks (Snakemake 9.27.1 removes every run's).
keep_other_runs_locks()

validate(config, schema="../workflow/schemas/config.schema.yaml")


# A config is data: every value reaches its command as one quoted argument (`{...:q}` in every
# shell command; argument helpers return lists), names that become folders are checked by the
# schema, and what no command line or Snakemake path can carry is refused here, naming its key.
def _config_strings(node, key=""):
    """(dotted key, text) of every string in the config, the keys of its maps included."""
    if isinstance(node, str):
        yield key, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield key or str(k), str(k)
            yield from _config_strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _config_strings(v, key)


for _key, _text in _config_strings(config):
    if "\0" in _text:
        raise ValueError(
            f"config key {_key} holds a NUL character, which no command line can carry: {_text!r}"
        )


def check_input_path(key, path):
    """An input path (any local file) with no {braces}: Snakemake reads them as a wildcard."""
    if "{" in path or "}" in path:
        raise ValueError(
            f"config key {key} names {path!r}: Snakemake reads {{...}} in an input path as a"
            " wildcard; rename the file, or link it under a name without braces"
        )


for _input in config["corpus"]["inputs"]:
    check_input_path(
        "corpus.inputs", _input if isinstance(_input, str) else _input["path"]
    )

RUN = config["run"]


# ---- paths: every file of a run lives under results/{run}/ ({run}: a wildcard, config `run`) ---
def results(path):
    """``path`` under the run's folder, as a rule's pattern: results("eval/summary.tsv") is
    "results/{run}/eval/summary.tsv"."""
    return f"results/{{run}}/{path}"


def logs(path):
    """A job's log: logs("eval_ppl/{method}-s{seed}.log") is results/{run}/logs/eval_ppl/..."""
    return results(f"logs/{path}")


def benchmarks(path):
    """A job's benchmark table, under results/{run}/benchmarks/."""
    return results(f"benchmarks/{path}")


def model_files(folder):
    """The four outputs of a trained model folder ``folder``/model/ (as named outputs)."""
    names = {
        "model": "model.safetensors",
        "config": "config.json",
        "optimizer": "optimizer.safetensors",
        "state": "trainer_state.json",
    }
    return {key: f"{folder}/model/{name}" for key, name in names.items()}


# Files that many rules read.
DOCS = results("data/docs.parquet")
TOKENIZER = results("tokenizer/tokenizer.json")
EXAMPLES = results("tokens/examples.parquet")
MANIFEST = results("tokens/manifest.json")
POOL = results("subsets/pool/ids.parquet")
# The model a (method, seed) trained: what every evaluation of it reads.
MODEL = results("models/{method}/s{seed}/model/model.safetensors")


def lm_inputs(ids):
    """Inputs of `winnow train lm`: the pretrained model's files (none from scratch), the token
    store and the ids (a path or an input function) to train on."""
    return {
        "pretrained": pretrained_files,  # rules/common_models.smk
        "examples": EXAMPLES,
        "manifest": MANIFEST,
        "tokenizer": TOKENIZER,
        "ids": ids,
    }


def resume_from(key):
    """Params of `winnow train lm` that continue training from the model folder of input ``key``
    (its weights and AdamW state)."""
    return lambda wildcards, input: ["--resume-from", str(Path(input[key]).parent)]


def contract_gate():
    """The data contract as an input: a gate, not data (ancient), so a rerun contract (config
    edited) does not rerun what it passed."""
    return ancient(results("data/contract.json"))


# One torch.compile cache per run, shared by all its jobs (they inherit the environment, on Slurm
# too): a graph compiled by the first trainer is reused by the next instead of compiled per job.
for _var, _sub in (
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("TRITON_CACHE_DIR", "triton"),
):
    os.environ.setdefault(_var, str(Path("results", RUN, "cache", _sub).resolve()))
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
NUM_SHARDS = config["tokenize"]["num_shards"]
# Jobs work on blocks of shards (tokenize, score_pool), so the DAG grows with blocks, not shards.
SHARDS_PER_BLOCK = config["tokenize"].get("shards_per_block") or -(-NUM_SHARDS // 64)
BLOCKS = list(range(num_blocks(NUM_SHARDS, SHARDS_PER_BLOCK)))
# Jobs that gather every block (merge_examples, merge_scores) name each one on their command line;
# past ~1,000 blocks that line nears the kernel's 128 KiB limit on one argument.
if len(BLOCKS) > 1000:
    raise ValueError(
        f"config key tokenize.shards_per_block: {SHARDS_PER_BLOCK} makes {len(BLOCKS)} blocks of"
        f" {NUM_SHARDS} shards; at most 1000 are allowed (set it to ≥ {-(-NUM_SHARDS // 1000)})"
    )
# CPU threads of each training / evaluation job (Slurm: cpus_per_task). Training is compute-bound
# (2 threads ≈ 1.8× one on the default model); evaluations are short and mostly start-up, so one
# thread each lets two of them run side by side.
THREADS = {"train": 2, "eval": 1, **config.get("threads", {})}
ENV = "../envs/winnow.yaml"


# Methods of the shared spine (trained per seed on pool selections, compared with random); MATES and
# LESS have their own arms and tables, and `ablation` is not a selection method.
# The bake-off adds the pool-level MATES and LESS arms (rules/bakeoff.smk) to the spine.
BAKEOFF_ARMS = ["random", "pds", "mates_pool", "less_pool"]
SELECTION_METHODS = [
    m
    for m in config["methods"]
    if m not in ("ablation", "mates", "less", "bakeoff", "external")
]
if "bakeoff" in config["methods"]:
    SELECTION_METHODS += [m for m in BAKEOFF_ARMS if m not in SELECTION_METHODS]
# Methods whose scores come from a fitted scorer (the others have their own score rule).
SCORERS = [m for m in SELECTION_METHODS if m in ("pds", "mates_pool", "less_pool")]
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
# PDS's paper variant (Algorithm 1) ascends g = −dJ_total/dγ, the sum of the proxy contributions
# over every step; interval > 1 (the released code's approximation) would be another gradient.
_solver = (config.get("pds") or {}).get("solver") or {}
if _solver.get("variant") == "paper" and _solver.get("interval", 1) != 1:
    raise ValueError(
        f"config key pds.solver.interval must be 1 for pds.solver.variant paper, got"
        f" {_solver['interval']}: Algorithm 1 sums the proxy contributions over every step"
        " (interval > 1 is the released variant's approximation; the schema's default, 10, is its)"
    )


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


# Rules whose jobs run `winnow train lm` (torchrun with one process per GPU when they get several).
LM_TRAIN_RULES = (
    "train_lm",
    "pds_init",
    "ablation_seed",
    "ablation_component",
    "ablation_mixture",
    "mates_train",
    "mates_decay",
)


def _set_gpus(rule):
    """The gpu resource a profile or --set-resources gives ``rule`` (None: not known at parse time,
    e.g. an expression of ``attempt``)."""
    settings = getattr(workflow, "resource_settings", None)
    res = getattr(settings, "overwrite_resources", None) or {}
    value = (res.get(rule) or {}).get("gpu")
    value = getattr(value, "value", value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _check_micro_batches(key, block, gpus=1, where=""):
    """batch_size of ``block`` (config key ``key``) splits into micro-batches on every GPU."""
    if "micro_batch_size" not in block:
        return
    batch, micro = block["batch_size"], block["micro_batch_size"]
    if batch % (micro * gpus):
        per = f" × {gpus} GPUs{where}" if gpus > 1 else ""
        raise ValueError(
            f"config key {key}.batch_size ({batch}) must be a multiple of {key}.micro_batch_size"
            f" ({micro}){per}: each optimizer step is whole micro-batches on every GPU"
        )


_lm_gpus = {r: _set_gpus(r) for r in LM_TRAIN_RULES}
_lm_gpus = {r: g for r, g in _lm_gpus.items() if g and g > 1}
if _lm_gpus:
    _rule = max(_lm_gpus, key=_lm_gpus.get)
    _check_micro_batches(
        "train", config["train"], _lm_gpus[_rule], f" (rule {_rule}'s gpu resource)"
    )
_check_micro_batches("train", config["train"])
if config.get("less"):  # LESS trains in one process (warm-up and fine-tunes)
    _check_micro_batches("less.train", config["less"].get("train") or {})


wildcard_constraints:
    run=re.escape(RUN),
    scorer="|".join(SCORERS) or "no-scorer",
    block=r"\d+",
    seed=r"\d+",
    method=r"[a-z][a-z0-9_]*|external-[a-z0-9_]+",  # external-<name>: rules/external.smk
    subset=r"[A-Za-z0-9_]+",
    arm="mates|mrandom",
    k=r"\d+",
    split="val|test",


for _target in config["eval"].get("targets", []):
    if _target not in config["subsets"]:
        raise ValueError(
            f"config key eval.targets names {_target!r}, which is not a key of subsets"
        )
# A set a method optimises is never the set it is judged on.
_heldout = heldout_problems(config)
if _heldout:
    raise ValueError("\n".join(_heldout))


def as_json(obj):
    """A deterministic JSON string for a shell argument (sorted keys: stable params)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def verbatim(value):
    """A param passed on as it is: Snakemake formats a plain string (or list) param with the job's
    wildcards, so a config value's {braces} would be replaced; a function's result is not.
    """
    return lambda wildcards: value


def input_flags(wildcards, input):
    """A param: every named input as --NAME PATH (underscores as dashes), in the rule's order (a
    list, quoted by the rule), so rules that differ only in their inputs share one shell command.
    """
    return [
        arg
        for name, path in input.items()
        for arg in (f"--{name.replace('_', '-')}", path)
    ]


def code(command):
    """Hash of the package code a CLI command runs; as a param it reruns jobs whose code changed."""
    return command_hash(command)


def script_code(script, command):
    """Hash of a script rule's code: workflow/scripts/``script`` and the command it runs."""
    return script_hash(Path(workflow.basedir, "workflow", "scripts", script), command)


def block_params(command, **given):
    """The config keys CLI `command` declares (winnow.params), as one JSON object for `--params`;
    exactly those keys, so a job reruns when a key it reads changes and only then. `given` sets a
    key from another block (the bake-off's n_probe). Lazy, so a block the run leaves out is read
    by none of its jobs."""
    return lambda wildcards: command_params(config, command, **given)


def cli_params(command, **given):
    """Params of a job of CLI `command` that reads config keys, as `**cli_params(command)`:
    `cfg` (block_params, shell `--params {params.cfg:q}`) and `code` (the command's code hash).
    """
    return {"cfg": block_params(command, **given), "code": code(command)}


# Block folder lists, built once per (pattern, run, ...) and copied per call: with many blocks,
# `expand` in every job's input function was a measurable part of the dry run.
_BLOCK_PATHS = {}


def _block_paths(pattern, **fields):
    key = (pattern, *sorted(fields.items()))
    if key not in _BLOCK_PATHS:
        _BLOCK_PATHS[key] = [pattern.format(block=b, **fields) for b in BLOCKS]
    return list(_BLOCK_PATHS[key])


def token_blocks(wildcards):
    """The tokenize jobs' folders. Readers of the corpus take tokens/manifest.json instead: it is
    made from all of them and names every shard's file (a list of thousands of files in one
    command would exceed the kernel's 128 KiB argument limit)."""
    return _block_paths("results/{run}/tokens/block-{block}", run=wildcards.run)


def subset_args(wildcards):
    """CLI arguments of one named subset from config['subsets'] (a list: the rule quotes each;
    a free string is passed as --opt=value, so one that starts with '-' is still a value).
    """
    spec = config["subsets"][wildcards.subset]
    args = []
    if spec.get("splits"):
        args += ["--splits", *spec["splits"]]
    args += [f"--domains={d}" for d in spec.get("domains") or []]
    size = "n" if "n" in spec else "fraction"
    args += [
        f"--{size}",
        str(spec[size]),
        "--key",
        f"subsets.{wildcards.subset}.{size}",
    ]
    args += ["--seed", str(spec["seed"])]
    return args


def select_args(wildcards):
    """Arguments of `select select` for config select.{method} (a list, quoted by the rule)."""
    if wildcards.method.startswith("external-"):
        return external_select_args(wildcards)  # rules/common_external.smk
    spec = config["select"][wildcards.method]
    key = f"select.{wildcards.method}.{'ratio' if 'ratio' in spec else 'k'}"
    return spec_select_args(spec, key)


def spec_select_args(spec, key, seed=None):
    """Arguments of `select select` for a select spec (direction, ratio or k, temperature), an
    optional draw seed, and ``key``: the config key a size error names (a list, quoted by the rule).
    """
    size = ["--ratio", spec["ratio"]] if "ratio" in spec else ["--k", spec["k"]]
    draw = [] if seed is None else ["--seed", seed]
    return [
        "--direction",
        spec["direction"],
        *size,
        "--temperature",
        spec.get("temperature", 0.0),
        *draw,
        "--key",
        key,
    ]


def tokenizer_local(wildcards):
    """`--local=PATH` of `data tokenizer` when tokenizer.kind is local (a list, quoted by the rule)."""
    tok = config["tokenizer"]
    if tok.get("kind", "bpe") != "local":
        return []
    if not tok.get("path"):
        raise ValueError(
            "config key tokenizer.path is required when tokenizer.kind is local"
        )
    return [f"--local={tok['path']}"]


def model_trust():
    """--trust-remote-code for the jobs that load a model folder, when the workflow config opts
    in (model.trust_remote_code). An artifact (a checkpoint's config.json) never decides it.
    """
    return ["--trust-remote-code"] if config["model"].get("trust_remote_code") else []


def scorer_trust(wildcards):
    """--trust-remote-code for scoring with a fitted scorer when its workflow config block opts in
    (pds.scorer / mates.scorer trust_remote_code), never because its scorer.json says so.
    """
    trust = json.loads(scorer_config(wildcards)).get("trust_remote_code")
    return ["--trust-remote-code"] if trust else []


def corpus_inputs():
    """Paths of corpus.inputs (an entry is a path, or {path, split, domain})."""
    return [i if isinstance(i, str) else i["path"] for i in config["corpus"]["inputs"]]


def input_options(wildcards):
    """The split and/or domain corpus.inputs' object entries force on their records, as JSON."""
    return as_json(
        {
            i["path"]: {k: v for k, v in i.items() if k != "path"}
            for i in config["corpus"]["inputs"]
            if not isinstance(i, str)
        }
    )


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
    return (
        [f"{base}/ppl.json", f"{base}/harness.json"]
        + [f"{base}/target-{t}.json" for t in eval_targets()]
        + harness_task_evals(base)  # rules/eval_tasks.smk: eval.harness tasks
    )


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
    if "less" in config["methods"]:
        files += less_targets()
    if "bakeoff" in config["methods"]:
        files += bakeoff_targets()
    files += report_targets()
    files = sorted(set(files))
    # a report covers what exists (rules/common_report.smk): missing targets are not run
    return [f for f in files if Path(f).exists()] if REPORTING else files


def pds_init_config():
    cfg = json.loads(train_config())
    cfg["steps"] = config["pds"]["init_steps"]
    cfg["seed"] = config["pds"]["solver"].get("seed", 0)
    return as_json(cfg)
