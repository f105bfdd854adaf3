"""Causal LMs: a GPT-NeoX (Pythia-style) from a config block, or a local pretrained folder.

Nothing is fetched from a hub: ``pretrained`` must be a local folder, loaded with
``local_files_only=True``, safetensors only, and ``trust_remote_code`` off unless the config opts in.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ARCH_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings")


def neox_config(cfg: dict, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=cfg.get("intermediate_size", 4 * cfg["hidden_size"]),
        max_position_embeddings=cfg["max_position_embeddings"],
        rotary_pct=cfg.get("rotary_pct", 0.25),
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        initializer_range=cfg.get("initializer_range", 0.02),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def build_model(cfg: dict, vocab_size: int, eos_id: int, pad_id: int, seed: int) -> torch.nn.Module:
    """A new model (random init seeded by ``seed``) or the local pretrained folder in ``cfg['pretrained']``."""
    from transformers import GPTNeoXForCausalLM

    if cfg.get("pretrained"):
        model = load_pretrained(cfg["pretrained"], trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < vocab_size or max(eos_id, pad_id) >= rows:
            raise ValueError(
                f"model.pretrained: embedding has {rows} rows but tokenizer has {vocab_size} tokens (incl."
                f" specials; eos id {eos_id}, pad id {pad_id}): use the model's own tokenizer"
            )
        return model
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(neox_config(cfg, vocab_size, eos_id, pad_id))
    return model


def load_pretrained(path: str | os.PathLike, trust_remote_code: bool = False) -> torch.nn.Module:
    """A local HF model folder (a checkpoint, or ``model.pretrained``). ``trust_remote_code`` comes
    from the workflow config through the CLI, never from the folder; load errors name the file."""
    from transformers import AutoModelForCausalLM

    from winnow.io.artifacts import check_hf_folder, naming

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained model {path} is not a local folder (no hub downloads)")
    check_hf_folder(path)
    with naming(path, "model folder"):
        return AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, trust_remote_code=bool(trust_remote_code)
        )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
