"""Local HF model and tokenizer folders as workflow inputs, their checks, and a tiny-model builder.

A folder named by the config (``model.pretrained``, ``tokenizer.path``, a scorer's ``pretrained`` /
``tokenizer``, ``less.base``) is an input like any other file: its files are listed here so
Snakemake replans a consumer when one changes (a folder path given as a param would not), and the
checks run at parse time, before any job, naming the config key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

# Files transformers reads from a model / tokenizer folder (weights are listed separately: one file
# or the shards an index names). A file outside these lists does not change what loads.
MODEL_META = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
INDEX = "model.safetensors.index.json"

# Module names LoRA may wrap, per architecture (``model_type`` of config.json); the defaults are the
# attention projections plus, for NeoX, its dense output (the modules LESS's recipe adapts).
ARCH_MODULES = {
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "lm_head"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
}
LORA_DEFAULTS = {
    "gpt_neox": ["query_key_value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e})") from e


def weight_files(folder: str | os.PathLike, key: str = "model folder") -> list[Path]:
    """The safetensors weights of a folder: the shards its index names (and the index), or
    ``model.safetensors``. A shard the index names but the folder lacks is listed all the same, so
    Snakemake reports it missing instead of transformers failing mid-job."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"config key {key}: {index} names no weight files")
        for name in shards:
            if "/" in name or name.startswith("."):
                raise ValueError(f"config key {key}: {index} names {name!r}, not a file of the folder")
        return [index, *(folder / s for s in shards)]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"config key {key}: {folder} has neither model.safetensors nor {INDEX} (safetensors only)")


def tokenizer_files(folder: str | os.PathLike, key: str = "tokenizer folder") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"config key {key}: {folder} is not a local folder (no hub downloads)")
    files = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not files:
        raise FileNotFoundError(
            f"config key {key}: {folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)"
        )
    return files


def model_files(folder: str | os.PathLike, key: str = "model folder") -> list[Path]:
    """Every file of a local model folder that loading it reads: config, weights (single or sharded)
    and, when the folder carries one, its tokenizer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"config key {key}: {folder} is not a local folder (no hub downloads)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"config key {key}: {folder} has no config.json")
    meta = [folder / n for n in MODEL_META if (folder / n).is_file()]
    toks = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    return meta + weight_files(folder, key) + toks


def model_type(folder: str | os.PathLike) -> str:
    return _read_json(Path(folder) / "config.json").get("model_type", "")


def tokenizer_size(folder: str | os.PathLike) -> tuple[int, dict[str, int]]:
    """(number of token ids incl. added/special tokens, {special token: id}) of a tokenizer folder,
    read from tokenizer.json without loading transformers."""
    folder = Path(folder)
    tj = _read_json(folder / "tokenizer.json")
    ids = set(tj.get("model", {}).get("vocab", {}).values())
    added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ids |= set(added.values())
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    cfg_path = folder / "tokenizer_config.json"
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    named = {}
    for role in ("eos_token", "pad_token", "bos_token"):
        tok = cfg.get(role)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok is not None and tok in added:
            named[role] = added[tok]
    return (max(ids) + 1 if ids else 0), {**specials, **named}


def check_vocab(
    key: str,
    model_folder: str | os.PathLike,
    n_tokens: int,
    special_ids: dict | None = None,
    tokenizer_key: str = "the tokenizer",
) -> None:
    """Refuse a model whose embedding cannot hold every token id (or whose own pad/eos/bos ids lie
    outside its embedding): training or scoring would index past it, or learn rows nobody reads."""
    cfg = _read_json(Path(model_folder) / "config.json")
    rows = cfg.get("vocab_size")
    if rows is None:
        raise ValueError(f"config key {key}: {model_folder}/config.json has no vocab_size")
    if rows < n_tokens:
        raise ValueError(
            f"config key {key}: embedding has {rows} rows but {tokenizer_key} has {n_tokens} tokens"
            " (incl. specials); use the model's own tokenizer (tokenizer.kind: local, tokenizer.path:"
            " the model folder)"
        )
    for name, tid in (special_ids or {}).items():
        if tid is not None and tid >= rows:
            raise ValueError(
                f"config key {key}: {tokenizer_key}'s {name} has id {tid}, beyond the embedding's {rows} rows"
            )
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        tids = cfg.get(name)
        for tid in tids if isinstance(tids, list) else [tids]:
            if tid is not None and tid >= rows:
                raise ValueError(f"config key {key}: config.json's {name} is {tid}, beyond the embedding's {rows} rows")


def lora_targets(key: str, folder: str | os.PathLike | None, names: Iterable[str] | None) -> list[str]:
    """LoRA target modules: ``names``, or the architecture's default when null; a name no module
    of the architecture has is refused (PEFT would fail only once the job runs, or wrap nothing)."""
    arch = model_type(folder) if folder else "gpt_neox"
    known = ARCH_MODULES.get(arch)
    if names is None:
        if known is None:
            raise ValueError(
                f"config key {key}: no default target modules for architecture {arch!r}; set them"
                f" (known architectures: {', '.join(sorted(ARCH_MODULES))})"
            )
        return list(LORA_DEFAULTS[arch])
    names = list(names)
    if known is not None:
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(
                f"config key {key}: {', '.join(map(repr, bad))} matches no module of a {arch} model"
                f" (its modules: {', '.join(known)})"
            )
    return names


# ---- a tiny local model folder (tools/make_local_model.py) ----

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<|bos|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE with eos/pad/bos specials and a chat template (a PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS, PAD, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=BOS)
    hf.chat_template = CHAT_TEMPLATE
    hf.model_max_length = 1_000_000
    return hf


def hf_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, max_pos: int, tok):
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
        **ids,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(num_key_value_heads=heads, **common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(num_key_value_heads=heads, **common)
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common)
    raise ValueError(f"architecture {arch!r}: one of llama, qwen2, gpt_neox")


def texts_of(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Lines of text files (.txt) or the ``text`` field of JSON lines (.jsonl, .jsonl.gz)."""
    import gzip

    out = []
    for p in map(Path, paths):
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:
            for line in fh:
                if re.search(r"\.jsonl(\.gz)?$", p.name):
                    if line.strip():
                        out.append(json.loads(line).get("text", ""))
                elif line.strip():
                    out.append(line.rstrip("\n"))
    return out


def make_local_model(
    out: str | os.PathLike,
    arch: str,
    texts: Iterable[str],
    vocab_size: int = 512,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_pos: int = 256,
    seed: int = 0,
    max_shard_size: str | None = None,
) -> Path:
    """Write a randomly initialised ``arch`` model with its own BPE tokenizer (trained on ``texts``)
    and chat template to ``out``, an HF folder that loads offline; sharded when ``max_shard_size``
    (e.g. "50KB") is smaller than the weights. The embedding has exactly the tokenizer's size."""
    import torch
    from transformers import AutoModelForCausalLM

    from winnow.io.atomic import atomic_folder

    out = Path(out)
    tok = train_tokenizer(texts, vocab_size)
    cfg = hf_config(arch, len(tok), hidden, layers, heads, max_pos, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with atomic_folder(out) as tmp:
        kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(str(tmp), safe_serialization=True, **kw)
        tok.save_pretrained(str(tmp))
    return out
