# `snakemake --report` for any config: the report covers what exists. A report-marked output of a
# job in the DAG must exist, so a method in `methods` that was not run would fail the whole report;
# while reporting, `all` asks only for the targets that exist (all_targets in common.smk) and the
# description gets a run-status section (report/workflow.rst renders snakemake.config's
# _run_status) saying which methods are complete, partial or not run.
from winnow import run_status  # noqa: E402

REPORTING = any(a == "--report" or a.startswith("--report=") for a in sys.argv[1:])


def run_status_groups():
    """Each configured method's target files (the spine: random and the summary table)."""
    groups = {
        "random (spine)": method_evals("random") + [f"results/{RUN}/eval/summary.tsv"]
    }
    for method in SELECTION_METHODS:
        if method != "random":
            groups[method] = method_targets(method)
    for method, targets in (
        ("ablation", ablation_targets),
        ("mates", mates_targets),
        ("less", less_targets),
        ("bakeoff", bakeoff_targets),
    ):
        if method in config["methods"]:
            groups[method] = targets()
    groups["report figures"] = report_targets()
    return groups


if REPORTING:
    # read by report/workflow.rst; set after validation, and no job runs while reporting
    config["_run_status"] = run_status.rst(
        run_status.status(run_status_groups(), lambda f: Path(f).exists())
    )
