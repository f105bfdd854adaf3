"""Tiny tokenizer, model and documents for fast unit tests (no downloads, CPU, one thread).

Imported as ``from _tiny import ...``: pytest's default (prepend) import mode puts tests/unit on
sys.path when it collects a test module from there.
"""

from __future__ import annotations

import random
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def offline_env(tmp_path: Path, mp) -> None:
    """Force offline mode and a throwaway HF cache through ``mp`` (a ``pytest.MonkeyPatch``, so
    the session's environment is restored afterwards); call before anything downloads or caches."""
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    mp.setenv("HF_HOME", str(tmp_path / "hf_home"))


_SUBJECTS = {
    "farm": ["the farmer", "a goat", "the old horse", "my neighbour", "the shepherd", "a small pig"],
    "sea": ["the captain", "a sailor", "the old whale", "the harbour master", "a gull", "the crew"],
}
_VERBS = ["watched", "followed", "found", "carried", "remembered", "painted", "called", "feared"]
_OBJECTS = {
    "farm": ["the barn", "the fence", "a bucket", "the meadow", "the hay", "a lantern", "the orchard"],
    "sea": ["the anchor", "the mast", "a lantern", "the harbour", "the rope", "the storm", "a compass"],
}
_TAILS = ["at dawn", "before supper", "in the rain", "without a word", "for an hour", "again"]


def make_docs(n_per_domain: int = 6, sentences: int = 8, seed: int = 0) -> list[dict]:
    """Made-up documents in two domains ("farm", "sea") with DOCS columns.

    Each sentence ends in a word that also occurs earlier in its document often enough that
    last-word items exist, and sentences differ across documents so choice distractors exist.
    """
    rng = random.Random(seed)
    docs = []
    for domain in sorted(_SUBJECTS):
        for i in range(n_per_domain):
            words = []
            for _ in range(sentences):
                subj = rng.choice(_SUBJECTS[domain])
                obj = rng.choice(_OBJECTS[domain])
                tail = rng.choice(_TAILS)
                s = f"{subj} {rng.choice(_VERBS)} {obj} {tail}."
                words.append(s[0].upper() + s[1:])
            docs.append(
                {
                    "doc_id": f"{domain}-{i:03d}",
                    "text": " ".join(words),
                    "domain": domain,
                    "source": "tiny",
                    "split": "test",
                    "prompt": None,
                }
            )
    return docs


def train_tokenizer(texts: list[str], vocab_size: int = 300):
    """Byte-level BPE trained with ``tokenizers``, wrapped as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def make_model(tokenizer, max_positions: int = 16, seed: int = 0, init_range: float = 0.5):
    """Random 2-layer GPTNeoX (hidden 32, 2 heads) in eval mode.

    ``init_range`` is large on purpose: with the default 0.02 the outputs are nearly uniform, so
    a test feeding the wrong context would still pass.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(config)
    model.eval()
    return model


def save_tiny(
    tmp_path: Path, texts: list[str], max_positions: int = 1024, vocab_size: int = 300, init_range: float = 0.5
):
    """Train a tokenizer and build a model; save both as HF folders. Returns (model_dir, tok_dir)."""
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    model = make_model(tok, max_positions=max_positions, init_range=init_range)
    tok_dir, model_dir = tmp_path / "tokenizer", tmp_path / "model"
    tok.save_pretrained(tok_dir)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir, tok_dir
