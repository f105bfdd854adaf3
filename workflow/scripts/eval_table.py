# Rule eval_table: the local results table, one row per evaluated (method, seed).
from winnow.workflow_script import run_command

sm = snakemake  # noqa: F821 (defined by Snakemake)
run_command(sm, "eval table", ["--evals", *sm.input, "--out", sm.output[0]])
