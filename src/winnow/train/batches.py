"""Batches of examples read from token shards, in an order that is a pure function of the step.

Sample ``g`` of the run (g = step · batch_size + j) is the ``g mod n``-th id of the permutation
drawn for epoch ``g // n`` with ``default_rng([seed, epoch])`` (:func:`step_ids`: every step a full
batch, so a batch may straddle two epochs). A resumed run therefore sees exactly the samples an
uninterrupted run would, without saving a sampler state.

Epoch-aligned batches (:func:`epoch_step_ids`, what a PyTorch DataLoader without ``drop_last``
gives, as HF's Trainer uses): epoch e's same permutation cut into ⌈n/B⌉ batches, the last one
partial (n mod B ids when B does not divide n); step s is batch ``s mod ⌈n/B⌉`` of epoch
``s // ⌈n/B⌉``. When B divides n both orders are the same.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from winnow.io.shards import open_shard


class ExampleStore:
    """Random access to examples by ``example_id``.

    Args:
        examples: EXAMPLES table (may hold more examples than are used).
        shard_paths: ``{shard: path to tokens-{shard}.bin}``.
        dtype: token dtype of the shards (from the tokenized manifest).
    """

    def __init__(self, examples: pa.Table, shard_paths: dict[int, str | Path], dtype: str):
        # numpy columns and a sorted-id lookup, not Python lists and a dict: a pool of 10M examples
        # then costs ~0.5 GB and a second to index instead of several GB and a minute.
        cols = ["example_id", "shard", "offset", "length", "loss_start", "loss_end"]
        self.cols = {k: examples[k].to_numpy().astype(np.int64) for k in cols}
        ids = self.cols["example_id"]
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        if self._sorted.size > 1 and not np.all(np.diff(self._sorted) > 0):
            dup = self._sorted[np.flatnonzero(np.diff(self._sorted) == 0)[0]]
            raise ValueError(f"example id {int(dup)} appears more than once in the examples table")
        self.shards = {int(s): open_shard(p, dtype) for s, p in shard_paths.items()}

    def _row(self, example_id: int) -> int:
        j = int(np.searchsorted(self._sorted, example_id))
        if j == self._sorted.size or self._sorted[j] != example_id:
            raise KeyError(example_id)
        return int(self._order[j])

    def get(self, example_id: int) -> tuple[np.ndarray, int, int]:
        """``(tokens (length,) int64, loss_start, loss_end)`` of one example."""
        i = self._row(int(example_id))
        shard = int(self.cols["shard"][i])
        if shard not in self.shards:
            raise KeyError(f"example {example_id} lives in shard {shard}, which was not given")
        off, n = int(self.cols["offset"][i]), int(self.cols["length"][i])
        tokens = np.asarray(self.shards[shard][off : off + n], dtype=np.int64)
        return tokens, int(self.cols["loss_start"][i]), int(self.cols["loss_end"][i])

    def n_loss_tokens(self, example_id: int) -> int:
        """Positions that are predicted: i in [max(loss_start, 1), loss_end)."""
        i = self._row(int(example_id))
        return int(self.cols["loss_end"][i]) - max(int(self.cols["loss_start"][i]), 1)


def collate(store: ExampleStore, ids, seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``/``attention_mask``/``loss_mask`` all ``(b, seq_len)``.

    ``loss_mask[b, i]`` is 1 where token i is a training target (predicted from tokens < i).
    """
    b = len(ids)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    attention = torch.zeros((b, seq_len), dtype=torch.long)
    loss_mask = torch.zeros((b, seq_len), dtype=torch.bool)
    for r, eid in enumerate(ids):
        tokens, ls, le = store.get(eid)
        n = min(len(tokens), seq_len)
        input_ids[r, :n] = torch.from_numpy(tokens[:n])
        attention[r, :n] = 1
        loss_mask[r, max(ls, 1) : min(le, n)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}


def open_store(examples_path, manifest_path, extra: tuple | None = None, only_shards=None) -> tuple[ExampleStore, dict]:
    """The store of a tokenized corpus and its manifest; the shards' files come from the manifest.

    ``extra = (examples parquet, {shard: tokens file})`` adds examples that live outside the
    corpus, in the corpus's dtype (MATES's reference set). ``only_shards`` keeps the examples and
    files of those shards alone (a block's scoring job need not index the whole corpus).
    """
    from winnow.io.atomic import read_json
    from winnow.io.shards import shard_paths
    from winnow.io.tables import EXAMPLES, read_table

    manifest = read_json(manifest_path)
    paths = shard_paths(manifest, manifest_path)
    if only_shards is None:
        examples = read_table(examples_path, EXAMPLES)
    else:
        # The table is sorted by example_id, so by shard: a block's rows sit in few row groups.
        keep = sorted(int(s) for s in only_shards)
        examples = read_table(examples_path, EXAMPLES, filters=[("shard", "in", keep)])
        paths = {s: p for s, p in paths.items() if s in set(keep)}
    if extra is not None:
        examples = pa.concat_tables([examples, read_table(extra[0], EXAMPLES)])
        paths.update(extra[1])
    return ExampleStore(examples, paths, manifest["dtype"]), manifest


@lru_cache(maxsize=4)
def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def step_ids(ids: np.ndarray, step: int, batch_size: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The ``(batch_size,)`` example ids of optimizer step ``step``."""
    n = len(ids)
    g = np.arange(step * batch_size, (step + 1) * batch_size)
    epoch, pos = g // n, g % n
    if not shuffle:
        return ids[pos]
    return np.array([ids[_epoch_perm(seed, int(e), n)[p]] for e, p in zip(epoch, pos)], dtype=np.int64)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """⌈n / batch_size⌉: the optimizer steps of one epoch of epoch-aligned batches."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n ≥ 1 ids and batch_size ≥ 1, got {n} and {batch_size}")
    return -(-n // batch_size)


def epoch_step_ids(ids: np.ndarray, step: int, batch_size: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The example ids of optimizer step ``step`` of epoch-aligned batches: ``(batch_size,)``, or
    ``(n mod batch_size,)`` for the last step of an epoch when batch_size does not divide n."""
    n = len(ids)
    spe = steps_per_epoch(n, batch_size)
    epoch, k = divmod(step, spe)
    pos = np.arange(k * batch_size, min((k + 1) * batch_size, n))
    if not shuffle:
        return np.asarray(ids, dtype=np.int64)[pos]
    return np.asarray(ids, dtype=np.int64)[_epoch_perm(seed, int(epoch), n)[pos]]


def samples_before(n: int, step: int, batch_size: int, epoch_batches: bool = False) -> int:
    """Samples the steps before ``step`` trained on (the data position of a checkpoint at ``step``)."""
    if not epoch_batches:
        return step * batch_size
    epoch, k = divmod(step, steps_per_epoch(n, batch_size))
    return epoch * n + k * batch_size
