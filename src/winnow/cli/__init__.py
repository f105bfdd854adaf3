"""``python -m winnow <group> <command> [options]``: one subcommand per rule family.

Each command parses its arguments, calls one package function, writes its outputs atomically
and then one provenance sidecar (``<artifact>.prov.json``) per output. Rules call this CLI; tests
call the functions directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import sys

from winnow import __version__

# Each group (a module winnow.cli.<name> with ``register(sub)``) and its one-line help.
GROUPS: dict[str, str] = {
    "data": "ingest the corpus, train or copy a tokenizer, tokenize into shards, id subsets, the data contract",
    "select": "scores → selected ids; random, external (user file) and heuristic scores",
    "train": "train a causal LM on an id list (one GPU, or several through torchrun)",
    "eval": "perplexity, lm-eval tasks, target-set loss; per-model tables, method comparisons, leaderboard",
    "scorer": "fit a small data scorer to labels (PDS gamma, MATES oracle) and score the pool with it",
    "pds": "PDS: the PMP solver that gives proxy examples their data-quality labels (gamma)",
    "mates": "MATES: stage pools, last-word reference set, exact one-step oracle, stage-by-stage comparison",
    "ablation": "modular data ablations: partition id lists, mixtures, model merges, merged-vs-mixture report",
    "less": "LESS: instruction store, LoRA warm-up, gradient features, matching, predictor/prefilter, eval",
    "audit": "re-check a run's artifacts against their provenance sidecars; compare two runs",
    "report": "figures and tables of what each method scored and selected",
}


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def log_header(command: str, args: argparse.Namespace) -> None:
    from winnow.provenance import git_state

    log = logging.getLogger("winnow.cli")
    gpu = None
    if "torch" in sys.modules:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    log.info("winnow %s | %s | git %s", __version__, command, git_state())
    log.info(
        "host %s | python %s | gpu %s | CUDA_VISIBLE_DEVICES=%s | SLURM_JOB_ID=%s",
        socket.gethostname(),
        platform.python_version(),
        gpu,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get("SLURM_JOB_ID"),
    )
    log.info("arguments: %s", {k: v for k, v in sorted(vars(args).items()) if k != "func"})


def set_threads(n: int) -> None:
    """Use the cores the job was given (Snakemake ``threads``), not ``nproc``."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["RAYON_NUM_THREADS"] = str(n)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    if "torch" in sys.modules:  # otherwise torch picks OMP_NUM_THREADS up when imported
        import torch

        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    """The whole argument tree: one subparser per group in ``GROUPS``, its commands from the group
    module's ``register``."""
    import importlib

    parser = argparse.ArgumentParser(prog="winnow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="logging level of the job's log (DEBUG, INFO, WARNING, ERROR); default INFO",
    )
    groups = parser.add_subparsers(dest="group", required=True)
    for name, text in GROUPS.items():
        module = importlib.import_module(f"winnow.cli.{name}")
        group = groups.add_parser(name, help=text, description=text)
        module.register(group.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    # Offline by construction: nothing in a run may reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if getattr(args, "threads", None):
        set_threads(args.threads)
    command = f"{args.group} {args.command}"
    log_header(command, args)
    args.func(args)
    logging.getLogger("winnow.cli").info("%s: done", command)
    return 0
