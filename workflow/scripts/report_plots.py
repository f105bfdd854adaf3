# Rule report_plots: the report's figures and tables of what each method scored and selected.
from winnow.workflow_script import run_command

sm = snakemake  # noqa: F821 (defined by Snakemake)
argv = ["--examples", sm.input.examples, *sm.params.args, "--out-dir", sm.params.out_dir]
run_command(sm, "report plots", argv)
