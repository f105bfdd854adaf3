"""Make the checkout's ``src/`` the package that every job imports.

The Snakefile calls :func:`export_source_tree` once; jobs (local, conda envs, Slurm, which
inherit the environment) then run ``python -m winnow`` from the same sources whose hashes the
rules' ``code`` params were computed from, even where the package is not installed.
"""

from __future__ import annotations

import os


def export_source_tree(src: str) -> None:
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
