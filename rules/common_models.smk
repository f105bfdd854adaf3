# Helpers only (no rules): local model and tokenizer folders as inputs (docs/models.md).
# A folder named by the config is not a Snakemake input by itself (a param, or one hard-coded
# model.safetensors, would miss an edited shard); its files are, listed by winnow.models.local, so
# rewriting a weight file replans every job that loads it. The checks below run at parse time
# when the folders exist, naming the config key.
from winnow.models import local as _local  # noqa: E402


def _folder_files(key, folder, kind):
    """Files of a local folder as input paths; a folder (or file) that is not there yet is listed by
    its expected name, so Snakemake reports it missing instead of the parse failing."""
    if not folder:
        return []
    check_input_path(key, folder)
    try:
        if kind == "model":
            return [str(p) for p in _local.model_files(folder, key)]
        return [str(p) for p in _local.tokenizer_files(folder, key)]
    except FileNotFoundError:
        return [
            str(Path(folder) / ("config.json" if kind == "model" else "tokenizer.json"))
        ]


def _tokenizer_of(key, folder, tok_folder=None):
    """(n tokens, special ids, description) of the tokenizer a model at ``key`` is used with: a
    local folder's, or the workflow's BPE (at most tokenizer.vocab_size ids)."""
    tok = config["tokenizer"]
    src = tok_folder or (tok.get("path") if tok.get("kind", "bpe") == "local" else None)
    if src:
        if not (Path(src) / "tokenizer.json").is_file():
            return None
        n, specials = _local.tokenizer_size(src)
        return n, specials, f"tokenizer {src}"
    # The workflow's BPE: its vocab_size ids, eos and pad among them (data/tokenizer.py).
    return (
        tok.get("vocab_size", 8192),
        {},
        "tokenizer (tokenizer.kind bpe, tokenizer.vocab_size)",
    )


def _check_model_folder(key, folder, tok_folder=None):
    if not folder or not (Path(folder) / "config.json").is_file():
        return
    found = _tokenizer_of(key, folder, tok_folder)
    if found is not None:
        n, specials, what = found
        _local.check_vocab(key, folder, n, specials, what)


PRETRAINED = config["model"].get("pretrained")
# Folders whose files are inputs: no {braces} (refused here, before the DAG, naming the key).
for _key, _path in (
    ("model.pretrained", PRETRAINED),
    ("tokenizer.path", config["tokenizer"].get("path")),
    *(
        (f"{_b}.scorer.{_k}", ((config.get(_b) or {}).get("scorer") or {}).get(_k))
        for _b in ("pds", "mates")
        for _k in ("pretrained", "tokenizer")
    ),
):
    if _path:
        check_input_path(_key, _path)
if PRETRAINED:
    _check_model_folder("model.pretrained", PRETRAINED)
    if config["tokenizer"].get("kind", "bpe") == "bpe":
        print(
            "warning: config key model.pretrained is trained with the workflow's own BPE"
            " (tokenizer.kind bpe): its embeddings were learnt for other token ids; set"
            " tokenizer.kind: local and tokenizer.path to the model's tokenizer folder",
            file=sys.stderr,
        )
for _block in ("pds", "mates"):
    _scorer = ((config.get(_block) or {}).get("scorer")) or {}
    _check_model_folder(
        f"{_block}.scorer.pretrained",
        _scorer.get("pretrained"),
        _scorer.get("tokenizer"),
    )
_LESS_BASE = (config.get("less") or {}).get("base", "random")
_LESS_FOLDER = None if _LESS_BASE == "random" else _LESS_BASE
_check_model_folder("less.base", _LESS_FOLDER)
# LoRA targets: null takes the base architecture's attention projections; a name no module of
# that architecture has is refused here. The spine's `random` base is built from model.pretrained
# when set (its architecture), else it is the workflow's own GPT-NeoX.
LESS_LORA_TARGETS = None
if config.get("less"):
    # the random base is model.pretrained's architecture only where a LESS arm trains on it
    _less_runs = any(m in config.get("methods", []) for m in ("less", "bakeoff"))
    _arch_folder = _LESS_FOLDER or (PRETRAINED if _less_runs else None)
    _base_known = _arch_folder is None or (Path(_arch_folder) / "config.json").is_file()
    _targets = config["less"]["lora"].get("target_modules")
    if _base_known:
        LESS_LORA_TARGETS = _local.lora_targets(
            "less.lora.target_modules", _arch_folder, _targets
        )
    else:
        LESS_LORA_TARGETS = _targets or ["q_proj", "k_proj", "v_proj", "o_proj"]


def pretrained_files(wildcards):
    """The files of model.pretrained (inputs of every job that builds the LM from it)."""
    return _folder_files("model.pretrained", PRETRAINED, "model")


def tokenizer_source_files(wildcards):
    """The files of tokenizer.path when tokenizer.kind is local (inputs of `rule tokenizer`)."""
    tok = config["tokenizer"]
    if tok.get("kind", "bpe") != "local":
        return []
    return _folder_files("tokenizer.path", tok.get("path"), "tokenizer")


def scorer_source_files(wildcards):
    """The files of a scorer's pretrained encoder and tokenizer folders, when it names them."""
    cfg = json.loads(scorer_config(wildcards))
    block = "mates" if _mates_scorer(wildcards.scorer) else "pds"
    return _folder_files(
        f"{block}.scorer.pretrained", cfg.get("pretrained"), "model"
    ) + _folder_files(f"{block}.scorer.tokenizer", cfg.get("tokenizer"), "tokenizer")


def less_base_files(wildcards):
    """The files of a local less.base folder (the random base is a workflow output)."""
    return _folder_files("less.base", _LESS_FOLDER, "model")
