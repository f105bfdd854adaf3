# Rule eval_compare: one method against random, seed by seed (differences, means, wins).
from winnow.workflow_script import run_command

sm = snakemake  # noqa: F821 (defined by Snakemake)
run_command(sm, "eval compare", ["--evals", *sm.input, "--baseline", "random", "--out", sm.output[0]])
