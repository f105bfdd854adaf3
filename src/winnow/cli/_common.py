"""Argument helpers shared by the CLI groups."""

from __future__ import annotations

import argparse
import json

from winnow.provenance import inputs_sha256, write_sidecar


def json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_trust(p: argparse.ArgumentParser, key: str = "model.trust_remote_code") -> None:
    """``--trust-remote-code``: the rule passes it when the workflow config's ``key`` is true. An
    artifact (a checkpoint's config.json, a scorer's scorer.json) never decides it."""
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help=f"let the model folder's own Python code run (workflow config {key}; off by default)",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the rule's threads)")


def params_of(args: argparse.Namespace, drop: tuple[str, ...] = ()) -> dict:
    """The parsed arguments that define the result (paths and thread counts are not params)."""
    skip = {"func", "group", "command", "threads", "log_level"} | set(drop)
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


def sidecars(args, command: str, outputs: list, inputs: list, seed=None, extra=None, drop=(), hashes=None) -> None:
    """One sidecar per output; the inputs are hashed once (or ``hashes`` from ``provenance.inputs_sha256``)."""
    params = params_of(args, drop)
    hashes = hashes if hashes is not None else inputs_sha256(inputs)
    for out in outputs:
        write_sidecar(
            out,
            command=command,
            params=params,
            inputs=[str(i) for i in inputs],
            seed=seed,
            extra=extra,
            input_sha256=hashes,
        )


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when the job sees a GPU, else ``cpu``; any other name is kept."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
