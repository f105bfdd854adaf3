"""Which package modules each CLI command runs (the code a rule's output depends on).

``provenance.command_hash(command)`` hashes these modules, everything they import, and the CLI
group module (``winnow.cli.<group>``, not its imports). The rules pass that hash as a param, so
editing a module reruns exactly the jobs whose command uses it.
"""

COMMANDS: dict[str, tuple[str, ...]] = {
    "data ingest": ("winnow.data.ingest",),
    "data tokenizer": ("winnow.data.tokenizer",),
    "data tokenize": ("winnow.data.tokenize", "winnow.data.tokenizer", "winnow.io.shards"),
    "data merge-examples": ("winnow.io.tables",),
    "data sample-subset": ("winnow.data.subsets",),
    "data eval-tasks": ("winnow.data.tasks",),
    "select random-scores": ("winnow.io.tables",),
    "select select": ("winnow.select",),
    "train lm": ("winnow.train.trainer", "winnow.models.build", "winnow.data.tokenizer"),
    "eval ppl": ("winnow.eval.perplexity", "winnow.models.build", "winnow.data.tokenizer"),
    "eval harness": ("winnow.eval.harness", "winnow.data.tasks"),
    "eval table": ("winnow.eval.table",),
}
