"""Argument helpers shared by the CLI groups."""

from __future__ import annotations

import argparse
import json
import re

from winnow.params import Params
from winnow.provenance import inputs_sha256, write_sidecar


def json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


_ARG = re.compile(r"(--[a-z0-9][a-z0-9-]*)(?::(int|float|json))?(\+)?(\?)?\s+(\S.*)")
_TYPES = {"int": int, "float": float, "json": json_arg}


def add_args(p, table: str) -> None:
    """Arguments written as a table, one a line: ``--flag[:type][+][?]  help``. Without ``?`` the
    argument is required (with ``?``: optional, default None); ``+`` takes one or more values;
    ``type`` is int, float or json (a JSON object). ``p`` is a parser or an argument group."""
    for line in filter(None, map(str.strip, table.splitlines())):
        m = _ARG.fullmatch(line)
        if not m:
            raise ValueError(f"not an argument line: {line!r}")
        flag, kind, many, optional, text = m.groups()
        kw = {"type": _TYPES[kind]} if kind else {}
        kw |= {"nargs": "+"} if many else {}
        kw |= {"default": None} if optional else {"required": True}
        p.add_argument(flag, help=text, **kw)


def add_trust(p: argparse.ArgumentParser, key: str = "model.trust_remote_code") -> None:
    """``--trust-remote-code``: the rule passes it when the workflow config's ``key`` is true. An
    artifact (a checkpoint's config.json, a scorer's scorer.json) never decides it."""
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help=f"let the model folder's own Python code run (workflow config {key}; off by default)",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="CPU threads to use (the rule's threads); default 1")


SCHEMA = "workflow/schemas/config.schema.yaml"


def config_help(block: str, note: str = "") -> str:
    """Help of a JSON option that carries one block of the workflow config."""
    return f"the `{block}` block of the workflow config as one JSON object{note}; keys in {SCHEMA}"


def add_store(p: argparse.ArgumentParser, what: str = "the corpus token store") -> None:
    """``--examples`` and ``--manifest``: a token store (examples table + manifest with its layout)."""
    p.add_argument("--examples", required=True, help=f"EXAMPLES parquet of {what} (tokens/examples.parquet)")
    p.add_argument(
        "--manifest",
        required=True,
        help=f"manifest.json of {what} (seq_len, dtype, pad id, shard layout of the token files)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda when the job sees a GPU, else cpu), cpu, cuda; default auto",
    )


def add_runtime(p: argparse.ArgumentParser, trust_key: str = "model.trust_remote_code") -> None:
    """How a command that runs a model runs: ``--device``, ``--trust-remote-code``, ``--threads``."""
    add_device(p)
    add_trust(p, trust_key)
    add_threads(p)


def add_batch_size(p: argparse.ArgumentParser, default: int, what: str = "examples per forward pass") -> None:
    p.add_argument("--batch-size", type=int, default=default, help=f"{what}; default {default}")


def add_model(p: argparse.ArgumentParser, flag: str = "--model", what: str = "the model to evaluate") -> None:
    """A model given as the model.safetensors of an HF model folder (the folder is what is loaded)."""
    p.add_argument(flag, required=True, help=f"model.safetensors of {what}, in an HF model folder (config.json beside)")


def add_tokenizer(p: argparse.ArgumentParser, what: str = "the corpus tokenizer") -> None:
    p.add_argument("--tokenizer", required=True, help=f"tokenizer.json of {what}, in an HF tokenizer folder")


def params_of(args: argparse.Namespace, drop: tuple[str, ...] = ()) -> dict:
    """The parsed arguments that define the result (paths and thread counts are not params)."""
    skip = {"func", "group", "command", "threads", "log_level"} | set(drop)
    out = {}
    for k, v in vars(args).items():
        if k in skip:
            continue
        # A command's config keys (--params) are recorded one by one, as the flags they replace were.
        out.update(v.as_dict() if isinstance(v, Params) else {k: v})
    return dict(sorted(out.items()))


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
