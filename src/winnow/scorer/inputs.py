"""The scorer's inputs: token lists per example from the corpus store or re-encoded with the
scorer's own tokenizer, and the round-trip check of that re-encoding."""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from winnow.io.tables import read_table, write_table
from winnow.progress import Progress
from winnow.train.batches import ExampleStore

log = logging.getLogger(__name__)

Encoder = Callable[[int], Sequence[int]]


TOKEN_LISTS = pa.schema([("example_id", pa.int64()), ("tokens", pa.list_(pa.int32()))])


# --------------------------------------------------------------------------------------------
# inputs


def store_encoder(store: ExampleStore, max_len: int) -> Encoder:
    """example_id → the example's corpus tokens, truncated to ``max_len``."""

    def encode(example_id: int) -> np.ndarray:
        return store.get(example_id)[0][:max_len]

    return encode


def input_encoder(store: ExampleStore | None, encoder: Encoder | None, max_len: int) -> tuple[Encoder, str]:
    """``(encoder, inputs)``: the given encoder ("encoder") or the store's tokens ("store")."""
    if encoder is not None:
        return encoder, "encoder"
    if store is None:
        raise ValueError("give a store or an encoder")
    return store_encoder(store, max_len), "store"


def _special_frame(tok) -> tuple[list[int], int | None, list[int]]:
    """``(prefix, separator, suffix)`` ids a scorer tokenizer wraps a chunk in.

    BERT-style (has a CLS token): ``[CLS] piece [SEP] piece … [SEP]``. Decoder-style: a BOS
    prefix only if it differs from EOS (fairseq/Llama ``<s>``; GPT-2/Pythia have BOS = EOS),
    pieces joined by EOS where the corpus had its EOS — PDS's recipe.
    """
    cls_id = getattr(tok, "cls_token_id", None)
    sep_id = getattr(tok, "sep_token_id", None)
    eos_id = getattr(tok, "eos_token_id", None)
    bos_id = getattr(tok, "bos_token_id", None)
    if cls_id is not None:
        sep = sep_id if sep_id is not None else eos_id
        return [cls_id], sep, ([sep] if sep is not None else [])
    prefix = [bos_id] if bos_id is not None and bos_id != eos_id else []
    return prefix, (eos_id if eos_id is not None else sep_id), []


