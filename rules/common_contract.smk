# The data contract (src/winnow/data/contract.py): every subset, partition, seed mix and LESS
# source of the config checked against the counts ingest and tokenize recorded, all problems in one
# message. The `contract` rule (rules/contract.smk) is an input of every job that reads them; this
# parse-time pre-check makes a config edited after ingest fail already at the dry run.
from winnow.data import contract as data_contract  # noqa: E402

CONTRACT_CONFIG = data_contract.config_part(config)


def contract_config(wildcards):
    """The checked part of the config as JSON (a function: Snakemake would format its braces)."""
    return as_json(CONTRACT_CONFIG)


def _recorded(path, newer_than):
    """A JSON artifact of this run, if it exists and is newer than every file in ``newer_than``."""
    p = Path(path)
    if not p.exists():
        return None
    mtime = p.stat().st_mtime
    if any(Path(f).exists() and Path(f).stat().st_mtime > mtime for f in newer_than):
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _tokens_match_config(manifest):
    """Whether the recorded token counts are those the current config makes: the manifest's
    seq_len and the tokenizer's recorded parameters (its provenance sidecar) against the config.
    """
    if manifest.get("seq_len") != config["tokenize"]["seq_len"]:
        return False
    prov = _recorded(f"results/{RUN}/tokenizer/tokenizer.json.prov.json", [])
    made = (prov or {}).get("params") or {}
    tok = config["tokenizer"]
    if tok.get("kind", "bpe") == "local":
        return made.get("local") not in (None, "") and Path(made["local"]) == Path(
            tok["path"]
        )
    # what `data tokenizer` reads (winnow.params), its defaults filled in by the schema
    want = {k: tok[k] for k in ("vocab_size", "min_frequency", "max_train_chars")}
    return made.get("local") is None and all(made.get(k) == v for k, v in want.items())


def _precheck_contract():
    # Only counts of the same inputs judge the config: a changed corpus.inputs reruns ingest.
    inputs = corpus_inputs()
    ingest = _recorded(f"results/{RUN}/data/ingest.json", inputs)
    if not ingest or "split_domains" not in ingest:
        return
    if sorted(
        str(Path(s)) for s in (i.get("source") for i in ingest.get("inputs", []))
    ) != sorted(str(Path(p)) for p in inputs):
        return
    tokens = _recorded(
        f"results/{RUN}/tokens/manifest.json",
        [f"results/{RUN}/data/ingest.json", f"results/{RUN}/tokenizer/tokenizer.json"],
    )
    if tokens and not _tokens_match_config(tokens):
        tokens = None  # tokenize reruns: its contract job re-checks with the new counts
    stats = {
        "docs": ingest["split_domains"],
        "examples": (tokens or {}).get("split_domains"),
    }
    problems = data_contract.check(CONTRACT_CONFIG, stats)
    if problems:
        raise ValueError(data_contract.format(problems))


_precheck_contract()
