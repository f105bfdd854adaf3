"""The data contract: does the config ask only for data the corpus has?

A config copied from the defaults with only ``corpus.inputs`` changed names domains the new corpus
lacks and sizes it cannot fill; each consumer (subset sampling, ablation partitions, LESS data)
would fail on its own, steps apart, naming neither the key nor what exists. ``check`` compares
every such request with the counts ingest and tokenize recorded and returns every problem at once,
each naming its config key and what exists instead; ``format`` makes one message of them.

``stats`` = ``{"docs": {split: {domain: n}}, "examples": {split: {domain: n}} | None}``: documents
per split and domain (``ingest.json``'s ``split_domains``) and training examples (token pieces,
``tokens/manifest.json``'s ``split_domains``; None before tokenize: sizes are then not checked).
Pure Python.
"""

from __future__ import annotations

import math

# The corpus domains each LESS instruction task is built from (winnow.data.instruct; kept here so
# the contract does not import it: it would rerun every contract when instruct.py changes).
LESS_TASK_DOMAINS = {
    "define": ("wordnet",),
    "usage": ("wordnet",),
    "synonym": ("wordnet",),
    "verse": ("kjv",),
    "dialogue": ("shakespeare",),
    "saying": ("fortunes",),
    "continue": ("folio", "milton", "pydocs"),
}


def _names(values) -> str:
    return ", ".join(sorted(values)) or "none"


def _count(table: dict, splits, domains) -> int:
    return sum(
        n
        for split, per in table.items()
        if not splits or split in splits
        for domain, n in per.items()
        if not domains or domain in domains
    )


def _where(splits, domains) -> str:
    s = f"split{'s' if splits and len(splits) > 1 else ''} {_names(splits)}" if splits else "all splits"
    d = f"domain{'s' if len(domains) > 1 else ''} {_names(domains)}" if domains else "all domains"
    return f"{s} of {d}"


def _subset_size(spec: dict, examples: dict) -> int:
    """How many ids the sampler draws for ``spec`` (the contract's own checks passed)."""
    have = _count(examples, spec.get("splits") or [], spec.get("domains") or [])
    return spec["n"] if "n" in spec else math.floor(spec.get("fraction", 1.0) * have)


def _check_subset(name: str, spec: dict, docs: dict, examples: dict | None, all_domains: list) -> list[str]:
    key = f"subsets.{name}"
    problems = []
    splits, domains = spec.get("splits") or [], spec.get("domains") or []
    have_splits = sorted(s for s, per in docs.items() if sum(per.values()))
    for s in splits:
        if s not in have_splits:
            problems.append(f"{key}.splits: {s} not in corpus (have: {_names(have_splits)})")
    for d in domains:
        if d not in all_domains:
            problems.append(f"{key}.domains: {d} not in corpus (have: {_names(all_domains)})")
    if problems:
        return problems
    table = examples if examples is not None else docs
    unit = "examples" if examples is not None else "documents"
    have = _count(table, splits, domains)
    # every example in the split/domain filter: what the sampler draws from (by domain, so the
    # user sees which of the named domains are empty in this split)
    where = _where(splits, domains)
    if have == 0:
        present = sorted({d for s, per in docs.items() if not splits or s in splits for d, n in per.items() if n})
        problems.append(f"{key}: 0 {unit} in {where}: an empty subset (domains there: {_names(present)})")
    elif examples is not None and "n" in spec:
        if spec["n"] < 1:
            problems.append(f"{key}.n: {spec['n']} examples asked: an empty subset ({have} in {where})")
        elif spec["n"] > have:
            problems.append(f"{key}.n: {spec['n']} examples asked, {have} in {where}")
    elif examples is not None and "fraction" in spec and math.floor(spec["fraction"] * have) < 1:
        problems.append(f"{key}.fraction: {spec['fraction']} of {have} examples in {where} keeps 0")
    return problems


