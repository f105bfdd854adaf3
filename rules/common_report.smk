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


# ---- the report (rules/report.smk) -------------------------------------------------------------
def report_plot_inputs(wildcards):
    """Every pretraining selection and score table of the configured methods, and MATES's stage evals."""
    run = wildcards.run
    sel, scores, evals = {}, {}, []
    for method in SELECTION_METHODS:
        for seed in config["seeds"]:
            sel[f"{method}_s{seed}"] = (
                f"results/{run}/selected/{method}/s{seed}/ids.parquet"
            )
        if method != "random":  # random's scores are constant
            scores[method] = f"results/{run}/scores/{method}/scores.parquet"
    if "mates" in config["methods"]:
        for seed in config["seeds"]:
            for k in MATES_STAGES:
                for arm in ("mrandom", "mates") if k else ("mrandom",):
                    sel[f"{arm}_k{k}_s{seed}"] = (
                        f"results/{run}/mates/{arm}/s{seed}/stage-{k}/ids.parquet"
                    )
                    evals.append(
                        f"results/{run}/eval/{arm}_k{k}/s{seed}/reference.json"
                    )
                if k:
                    scores[f"mates_s{seed}_k{k}"] = (
                        f"results/{run}/scores/mates_s{seed}_k{k}/scores.parquet"
                    )
    if "less" in config["methods"]:
        for seed in config["seeds"]:
            # the table the `less` arm selected from (the prefilter's in mode prefilter)
            scores[f"less_s{seed}"] = f"results/{run}/less/s{seed}/" + (
                "prefilter/scores.parquet" if LESS_PREFILTER else "scores.parquet"
            )
    curves = {
        f"{method}_s{seed}": f"results/{run}/models/{method}/s{seed}/model/trainer_state.json"
        for method in SELECTION_METHODS
        for seed in config["seeds"]
    }
    return {"selections": sel, "scores": scores, "evals": evals, "curves": curves}


def report_plot_args(wildcards, input):
    """Arguments of `report plots` (a list, quoted by the rule)."""
    spec = report_plot_inputs(wildcards)
    args = ["--selection", *(f"{n}={p}" for n, p in spec["selections"].items())]
    if spec["scores"]:
        args += ["--scores", *(f"{n}={p}" for n, p in spec["scores"].items())]
    if spec["evals"]:
        args += ["--mates-evals", *spec["evals"]]
    args += ["--curves", *(f"{n}={p}" for n, p in spec["curves"].items())]
    return args


def report_plot_files(wildcards):
    spec = report_plot_inputs(wildcards)
    return (
        list(spec["selections"].values())
        + list(spec["scores"].values())
        + spec["evals"]
        + list(spec["curves"].values())
    )


def report_targets():
    plots = ["overlap.png", "composition.png", "curves.png"]
    if any(m != "random" for m in SELECTION_METHODS) or {"mates", "less"} & set(
        config["methods"]
    ):
        plots.append("scores.png")
    if "mates" in config["methods"]:
        plots.append("mates_stages.png")
    return [f"results/{RUN}/report/{p}" for p in plots]


if REPORTING:
    # read by report/workflow.rst; set after validation, and no job runs while reporting
    config["_run_status"] = run_status.rst(
        run_status.status(run_status_groups(), lambda f: Path(f).exists())
    )
