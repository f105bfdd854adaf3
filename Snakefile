# Winnow: select LM training data and measure whether the selection was worth it.
# Thin on purpose: includes, validation (in common.smk) and targets. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/common_models.smk"
include: "rules/common_cluster.smk"
include: "rules/common_ablation.smk"
include: "rules/common_mates.smk"
include: "rules/common_less.smk"
include: "rules/common_bakeoff.smk"
include: "rules/common_external.smk"
include: "rules/common_contract.smk"
include: "rules/common_evaltasks.smk"
include: "rules/common_scorer.smk"
include: "rules/common_report.smk"
include: "rules/data.smk"
include: "rules/contract.smk"
include: "rules/select.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/eval_tasks.smk"
include: "rules/scorer.smk"
include: "rules/pds.smk"
include: "rules/ablation.smk"
include: "rules/mates.smk"
include: "rules/less.smk"
include: "rules/bakeoff.smk"
include: "rules/external.smk"
include: "rules/audit.smk"
include: "rules/report.smk"


localrules:
    all,
    spine,
    pds,
    eval_table,
    eval_compare,
    ablation,
    ablation_correlate,
    mates,
    mates_compare,
    less,
    less_compare,
    bakeoff,
    bakeoff_leaderboard,
    external,
    audit,
    report_plots,
    contract,


# A job that sbatch refuses (or that is cancelled before it starts) must not show an older run's
# log: the logs of the jobs about to run move to <log>.prev first.
onstart:
    set_aside_logs(workflow.dag.needrun_jobs())


# The default target: every configured method × seed trained and evaluated, plus the table.
rule all:
    default_target: True
    input:
        all_targets(),


# The shared spine alone (ingest, tokenize, random selection, train, eval).
rule spine:
    input:
        method_evals("random"),


# PDS and its random baseline, trained and evaluated over every seed, with the comparison table.
rule pds:
    input:
        method_targets("pds")
        + [f"results/{RUN}/pds/solver.json", f"results/{RUN}/scorers/pds/fit.json"],


# Modular data ablations: seed, components, mixtures, merges, their perplexities and the correlation.
rule ablation:
    input:
        ablation_targets(),


# MATES and its staged random arm over every seed, with the per-stage comparison.
rule mates:
    input:
        mates_targets(),


# LESS: warm-up, features, matching, the predictor and the fine-tuned arms over every seed.
rule less:
    input:
        less_targets(),


# The bake-off: random, PDS, MATES and LESS arms at one budget on one pool, and their leaderboard.
rule bakeoff:
    input:
        bakeoff_targets(),


# Every external score file's arm (config external) over every seed, with its comparison to random.
rule external:
    input:
        external_targets(),
