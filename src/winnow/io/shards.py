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


# Token shards are grouped into blocks: a block is the shards one job writes (tokenize) or reads
# (score_pool), so the workflow's job count follows the number of blocks, not of shards (issue 9:
# 10,000 per-shard jobs made a dry run take minutes). On disk a block is one folder.
BLOCK_LAYOUT = "block-{block}/tokens-{shard}.bin"
FLAT_LAYOUT = "tokens-{shard}.bin"


def num_blocks(num_shards: int, shards_per_block: int) -> int:
    return -(-num_shards // shards_per_block)


def block_shards(block: int, shards_per_block: int, num_shards: int) -> range:
    """The shards of ``block``: ``[block·spb, min((block+1)·spb, num_shards))``."""
    if not 0 <= block < num_blocks(num_shards, shards_per_block):
        raise ValueError(f"block {block} does not exist ({num_shards} shards, {shards_per_block} a block)")
    return range(block * shards_per_block, min((block + 1) * shards_per_block, num_shards))


def layout_entry(layout: str, shards_per_block: int, num_shards: int) -> dict:
    """The manifest's ``layout``: where each shard's tokens live, relative to the manifest's folder."""
    return {"tokens": layout, "shards_per_block": shards_per_block, "num_shards": num_shards}


def shard_paths(manifest: dict, manifest_path: str | os.PathLike) -> dict[int, str]:
    """``{shard: tokens file}`` of every shard that holds examples, from a tokenized manifest.

    Readers take the manifest instead of a list of shard files: with thousands of shards a list
    in one command line exceeds the kernel's 128 KiB limit on one argument (E2BIG).
    """
    layout = manifest.get("layout") or layout_entry(FLAT_LAYOUT, 1, 0)
    spb = int(layout["shards_per_block"])
    root = os.path.dirname(os.fspath(manifest_path))
    return {
        int(s): os.path.join(root, layout["tokens"].format(shard=int(s), block=int(s) // spb))
        for s in manifest["shards"]
    }