def _retokenize_batch(
    token_lists: list[np.ndarray], src_tokenizer, dst_tokenizer, max_len: int | None
) -> list[list[int]]:
    """Corpus token lists → scorer token lists (see :func:`retokenize`)."""
    src_eos = src_tokenizer.eos_token_id
    prefix, sep, suffix = _special_frame(dst_tokenizer)
    pieces: list[list[int]] = []
    counts: list[int] = []
    for tokens in token_lists:
        tokens = np.asarray(tokens, dtype=np.int64)
        cuts = np.flatnonzero(tokens == src_eos) if src_eos is not None else np.zeros(0, dtype=np.int64)
        parts = np.split(tokens, cuts)
        # np.split keeps each EOS at the head of the following part; drop it (it becomes ``sep``).
        parts = [parts[0]] + [p[1:] for p in parts[1:]]
        pieces.extend(p.tolist() for p in parts)
        counts.append(len(parts))
    texts = src_tokenizer.batch_decode(pieces, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    nonempty = [i for i, t in enumerate(texts) if t]
    encoded: list[list[int]] = [[] for _ in texts]
    if nonempty:
        enc = dst_tokenizer([texts[i] for i in nonempty], add_special_tokens=False)["input_ids"]
        for i, ids in zip(nonempty, enc):
            encoded[i] = list(ids)
    out = []
    k = 0
    for n in counts:
        body: list[int] = []
        for j in range(n):
            if j and sep is not None:
                body.append(sep)
            body.extend(encoded[k + j])
        k += n
        if max_len is not None:
            body = body[: max(max_len - len(prefix) - len(suffix), 0)]
        out.append(prefix + body + suffix)
    return out


def retokenize(
    store: ExampleStore,
    ids: Iterable[int],
    src_tokenizer,
    dst_tokenizer,
    max_len: int | None,
    chunk: int = 1024,
    log_every_s: float = 10.0,
) -> dict[int, list[int]]:
    """Re-encode corpus examples with the scorer's tokenizer, keyed by ``example_id``.

    Each example's corpus tokens are split at the corpus EOS, each piece is decoded to text and
    re-encoded with ``dst_tokenizer``, the pieces are joined with the scorer's EOS (or SEP), the
    scorer's framing tokens are added (see ``_special_frame``) and the result is truncated to
    ``max_len`` (framing kept).
    """
    ids = [int(e) for e in ids]
    out: dict[int, list[int]] = {}
    prog = Progress("retokenize", total=len(ids), unit="examples", interval_s=log_every_s)
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        lists = _retokenize_batch([store.get(e)[0] for e in batch], src_tokenizer, dst_tokenizer, max_len)
        out.update(zip(batch, lists))
        prog.update(len(batch), tokens=sum(len(t) for t in lists))
    prog.done()
    return out


def dict_encoder(mapping: dict[int, Sequence[int]], max_len: int | None = None) -> Encoder:
    """Encoder over precomputed token lists (e.g. :func:`retokenize`'s output)."""

    def encode(example_id: int) -> Sequence[int]:
        tokens = mapping[int(example_id)]
        return tokens[:max_len] if max_len is not None else tokens

    return encode


def write_token_lists(path: str | os.PathLike, mapping: dict[int, Sequence[int]]) -> None:
    """Retokenized inputs as parquet (example_id int64, tokens list<int32>), sorted by id."""
    keys = sorted(mapping)
    table = pa.table(
        {
            "example_id": pa.array(keys, pa.int64()),
            "tokens": pa.array([list(mapping[k]) for k in keys], pa.list_(pa.int32())),
        }
    )
    write_table(path, table, TOKEN_LISTS)


def read_token_lists(path: str | os.PathLike) -> dict[int, list[int]]:
    t = read_table(path, TOKEN_LISTS).to_pydict()
    return dict(zip(t["example_id"], t["tokens"]))


_WS = re.compile(r"\s+")


def _normalise_text(text: str, mode: str) -> str:
    if mode == "none":
        return text
    if mode == "whitespace":
        return _WS.sub(" ", text).strip()
    if mode == "loose":  # uncased scorers (bert-base-uncased) and WordPiece's spaces around punctuation
        return _WS.sub("", text).lower()
    raise ValueError(f"normalize {mode!r}: one of none | whitespace | loose")


def roundtrip_check(
    store: ExampleStore,
    ids: Sequence[int],
    src_tokenizer,
    dst_tokenizer,
    n: int = 64,
    seed: int = 0,
    threshold: float = 0.9,
    normalize: str = "whitespace",
    max_len: int | None = None,
) -> dict:
    """Does re-encoding keep the text? Compare decode(src) with decode(dst(encode(text))).

    On ``n`` ids drawn with ``default_rng(seed)`` (without replacement), the corpus text
    ``src.decode(tokens)`` and the scorer's view ``dst.decode(retokenized)`` (special tokens
    skipped, retokenized *without* truncation so only the tokenizers are tested) are compared with
    ``difflib.SequenceMatcher(...).ratio()`` after ``normalize`` (none | whitespace | loose);
    ratio ≥ ``threshold`` passes. ``truncated`` tells whether ``max_len`` would cut the example.

    Returns: ``{"passed", "threshold", "normalize", "seed", "n_checked", "n_failed", "min_ratio",
    "mean_ratio", "truncated_frac", "samples": [{example_id, ratio, passed, src_chars, dst_chars,
    src_tokens, dst_tokens, truncated}]}`` (samples in the order of ``ids``).
    """
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    samples = []
    for eid in ids[pick].tolist():
        tokens = store.get(eid)[0]
        dst_ids = _retokenize_batch([tokens], src_tokenizer, dst_tokenizer, None)[0]
        a = src_tokenizer.decode(tokens.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        b = dst_tokenizer.decode(dst_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        na, nb = _normalise_text(a, normalize), _normalise_text(b, normalize)
        ratio = 1.0 if na == nb else difflib.SequenceMatcher(None, na, nb).ratio()
        samples.append(
            {
                "example_id": int(eid),
                "ratio": float(ratio),
                "passed": bool(ratio >= threshold),
                "src_chars": len(a),
                "dst_chars": len(b),
                "src_tokens": len(tokens),
                "dst_tokens": len(dst_ids),
                "truncated": bool(max_len is not None and len(dst_ids) > max_len),
            }
        )
    ratios = np.array([s["ratio"] for s in samples], dtype=np.float64)
    n_failed = sum(not s["passed"] for s in samples)
    result = {
        "passed": bool(samples) and n_failed == 0,
        "threshold": threshold,
        "normalize": normalize,
        "seed": seed,
        "n_checked": len(samples),
        "n_failed": n_failed,
        "min_ratio": float(ratios.min()) if len(ratios) else float("nan"),
        "mean_ratio": float(ratios.mean()) if len(ratios) else float("nan"),
        "truncated_frac": float(np.mean([s["truncated"] for s in samples])) if samples else 0.0,
        "samples": samples,
    }
    log.info(
        "round-trip check: %d/%d pass (min ratio %.3f, mean %.3f)",
        len(samples) - n_failed,
        len(samples),
        result["min_ratio"],
        result["mean_ratio"],
    )
    return result


def tokenizer_info(tokenizer) -> dict | None:
    if tokenizer is None:
        return None
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "pad_id": tokenizer.pad_token_id,
        "eos_id": tokenizer.eos_token_id,
        "bos_id": getattr(tokenizer, "bos_token_id", None),
        "cls_id": getattr(tokenizer, "cls_token_id", None),
    }
