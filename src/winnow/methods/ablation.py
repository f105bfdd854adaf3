"""Modular data ablations (Na et al. 2024, "ez-data-ablations"): partitions, mixtures, equal shares.

A *partition* is the set of examples whose value in one column (``domain`` by default) is its
name; a *mixture* is a set of ≥ 2 partitions, named by its sorted partition names joined with
``+`` (``kjv+pydocs``), so a name is a path component and parses back to its partitions. A
mixture model trains on an id list in which every partition has the same number of entries:
small partitions are repeated (whole copies, then a seeded sample of the remainder).

Nothing here imports torch: the workflow plans the DAG with these helpers at parse time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np

SEP = "+"
# Partition names are path components and wildcard values: no "+" (the mixture separator), no "/",
# and not "." or ".." (the lookahead: a folder name that would leave its parent).
NAME_PATTERN = r"(?!\.\.?(?![A-Za-z0-9_.-]))[A-Za-z0-9_.-]+"
MIXTURE_PATTERN = rf"{NAME_PATTERN}(?:\{SEP}{NAME_PATTERN})+"
SHORTHANDS = {"pairs": 2, "triples": 3}


def mixture_name(parts: Iterable[str]) -> str:
    """``["pydocs", "kjv"]`` → ``"kjv+pydocs"`` (sorted, so a mixture has one name)."""
    parts = sorted(set(parts))
    for p in parts:
        _check_name(p)
    if len(parts) < 2:
        raise ValueError(f"a mixture needs at least 2 distinct partitions, got {parts}")
    return SEP.join(parts)


def parse_mixture(name: str) -> list[str]:
    """``"kjv+pydocs"`` → ``["kjv", "pydocs"]``; refuses names that are not canonical."""
    parts = name.split(SEP)
    if mixture_name(parts) != name:
        raise ValueError(f"{name!r} is not a canonical mixture name (sorted, distinct, '{SEP}'-joined)")
    return parts


def expand_mixtures(spec, partitions: Sequence[str]) -> list[list[str]]:
    """The configured mixtures as sorted partition lists, without duplicates.

    ``spec`` is ``"pairs"``/``"triples"`` (all pairs/triples of ``partitions``) or a list whose
    items are such a string or an explicit list of partition names. Every named partition must be
    one of ``partitions``. Ordered by size, then name.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    known = set(partitions)
    out: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, str):
            if item not in SHORTHANDS:
                raise ValueError(f"unknown mixture shorthand {item!r}; use one of {sorted(SHORTHANDS)} or a list")
            combos = itertools.combinations(sorted(set(partitions)), SHORTHANDS[item])
        else:
            unknown = sorted(set(item) - known)
            if unknown:
                raise ValueError(f"mixture {list(item)} names {unknown}, which are not partitions {list(partitions)}")
            combos = [item]
        for combo in combos:
            name = mixture_name(combo)
            out[name] = sorted(combo)
    return [out[n] for n in sorted(out, key=lambda n: (len(out[n]), n))]


def _check_name(name: str) -> None:
    import re

    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"partition name {name!r} must match {NAME_PATTERN} (no '+', '/' or spaces; not '.' or '..')")


def partition_mask(values: Sequence, value: str) -> np.ndarray:
    """Boolean mask of the rows whose column value equals ``value`` (compared as strings)."""
    return np.asarray([v is not None and str(v) == value for v in values], dtype=bool)


def equal_shares(
    id_lists: Sequence[np.ndarray], seed: int, per_part: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """One id list in which each of ``id_lists`` contributes exactly ``per_part`` entries.

    ``per_part`` defaults to the largest list's size. A list of ``n`` ids contributes
    ``per_part // n`` whole copies plus a sample without replacement of ``per_part % n`` ids
    (``default_rng([seed, i])`` for the i-th list), so every id of a small partition appears
    ⌊per_part / n⌋ or ⌈per_part / n⌉ times and the shares are exactly 1/len(id_lists) each.

    Returns ``(ids (len(id_lists)·per_part,) int64, entries per list)``; the lists' blocks are
    concatenated in order (the trainer shuffles).
    """
    lists = [np.sort(np.asarray(ids, dtype=np.int64)) for ids in id_lists]
    if not lists:
        raise ValueError("no id lists given")
    for i, ids in enumerate(lists):
        if ids.size == 0:
            raise ValueError(f"id list {i} is empty")
    m = max(ids.size for ids in lists) if per_part is None else int(per_part)
    if m < 1:
        raise ValueError(f"per_part must be ≥ 1, got {m}")
    blocks = []
    for i, ids in enumerate(lists):
        full, rem = divmod(m, ids.size)
        extra = ids[np.random.default_rng([seed, i]).permutation(ids.size)[:rem]]
        blocks.append(np.concatenate([np.tile(ids, full), extra]))
    return np.concatenate(blocks), [b.size for b in blocks]
