"""Tokenizers: train a byte-level BPE on the corpus, or copy a local HF tokenizer folder.

Either way the output is an HF tokenizer folder (``tokenizer.json`` + configs) that the
trainer, the evaluators and lm-eval's ``HFLM`` all load the same way, offline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from winnow.io.artifacts import check_hf_folder, naming
from winnow.io.atomic import atomic_folder

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, min_frequency: int = 2) -> None:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) and save it as an HF folder.

    Training runs single-threaded (``RAYON_NUM_THREADS=1`` is set by the CLI) because
    the merge order of equal-count pairs must not depend on thread scheduling.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.model_max_length = 1_000_000  # sequences are chunked by the tokenize step, not here
    _save_atomically(hf, out_dir)


def copy_local(src: str | os.PathLike, out_dir: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Load a local HF tokenizer folder (never a hub name) and save it under ``out_dir``."""
    from transformers import AutoTokenizer

    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"tokenizer path {src} is not a local folder")
    check_hf_folder(src)
    with naming(src, "tokenizer folder"):
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=bool(trust_remote_code))
    if tok.eos_token is None:
        raise ValueError(f"{src}: tokenizer has no eos token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _save_atomically(tok, out_dir)


def load(path: str | os.PathLike, trust_remote_code: bool = False):
    """A local HF tokenizer folder; custom code runs only if the caller (the workflow config, through
    the CLI) says so, never because the folder asks. Load errors name the file."""
    from transformers import AutoTokenizer

    check_hf_folder(path)
    with naming(path, "tokenizer folder"):
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=bool(trust_remote_code)
        )


def _save_atomically(tok, out_dir: str | os.PathLike) -> None:
    with atomic_folder(out_dir) as tmp:
        tok.save_pretrained(str(tmp))
