"""Which package modules each CLI command runs (the code a rule's output depends on).

``provenance.command_hash(command)`` hashes these modules, everything they import, and the CLI
group module (``winnow.cli.<group>``, not its imports). The rules pass that hash as a param, so
editing a module reruns exactly the jobs whose command uses it. tests/unit/test_provenance.py
checks that every module a CLI function imports is listed here (directly or transitively).
"""

COMMANDS: dict[str, tuple[str, ...]] = {
    "data ingest": ("winnow.data.ingest", "winnow.io.tables"),
    "data tokenizer": ("winnow.data.tokenizer", "winnow.io.tables"),
    "data tokenize": ("winnow.data.tokenize", "winnow.data.tokenizer", "winnow.io.shards", "winnow.io.tables"),
    "data merge-examples": ("winnow.io.tables", "winnow.io.shards", "winnow.data.tokenizer"),
    "data sample-subset": ("winnow.data.subsets", "winnow.io.tables"),
    "data eval-tasks": ("winnow.data.tasks", "winnow.io.tables"),
    "select random-scores": ("winnow.io.tables",),
    "select select": ("winnow.select", "winnow.io.tables"),
    "select external-scores": ("winnow.methods.external", "winnow.io.tables"),
    "select heuristic-scores": ("winnow.methods.external", "winnow.io.tables"),
    "train lm": ("winnow.train.trainer", "winnow.models.build", "winnow.data.tokenizer", "winnow.io.tables"),
    "eval ppl": ("winnow.eval.perplexity", "winnow.models.build", "winnow.data.tokenizer", "winnow.io.tables"),
    "eval harness": ("winnow.eval.harness", "winnow.data.tasks"),
    "eval table": ("winnow.eval.table",),
    "eval target": ("winnow.eval.loss", "winnow.models.build", "winnow.io.tables"),
    "eval compare": ("winnow.eval.table",),
    "eval leaderboard": ("winnow.eval.table", "winnow.io.atomic"),
    "pds solve": ("winnow.methods.pds", "winnow.models.build", "winnow.train.batches", "winnow.io.tables"),
    "scorer fit": ("winnow.scorer", "winnow.data.tokenizer", "winnow.train.batches", "winnow.io.tables"),
    "scorer score": ("winnow.scorer", "winnow.data.tokenizer", "winnow.train.batches", "winnow.io.tables"),
    "scorer merge": ("winnow.io.tables",),
    "mates pools": ("winnow.data.subsets", "winnow.io.tables"),
    "mates reference": (
        "winnow.data.tasks",
        "winnow.data.tokenize",
        "winnow.data.tokenizer",
        "winnow.data.subsets",
        "winnow.io.shards",
        "winnow.io.tables",
    ),
    "mates oracle": ("winnow.methods.mates", "winnow.models.build", "winnow.train.batches", "winnow.io.tables"),
    "mates compare": ("winnow.eval.table",),
    # Modular data ablations: data side, merges and the report are separate modules, so editing
    # the report does not rerun the id lists (and with them every trained model).
    "ablation partition": ("winnow.methods.ablation", "winnow.io.tables"),
    "ablation mix": ("winnow.methods.ablation", "winnow.io.tables"),
    "ablation merge": ("winnow.methods.merge",),
    "ablation correlate": ("winnow.methods.ablation_report", "winnow.eval.table", "winnow.io.tables"),
    # LESS: the instruction store, LoRA training, features, matching, the predictor, evaluation.
    "less data": (
        "winnow.data.instruct",
        "winnow.data.subsets",
        "winnow.data.tasks",
        "winnow.data.tokenize",
        "winnow.data.tokenizer",
        "winnow.io.shards",
        "winnow.io.tables",
    ),
    "less train": (
        "winnow.methods.less",
        "winnow.data.subsets",
        "winnow.models.build",
        "winnow.models.checkpoint",
        "winnow.train.trainer",
        "winnow.train.batches",
        "winnow.io.tables",
    ),
    "less features": ("winnow.methods.less", "winnow.models.build", "winnow.train.batches", "winnow.io.tables"),
    "less match": ("winnow.methods.less", "winnow.io.tables"),
    "less predict": (
        "winnow.methods.less",
        "winnow.methods.less_prefilter",
        "winnow.data.subsets",
        "winnow.models.build",
        "winnow.select",
        "winnow.train.batches",
        "winnow.io.tables",
    ),
    "less prefilter-sample": ("winnow.methods.less_prefilter", "winnow.data.subsets", "winnow.io.tables"),
    "less prefilter-predict": (
        "winnow.methods.less",
        "winnow.methods.less_prefilter",
        "winnow.data.subsets",
        "winnow.models.build",
        "winnow.train.batches",
        "winnow.io.tables",
    ),
    "less prefilter": ("winnow.methods.less_prefilter", "winnow.select", "winnow.io.tables"),
    "less eval": ("winnow.eval.harness", "winnow.eval.loss", "winnow.models.build", "winnow.train.batches", "winnow.io.tables"),
    "less compare": ("winnow.eval.table", "winnow.io.tables"),
    "audit verify": ("winnow.audit", "winnow.eval.table"),
    "audit compare": ("winnow.audit", "winnow.eval.table"),
    "report plots": ("winnow.report", "winnow.eval.table", "winnow.io.tables"),
}
