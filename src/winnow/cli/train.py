"""``winnow train lm``: train a causal LM on an id list; write its final checkpoint folder.

With more than one GPU (``--gpus N``, by default the GPUs the job sees: ``CUDA_VISIBLE_DEVICES``,
which Slurm sets from ``--gpus``, else ``torch.cuda.device_count()``) the command starts itself
again under ``torchrun``, one process per GPU, and the trainer runs DDP at the same global batch.
One GPU or none: a single process, as before.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path

from winnow.cli._common import add_args, add_store, add_threads, add_tokenizer, config_help, json_arg, sidecars

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("lm", help="train a causal LM on exactly the ids given")
    add_store(p)
    add_tokenizer(p)
    add_args(
        p,
        """
        --ids           IDS parquet: the examples to train on
        --resume-from?  checkpoint folder to continue from
        --ckpt-root     folder for intermediate checkpoints
        --out           final model.safetensors (folder gets the rest)
        --gpus:int?     processes to start, one per GPU (torchrun, DDP) when > 1; default: the GPUs the job sees (CUDA_VISIBLE_DEVICES, else torch.cuda.device_count()); without CUDA, N > 1 runs N CPU processes (gloo)
        """,
    )
    p.add_argument(
        "--model-config",
        type=json_arg,
        required=True,
        help=config_help("model", " (architecture sizes, or pretrained: a local HF model folder)"),
    )
    p.add_argument(
        "--train-config",
        type=json_arg,
        required=True,
        help=config_help("train", " (steps, batch sizes, lr and schedule; plus seed, set per job)"),
    )
    add_threads(p)
    p.set_defaults(func=lm)


# ---------------------------------------------------------------- multi-GPU launcher
def visible_gpus(environ=os.environ) -> int:
    """The GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when it is set (Slurm sets
    it for ``--gpus``/``--gres``), else ``torch.cuda.device_count()``."""
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        cvd = cvd.strip()
        if cvd in ("", "-1", "NoDevFiles"):
            return 0
        return len([d for d in cvd.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPU
        return 0


def under_torchrun(environ=os.environ) -> bool:
    return "WORLD_SIZE" in environ or "TORCHELASTIC_RUN_ID" in environ


def processes_to_launch(gpus: int | None, environ=os.environ) -> int:
    """How many processes to start under torchrun; 0: train in this process.

    0 when already under torchrun (WORLD_SIZE set), and when there is one GPU or none."""
    if under_torchrun(environ):
        return 0
    n = visible_gpus(environ) if gpus is None else gpus
    if n < 0:
        raise ValueError(f"--gpus must be >= 0, got {n}")
    return n if n > 1 else 0


def torchrun_launcher(nproc: int, python: str = sys.executable) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N --local-addr 127.0.0.1``: one
    node, a free rendezvous port (so two such jobs on one node do not collide); the program follows.

    ``--local-addr``: without it the workers reach rank 0 at the host's FQDN, and where that name
    resolves to an address the host cannot reach (containers, CI sandboxes) they hang instead."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "--local-addr",
        "127.0.0.1",
    ]


def torchrun_command(nproc: int, argv: list[str], python: str = sys.executable) -> list[str]:
    """``torchrun_launcher(nproc) -m winnow <argv>``."""
    return [*torchrun_launcher(nproc, python), "-m", "winnow", *argv]


def lm_argv(args) -> list[str]:
    """The command line of ``args`` (``winnow [--log-level L] train lm ...``), for the relaunch."""
    argv = ["--log-level", args.log_level] if getattr(args, "log_level", None) else []
    argv += ["train", "lm", "--examples", args.examples, "--manifest", args.manifest]
    argv += ["--tokenizer", args.tokenizer, "--ids", args.ids]
    argv += ["--model-config", json.dumps(args.model_config, sort_keys=True)]
    argv += ["--train-config", json.dumps(args.train_config, sort_keys=True)]
    if args.resume_from is not None:
        argv += ["--resume-from", args.resume_from]
    argv += ["--ckpt-root", args.ckpt_root, "--out", args.out, "--threads", str(args.threads)]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    return argv


def relaunch_under_torchrun(args) -> None:
    """Replace this process by torchrun with one worker per GPU when there are several (never returns
    then); return when this process should train itself."""
    nproc = processes_to_launch(args.gpus)
    if not nproc:
        return
    try:
        import torch

        if torch.cuda.is_available() and nproc > torch.cuda.device_count():
            raise SystemExit(f"--gpus {nproc}: only {torch.cuda.device_count()} CUDA devices are visible")
    except ImportError:
        pass
    cmd = torchrun_command(nproc, lm_argv(args))
    log.info("%d GPUs: starting %d DDP processes under torchrun: %s", nproc, nproc, shlex.join(cmd))
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(cmd[0], cmd)


def lm(args) -> None:
    relaunch_under_torchrun(args)
    import torch

    from winnow.data.tokenizer import load
    from winnow.io.tables import IDS, read_table
    from winnow.models.build import build_model
    from winnow.provenance import path_sha256
    from winnow.train.batches import open_store
    from winnow.train.trainer import TrainConfig, final_lr, train

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tok = load(Path(args.tokenizer).parent)
    store, manifest = open_store(args.examples, args.manifest)
    ids = read_table(args.ids, IDS)["example_id"].to_numpy()
    train_config, lr_from = dict(args.train_config), "the train config"
    if "lr" in train_config and train_config["lr"] is None:
        # lr null: continue at the learning rate the checkpoint ended at (modular data ablations
        # continue the seed model at its final lr)
        if not args.resume_from:
            raise ValueError("train config lr null means the final lr of the --resume-from checkpoint; none was given")
        train_config["lr"] = final_lr(args.resume_from)
        lr_from = f"--resume-from {args.resume_from}: the lr of its last optimizer step"
        log.info("lr %.6g: %s", train_config["lr"], lr_from)
    cfg = TrainConfig(seq_len=manifest["seq_len"], **train_config)
    model = build_model(args.model_config, len(tok), tok.eos_token_id, tok.pad_token_id, seed=cfg.seed)
    init = (
        f"resume:{path_sha256(Path(args.resume_from) / 'model.safetensors')}"
        if args.resume_from
        else (
            f"pretrained:{args.model_config['pretrained']}:{path_sha256(args.model_config['pretrained'])}"
            if args.model_config.get("pretrained")
            else f"scratch:{cfg.seed}"
        )
    )
    out_dir = Path(args.out).parent
    summary = train(
        model, store, ids, cfg, out_dir, args.ckpt_root, tok.pad_token_id, init=init, resume_from=args.resume_from
    )
    log.info("summary: %s", summary)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 wrote the checkpoint; it writes the sidecars too
    outs = [out_dir / n for n in ("model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json")]
    inputs = [args.examples, args.manifest, args.ids, args.tokenizer] + ([args.resume_from] if args.resume_from else [])
    if args.model_config.get("pretrained"):  # the folder's files, hashed: an edited shard shows in the audit
        inputs.append(args.model_config["pretrained"])
    # The process count is not a parameter of the result: DDP trains on the same global batch.
    extra = {"summary": summary, "lr": cfg.lr, "lr_from": lr_from}
    sidecars(args, "train lm", outs, inputs, seed=cfg.seed, extra=extra, drop=("gpus",))
