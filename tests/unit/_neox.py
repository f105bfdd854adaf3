"""Tiny GPT-NeoX models, padded batches and token stores for the exactness tests of the gradient
code (test_grads, test_pds, test_mates, test_less). Imported as ``from _neox import ...``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from winnow.io.shards import token_dtype, write_shard
from winnow.io.tables import EXAMPLES
from winnow.train.batches import ExampleStore


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops are dominated by thread hand-off on a shared 2-core box (~100× slower with 2).
    Autouse in every module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_neox(vocab: int, seq: int, pad: int, seed: int = 0, hidden: int = 16, dtype=torch.float64):
    """A 2-layer GPT-NeoX (``hidden`` wide, 2 heads, no dropout, untied) seeded by ``seed``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=seq,
        initializer_range=0.2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=pad,
        eos_token_id=1,
        bos_token_id=1,
    )
    return GPTNeoXForCausalLM(config).to(dtype)


def padded_batch(seed: int, spec: list[tuple[int, int, int]], vocab: int, seq: int, pad: int) -> dict:
    """Right-padded batch like ``collate``; spec rows = (length, loss_start, loss_end)."""
    g = torch.Generator().manual_seed(seed)
    b = len(spec)
    input_ids = torch.full((b, seq), pad, dtype=torch.long)
    attention = torch.zeros((b, seq), dtype=torch.long)
    loss_mask = torch.zeros((b, seq), dtype=torch.bool)
    for r, (n, ls, le) in enumerate(spec):
        input_ids[r, :n] = torch.randint(2, vocab, (n,), generator=g)
        attention[r, :n] = 1
        loss_mask[r, max(ls, 1) : min(le, n)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}


def random_store(
    tmp_path, n: int, seq: int, vocab: int, seed: int = 0, first_id: int = 1000, stride: int = 3, prompt_frac=0.3
) -> tuple[ExampleStore, np.ndarray]:
    """n random-token examples of 5..seq tokens in one shard, ids ``first_id + stride·i``; a
    ``prompt_frac`` share has a 3-token prompt without loss."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, seq + 1, size=n)
    tokens = rng.integers(2, vocab, size=int(lengths.sum()))
    dtype = token_dtype(vocab)
    write_shard(tmp_path / "tokens-0.bin", tokens, dtype)
    ids = first_id + stride * np.arange(n)
    table = pa.table(
        {
            "example_id": ids,
            "doc_id": [f"d{i}" for i in range(n)],
            "shard": np.zeros(n, dtype=np.int32),
            "offset": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            "length": lengths.astype(np.int32),
            "loss_start": np.where(rng.random(n) < prompt_frac, 3, 0).astype(np.int32),
            "loss_end": lengths.astype(np.int32),
            "domain": ["x"] * n,
            "split": ["train"] * n,
        },
        schema=EXAMPLES,
    )
    return ExampleStore(table, {0: tmp_path / "tokens-0.bin"}, dtype.str), ids
