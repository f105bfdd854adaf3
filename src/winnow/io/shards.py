"""Packed token shards: one flat little-endian integer array per shard (``tokens-{shard}.bin``).

The examples table says where each example lives (shard, offset, length); the dtype is the
smallest unsigned type that holds the vocabulary and is recorded in the tokenized manifest.
Readers memory-map the file, so a trainer touches only the tokens it uses.
"""

from __future__ import annotations

import os

import numpy as np

from winnow.io.atomic import atomic_path


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def write_shard(path: str | os.PathLike, tokens: np.ndarray, dtype: np.dtype) -> None:
    """Write ``tokens`` (1-D, any int dtype) as ``dtype``; refuses ids that do not fit."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        raise ValueError(f"token ids out of range for {dtype}")
    with atomic_path(path) as tmp:
        tokens.astype(dtype, copy=False).tofile(tmp)


def open_shard(path: str | os.PathLike, dtype: np.dtype | str) -> np.ndarray:
    """Memory-map a shard read-only; shape ``(n_tokens,)``."""
    dtype = np.dtype(dtype)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
