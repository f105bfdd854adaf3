"""Winnow: LM training-data selection as one reproducible, file-driven workflow.

The package holds all logic; the Snakemake rules call it through ``python -m winnow``.
Nothing in here imports Snakemake.
"""

import time as _time

__version__ = "0.1.0"
# When this process imported winnow (before torch and the data): a job's start-up cost, as jobs
# report it, is measured from here (issue: per-job start-up and compilation on a GPU).
PROCESS_T0 = _time.monotonic()
