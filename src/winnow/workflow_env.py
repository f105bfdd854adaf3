"""Make the checkout's ``src/`` the package, and Snakemake's interpreter the ``python``, of every job.

The Snakefile calls :func:`export_source_tree` once; jobs (local, conda envs, Slurm, which
inherit the environment) then run ``python -m winnow`` from the same sources whose hashes the
rules' ``code`` params were computed from, even where the package is not installed.
"""

from __future__ import annotations

import os
import sys


def export_source_tree(src: str) -> None:
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    # Jobs say `python`: make that the interpreter Snakemake itself runs under (the project's
    # environment), even when it was started as .venv/bin/snakemake without activating the venv.
    # A rule's conda env, when used, is activated inside the job and comes first again.
    bindir = os.path.dirname(sys.executable)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    os.environ["PATH"] = os.pathsep.join([bindir] + path)
