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
from itertools import chain

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

    The documents' token sequences (``tokens + [eos]``, or a prompt/response document's one piece)
    are laid end to end; the pieces tile that array in order, so cutting, dropping and the
    examples' columns are numpy operations over all pieces at once rather than a Python loop
    per piece (issue 9: the loop cost as much as the encoder on short documents).
    """
    if seq_len < 2:
        raise ValueError("seq_len must be ≥ 2")
    eos = tokenizer.eos_token_id
    cols = docs.select(["doc_id", "text", "domain", "split", "prompt"]).to_pydict()
    rows = [i for i, d in enumerate(cols["doc_id"]) if shard_of(d, num_shards) == shard]
    encode_batch = _batch_encoder(tokenizer)
    seqs: list[list[int]] = []  # per doc: the tokens its pieces tile
    n_pieces = np.zeros(len(rows), dtype=np.int64)
    loss_start = np.zeros(len(rows), dtype=np.int64)  # of a prompt/response doc's one piece
    prog = Progress(f"tokenize shard {shard}", total=len(rows), unit="docs")
    for start in range(0, len(rows), batch_docs):
        batch = rows[start : start + batch_docs]
        # split_special_tokens: a literal "<|endoftext|>" in a document is text, not a fake boundary.
        enc = encode_batch([cols["text"][i] for i in batch])
        n_encoded = sum(len(e) for e in enc)
        for j, i in enumerate(batch):
            prompt = cols["prompt"][i]
            if prompt is not None:
                # Prompt and response are tokenized separately so the loss boundary falls exactly on
                # a token boundary (BPE could otherwise merge across the prompt's last characters).
                p_ids = _encode(tokenizer, prompt)
                r_ids = _encode(tokenizer, cols["text"][i][len(prompt) :])
                ((piece, keep),) = _prompt_response_pieces(p_ids + r_ids + [eos], len(p_ids), seq_len)
                seqs.append(piece)
                n_pieces[start + j], loss_start[start + j] = 1, keep
            else:
                ids = enc[j]
                ids.append(eos)
                seqs.append(ids)
                n_pieces[start + j] = -(-len(ids) // seq_len)
        prog.update(len(batch), tokens=n_encoded)
    prog.done()

    doc_len = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(doc_len.sum()))
    prompt_doc = np.array([cols["prompt"][i] is not None for i in rows], dtype=bool)
    piece_doc = np.repeat(np.arange(len(rows)), n_pieces)
    first_piece = np.cumsum(n_pieces) - n_pieces
    k = np.arange(len(piece_doc)) - first_piece[piece_doc]  # index of the piece in its doc
    piece_len = np.where(
        prompt_doc[piece_doc], doc_len[piece_doc], np.minimum(seq_len, doc_len[piece_doc] - k * seq_len)
    )
    piece_loss = loss_start[piece_doc]
    keep = (piece_len >= 2) & (piece_loss < piece_len)
    tokens = flat[np.repeat(keep, piece_len)]
    lengths = piece_len[keep]
    n = len(lengths)
    if n >= ID_STRIDE:
        raise ValueError("more than 2**32 examples in one shard: raise num_shards")
    src = pa.array(np.asarray(rows, dtype=np.int64)[piece_doc[keep]], type=pa.int64())
    ex = {
        "example_id": pa.array(shard * ID_STRIDE + np.arange(n, dtype=np.int64), type=pa.int64()),
        "doc_id": pa.array(cols["doc_id"], type=pa.string()).take(src),
        "shard": pa.array(np.full(n, shard, dtype=np.int32), type=pa.int32()),
        "offset": pa.array(np.cumsum(lengths) - lengths, type=pa.int64()),
        "length": pa.array(lengths.astype(np.int32), type=pa.int32()),
        "loss_start": pa.array(piece_loss[keep].astype(np.int32), type=pa.int32()),
        "loss_end": pa.array(lengths.astype(np.int32), type=pa.int32()),
        "domain": pa.array(cols["domain"], type=pa.string()).take(src),
        "split": pa.array(cols["split"], type=pa.string()).take(src),
    }
    return tokens, pa.table(ex, schema=EXAMPLES), _shard_stats(len(rows), keep, piece_len, lengths)


def _shard_stats(n_docs: int, keep: np.ndarray, piece_len: np.ndarray, lengths: np.ndarray) -> dict[str, int]:
    """A shard's counts from its pieces ``(n_pieces,)`` (kept or not, lengths) and the kept lengths."""
    # Counts under the keys the per-piece loop used to create (a key only once it was counted).
    stats: dict[str, int] = {}
    dropped = ~keep
    if n_docs:
        stats["docs"] = n_docs
    if dropped.any():
        stats["dropped_pieces"] = int(dropped.sum())
        stats["dropped_tokens"] = int(piece_len[dropped].sum())
    if len(lengths):
        stats["tokens"] = int(lengths.sum())
    stats["examples"] = len(lengths)
    return stats


def _batch_encoder(tokenizer):
    """``texts → [ids]``, as ``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)``.

    A fast tokenizer's Rust backend is called directly (the HF call wraps the same ``encode_batch``
    and converts every encoding to Python dicts first); other tokenizers, or a backend with
    truncation or padding set, go through the HF call.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return lambda texts: tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode(texts: list[str]) -> list[list[int]]:
        if backend.encode_special_tokens is not True:
            backend.encode_special_tokens = True
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    return encode


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