def check(cfg: dict, stats: dict) -> list[str]:
    """Every problem of ``cfg`` (the config's subsets, methods, eval, ablation and less.data blocks)
    against ``stats`` (see the module docstring); [] when the corpus can serve the config."""
    docs = stats["docs"]
    examples = stats.get("examples")
    all_domains = sorted({d for per in docs.values() for d, n in per.items() if n})
    methods = cfg.get("methods") or []
    problems = []
    for name, spec in (cfg.get("subsets") or {}).items():
        problems += _check_subset(name, spec, docs, examples, all_domains)

    eval_split = (cfg.get("eval") or {}).get("split")
    have_splits = sorted(s for s, per in docs.items() if sum(per.values()))
    if eval_split and eval_split not in have_splits:
        problems.append(f"eval.split: {eval_split} not in corpus (have: {_names(have_splits)})")

    ablation = cfg.get("ablation") or {}
    # Partitions are values of ablation.column; only domain values are counted by ingest.
    if "ablation" in methods and ablation.get("column", "domain") == "domain":
        train = (examples or docs).get("train", {})
        for key, parts in (
            ("ablation.partitions", ablation.get("partitions") or []),
            ("ablation.seed_mix", ablation["seed_mix"] if isinstance(ablation.get("seed_mix"), list) else []),
        ):
            for part in parts:
                if part not in all_domains:
                    problems.append(f"{key}: {part} not in corpus (have: {_names(all_domains)})")
                elif not train.get(part):
                    problems.append(
                        f"{key}: {part} has no train-split example: an empty partition"
                        f" (domains with train examples: {_names(d for d, n in train.items() if n)})"
                    )

    mates = cfg.get("mates") or {}
    pool = (cfg.get("subsets") or {}).get("pool")
    if "mates" in methods and mates and pool and examples is not None and not problems:
        # disjoint draws from the pool: the probe pool, then stage_size per stage
        need = mates["probe_size"] + mates["stages"] * mates["stage_size"]
        have = _subset_size(pool, examples)
        if need > have:
            problems.append(
                f"mates.stage_size: {mates['stages']} stages × {mates['stage_size']} + mates.probe_size"
                f" {mates['probe_size']} = {need} examples asked of subsets.pool, which has {have}"
            )

    less_data = (cfg.get("less") or {}).get("data") or {}
    if "less" in methods and less_data and less_data.get("source", "corpus") == "corpus":
        task = less_data.get("target_task", "define")
        sources = LESS_TASK_DOMAINS.get(task, ())
        # the target's reference points come from val, its evaluation from test, the pool from train
        for split in ("val", "test"):
            n = _count(docs, [split], sources)
            if not n:
                problems.append(
                    f"less.data.target_task: {task} is built from domain {_names(sources)}, which has no"
                    f" {split}-split document (corpus domains: {_names(all_domains)}; tasks and their"
                    f" domains: {_task_domains()})"
                )
                break
        builders = {d for ds in LESS_TASK_DOMAINS.values() for d in ds}
        if not _count(docs, ["train"], builders):
            problems.append(
                f"less.data: no train-split document of a domain LESS builds instructions from"
                f" (corpus domains: {_names(all_domains)}; tasks and their domains: {_task_domains()})"
            )
    return problems


def _task_domains() -> str:
    return "; ".join(f"{t}: {'/'.join(ds)}" for t, ds in LESS_TASK_DOMAINS.items())


def format(problems: list[str]) -> str:  # noqa: A001 - the module's verb: contract.format
    """One message listing every problem (what a failed contract job and a dry run print)."""
    n = len(problems)
    head = f"the config asks for data the corpus does not have ({n} problem{'s' if n != 1 else ''}):"
    return "\n".join([head, *(f"  - {p}" for p in problems)])


def config_part(config: dict) -> dict:
    """The part of the workflow config the contract checks (a rule param: changing it reruns the check)."""
    return {
        "subsets": config.get("subsets") or {},
        "methods": config.get("methods") or [],
        "eval": {"split": (config.get("eval") or {}).get("split", "test")},
        "ablation": {
            k: v for k, v in (config.get("ablation") or {}).items() if k in ("column", "partitions", "seed_mix")
        },
        "less": {"data": ((config.get("less") or {}).get("data") or {})},
        "mates": {k: v for k, v in (config.get("mates") or {}).items() if k in ("stages", "stage_size", "probe_size")},
    }
