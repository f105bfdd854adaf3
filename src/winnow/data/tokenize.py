"""Docs → packed token shards + an examples table with one global ``example_id`` per sequence.

Documents go to shard ``shard_of(doc_id) = sha256(doc_id) mod num_shards``, so each shard is
tokenized by its own job and changing one document rebuilds one shard. Within a shard every
document becomes ``tokens(text) + [eos]`` cut into pieces of at most ``seq_len`` tokens; each
piece is one example. Pieces shorter than 2 tokens carry no next-token loss and are dropped
(counted in the manifest).

``example_id = shard * 2**32 + index within the shard``: global, int64, stable when other
shards change. For prompt/response documents the loss covers the response tokens only
(``loss_start`` = number of prompt tokens kept in the piece).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from winnow.io.tables import EXAMPLES
from winnow.progress import Progress

log = logging.getLogger(__name__)

ID_STRIDE = 2**32


def shard_of(doc_id: str, num_shards: int) -> int:
    h = hashlib.sha256(doc_id.encode()).digest()
    return int.from_bytes(h[:8], "little") % num_shards


def make_example_id(shard: int, index: int) -> int:
    return shard * ID_STRIDE + index


def tokenize_shard(docs: pa.Table, tokenizer, shard: int, num_shards: int, seq_len: int, batch_docs: int = 256):
    """Tokenize the docs of one shard.

    Args:
        docs: DOCS table (all shards; rows of other shards are skipped).
        tokenizer: an HF fast tokenizer with ``eos_token_id``.
    Returns:
        ``(tokens, examples, stats)``: ``(n_tokens,)`` int64 array, an EXAMPLES table and counts.
    """
    if seq_len < 2:
        raise ValueError("seq_len must be ≥ 2")
    eos = tokenizer.eos_token_id
    cols = docs.select(["doc_id", "text", "domain", "split", "prompt"]).to_pydict()
    rows = [i for i, d in enumerate(cols["doc_id"]) if shard_of(d, num_shards) == shard]
    out_tokens: list[np.ndarray] = []
    ex: dict[str, list] = {f.name: [] for f in EXAMPLES}
    stats: Counter = Counter()
    offset = 0
    prog = Progress(f"tokenize shard {shard}", total=len(rows), unit="docs")
    for start in range(0, len(rows), batch_docs):
        batch = rows[start : start + batch_docs]
        texts = [cols["text"][i] for i in batch]
        prompts = [cols["prompt"][i] for i in batch]
        # split_special_tokens: a literal "<|endoftext|>" in a document is text, not a fake boundary.
        enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        # Prompt and response are tokenized separately so the loss boundary falls exactly on a
        # token boundary (BPE could otherwise merge across the prompt's last characters).
        for j, i in enumerate(batch):
            if prompts[j] is not None:
                p_ids = _encode(tokenizer, prompts[j])
                r_ids = _encode(tokenizer, cols["text"][i][len(prompts[j]) :])
                ids, n_prompt = p_ids + r_ids + [eos], len(p_ids)
                pieces = _prompt_response_pieces(ids, n_prompt, seq_len)
            else:
                ids = enc[j] + [eos]
                pieces = [(ids[k : k + seq_len], 0) for k in range(0, len(ids), seq_len)]
            stats["docs"] += 1
            for piece, loss_start in pieces:
                if len(piece) < 2 or loss_start >= len(piece):
                    stats["dropped_pieces"] += 1
                    stats["dropped_tokens"] += len(piece)
                    continue
                ex["example_id"].append(make_example_id(shard, len(ex["example_id"])))
                ex["doc_id"].append(cols["doc_id"][i])
                ex["shard"].append(shard)
                ex["offset"].append(offset)
                ex["length"].append(len(piece))
                ex["loss_start"].append(loss_start)
                ex["loss_end"].append(len(piece))
                ex["domain"].append(cols["domain"][i])
                ex["split"].append(cols["split"][i])
                out_tokens.append(np.asarray(piece, dtype=np.int64))
                offset += len(piece)
                stats["tokens"] += len(piece)
        prog.update(len(batch), tokens=sum(len(e) for e in enc))
    prog.done()
    tokens = np.concatenate(out_tokens) if out_tokens else np.zeros(0, dtype=np.int64)
    stats["examples"] = len(ex["example_id"])
    if len(ex["example_id"]) >= ID_STRIDE:
        raise ValueError("more than 2**32 examples in one shard: raise num_shards")
    return tokens, pa.table(ex, schema=EXAMPLES), dict(stats)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _prompt_response_pieces(ids: list[int], n_prompt: int, seq_len: int) -> list[tuple[list[int], int]]:
    """One example per prompt/response: keep the prompt's tail so the response fits.

    If the response alone is longer than ``seq_len − 1``, it is cut at the end (the prompt keeps
    at least its last token so the first response token has a context).
    """
    n_resp = len(ids) - n_prompt
    keep_prompt = max(min(n_prompt, seq_len - n_resp), min(n_prompt, 1))
    piece = ids[n_prompt - keep_prompt : n_prompt - keep_prompt + seq_len]
    return [(piece, keep_prompt)]
