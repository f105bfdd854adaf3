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

GROUPS = ("data", "select", "train", "eval", "scorer", "pds", "mates", "ablation", "less", "audit", "report")


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


def main(argv: list[str] | None = None) -> int:
    from winnow.cli import ablation, audit, data, less, mates, pds, report, scorer, select, train
    from winnow.cli import eval as evaluate

    parser = argparse.ArgumentParser(prog="winnow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default="INFO")
    groups = parser.add_subparsers(dest="group", required=True)
    groups_ = (
        ("data", data),
        ("select", select),
        ("train", train),
        ("eval", evaluate),
        ("scorer", scorer),
        ("pds", pds),
        ("mates", mates),
        ("ablation", ablation),
        ("less", less),
        ("audit", audit),
        ("report", report),
    )
    for name, module in groups_:
        sub = groups.add_parser(name).add_subparsers(dest="command", required=True)
        module.register(sub)
    args = parser.parse_args(argv)
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
