# Winnow: select LM training data and measure whether the selection was worth it.
# Thin on purpose: includes, validation (in common.smk) and targets. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/select.smk"
include: "rules/train.smk"
include: "rules/eval.smk"


localrules:
    all,
    spine,
    eval_table,


# The default target: every configured method × seed trained and evaluated, plus the table.
rule all:
    default_target: True
    input:
        spine_targets(),


# The shared spine alone (ingest, tokenize, random selection, train, eval).
rule spine:
    input:
        spine_targets(),
