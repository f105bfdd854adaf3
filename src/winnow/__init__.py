"""Winnow: LM training-data selection as one reproducible, file-driven workflow.

The package holds all logic; the Snakemake rules call it through ``python -m winnow``.
Nothing in here imports Snakemake.
"""

__version__ = "0.1.0"
