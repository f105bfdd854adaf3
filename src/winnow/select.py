"""Scores → selected example ids (shared by every method).

Top-k over a *goodness* g = score (direction "higher") or g = −score ("lower"). Temperature τ = 0:
deterministic top-k, ties broken by smaller ``example_id``. τ > 0: Gumbel-top-k, an exact sample of
k items without replacement from softmax(g/τ) (keys g_i/τ + G_i, G_i ~ Gumbel(0, 1), the k
largest; Kool et al. 2019), not the reversed-noise variant of MATES's released code. Noise is drawn
in ``example_id`` order from ``numpy.random.default_rng(seed)``, so the result does not depend on
the row order of the scores table.

See docs/methods/README.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class SelectParams:
    direction: str = "higher"
    ratio: float | None = None
    k: int | None = None
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if (self.ratio is None) == (self.k is None):
            raise ValueError("give exactly one of ratio or k")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be ≥ 1, got {self.k}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be finite and ≥ 0, got {self.temperature}")

    def as_dict(self) -> dict:
        return asdict(self)

    def count(self, n: int, key: str | None = None) -> int:
        """k of a pool of n: ``k`` (at most n) or ⌊ratio · n⌋. A count of 0 (ratio · n < 1, or an
        empty pool) is an error naming ``key``, the config key of the ratio or k (e.g.
        ``select.pds.ratio``): it would select nothing and train on nothing, silently."""
        k = self.k if self.k is not None else int(math.floor(self.ratio * n))
        k = max(0, min(k, n))
        if k == 0:
            size = self.k if self.k is not None else self.ratio
            raise ValueError(f"{key or ('k' if self.k is not None else 'ratio')}: {size} of {n} pool examples keeps 0")
        return k


def select(
    example_ids: np.ndarray, scores: np.ndarray, params: SelectParams, key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``params.count(n)`` ids.

    Args:
        example_ids: ``(n,)`` int64, unique.
        scores: ``(n,)`` float; NaN scores are never selected.
        key: the config key of the ratio or k, named in the error when the count is 0.
    Returns:
        ``(ids, keys)``: ``(k,)`` int64 ids ordered best first, and their ``(k,)`` float64 keys.
    """
    example_ids = np.asarray(example_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if example_ids.shape != scores.shape or example_ids.ndim != 1:
        raise ValueError("example_ids and scores must be 1-D and of equal length")
    if np.unique(example_ids).size != example_ids.size:
        raise ValueError("example_ids are not unique")
    order = np.argsort(example_ids, kind="stable")
    ids, goodness = example_ids[order], scores[order]
    if params.direction == "lower":
        goodness = -goodness
    valid = np.isfinite(goodness)
    keys = np.full(ids.shape, -np.inf)
    if params.temperature > 0:
        rng = np.random.default_rng(params.seed)
        gumbel = rng.gumbel(size=ids.shape)  # drawn for every id so NaNs don't shift the others' noise
        keys[valid] = goodness[valid] / params.temperature + gumbel[valid]
    else:
        keys[valid] = goodness[valid]
    k = min(params.count(ids.size, key), int(valid.sum()))
    # lexsort: last key is primary. Sort by key descending, then example_id ascending.
    ranked = np.lexsort((ids, -keys))[:k]
    return ids[ranked], keys[ranked]
