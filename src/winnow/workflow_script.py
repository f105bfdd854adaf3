"""Glue for the rules that run a short script (workflow/scripts/) instead of a shell command.

A script rule runs one ``winnow`` command in the job's own process: the same parser, logging
header, outputs and provenance sidecars as ``python -m winnow <command>``, with the arguments
taken from the ``snakemake`` object (no shell in between) and the output in the job's log.
"""

from __future__ import annotations

import hashlib
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from winnow.provenance import code_hash, command_hash


def run_command(snakemake, command: str, argv: list) -> None:
    """``winnow <command> <argv>`` (``command``: "group name", as in winnow.commands) with stdout
    and stderr written to the job's log (``snakemake.log[0]``); raises what the command raises."""
    from winnow.cli import main

    with open(snakemake.log[0], "w") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            main([*command.split(), *map(str, argv)])
        except Exception:
            traceback.print_exc()  # in the log too, as a shell rule's `2>&1` would have it
            raise


def script_hash(script: str | Path, command: str) -> str:
    """Code hash of a script rule (16 hex digits): the script file, the package command it runs
    and this module; as a ``code`` param it reruns the jobs whose code changed."""
    digest = hashlib.sha256(Path(script).read_bytes())
    digest.update(command_hash(command).encode())
    digest.update(code_hash(__name__).encode())
    return digest.hexdigest()[:16]
