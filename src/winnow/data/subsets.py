"""Seeded id lists drawn from the examples table (proxy samples, warm-up subsets, pools, partitions).

Sampling is uniform without replacement among the examples that pass the filters; the ids are
sorted by ``example_id`` first so the result does not depend on the table's row order.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.io.tables import IDS


def filter_examples(examples: pa.Table, splits=None, domains=None, exclude_ids=None) -> np.ndarray:
    """Sorted ``(n,)`` int64 example ids whose split/domain are in the given lists."""
    mask = pa.array(np.ones(examples.num_rows, dtype=bool))
    if splits:
        mask = pc.and_(mask, pc.is_in(examples["split"], pa.array(list(splits))))
    if domains:
        mask = pc.and_(mask, pc.is_in(examples["domain"], pa.array(list(domains))))
    ids = np.sort(examples.filter(mask)["example_id"].to_numpy())
    if exclude_ids is not None and len(exclude_ids):
        ids = ids[~np.isin(ids, np.asarray(exclude_ids, dtype=np.int64))]
    return ids


def sample_ids(
    ids: np.ndarray,
    seed: int,
    n: int | None = None,
    fraction: float | None = None,
    key: str = "fraction",
    what: str = "matching",
) -> np.ndarray:
    """Uniform sample without replacement; ``(k,)`` int64 in sampled order.

    k = ``n``, or ⌊fraction · len(ids)⌋; a fraction that keeps no id is an error that names ``key``
    (the config key the fraction came from, e.g. ``subsets.pool.fraction``)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    k = n if n is not None else int(math.floor(fraction * ids.size))
    if k < 0 or (fraction is not None and fraction < 0):  # ids[perm[:-m]] would quietly drop m
        raise ValueError(f"n and fraction must be ≥ 0, got n={n}, fraction={fraction}")
    if fraction is not None and k == 0:
        raise ValueError(f"{key}: {fraction} of {ids.size} {what} examples keeps 0")
    if k > ids.size:
        raise ValueError(f"asked for {k} ids but only {ids.size} examples match")
    rng = np.random.default_rng(seed)
    return ids[rng.permutation(ids.size)[:k]]


def draw_subset(
    ids: np.ndarray, seed: int, n: int | None = None, fraction: float | None = None, key: str = "subset"
) -> np.ndarray:
    """``sample_ids`` for a named subset, which is never empty: no matching example, a count < 1
    or more than match is an error naming ``key`` (the config key of the size) and the pool size."""
    size = np.asarray(ids).size
    if size == 0:
        raise ValueError(f"{key}: no example matches the subset's splits and domains: an empty subset")
    if n is not None and n < 1:
        raise ValueError(f"{key}: {n} examples asked: a subset is never empty ({size} match)")
    if n is not None and n > size:
        raise ValueError(f"{key}: {n} examples asked, {size} match the subset's splits and domains")
    return sample_ids(ids, seed, n=n, fraction=fraction, key=key)


def ids_table(ids: np.ndarray) -> pa.Table:
    ids = np.asarray(ids, dtype=np.int64)
    return pa.table({"example_id": ids, "rank": np.arange(ids.size, dtype=np.int64)}, schema=IDS)


def partition_ids(ids: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint seeded draws of the given sizes (e.g. MATES's per-stage pools and probe pool).

    Returns one ``(sizes[i],)`` int64 array per size, each sorted by ``example_id``.
    """
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if any(s < 0 for s in sizes):
        raise ValueError(f"sizes must be ≥ 0, got {sizes}")
    if sum(sizes) > ids.size:
        raise ValueError(f"asked for {sum(sizes)} ids in disjoint parts but only {ids.size} are available")
    perm = ids[np.random.default_rng(seed).permutation(ids.size)]
    out, start = [], 0
    for s in sizes:
        out.append(np.sort(perm[start : start + s]))
        start += s
    return out
