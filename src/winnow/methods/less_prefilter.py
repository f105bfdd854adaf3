"""The LESS prefilter (``less.predictor.mode``): exact gradient features for a fitted sample and the
predicted top of the rest only.

:func:`prefilter_fit_ids` (S, a seeded sample of the pool), :func:`prefilter_top_ids` (T, the
best-predicted ``featurize_fraction`` outside S), :func:`prefilter_scores` (exact on S ∪ T, the rest
ranked below them by prediction) and :func:`prefilter_comparison` (recall of the exact top-k and
Spearman correlations, when the whole pool's features exist). Winnow's addition, not part of the
LESS paper; see docs/methods/less.md.
"""

from __future__ import annotations

import math

import numpy as np


def prefilter_fit_ids(pool_ids, fraction: float, seed: int) -> np.ndarray:
    """S: the seeded sample of the pool the predictor is fitted on, sorted by example id.

    |S| = round(fraction · N), at least 2 (a ridge fit needs two points) and at most N, drawn by
    :func:`winnow.data.subsets.sample_ids` from the sorted pool: S does not depend on the pool's
    row order, and it is the sample ``less predict`` fits on.
    """
    from winnow.data.subsets import sample_ids

    pool = np.sort(np.asarray(pool_ids, dtype=np.int64))
    if pool.size < 2:
        raise ValueError(f"a pool of {pool.size} examples: the predictor needs at least 2")
    if not 0 < fraction <= 1:
        raise ValueError(f"fit fraction must be in (0, 1], got {fraction}")
    n = min(pool.size, max(2, int(round(fraction * pool.size))))
    return np.sort(sample_ids(pool, seed, n=n))


def _best_first(ids: np.ndarray, scores) -> np.ndarray:
    """Row order, best first: higher score first, ties by smaller example id, NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    return np.lexsort((ids, -np.where(np.isnan(s), -np.inf, s)))


def prefilter_top_ids(pool_ids, predicted, fit_ids, fraction: float) -> np.ndarray:
    """T: the pool examples outside S with the highest predictions, best first (int64).

    |T| = ⌊fraction · N⌋ with N the whole pool (a fraction of the pool, like the selection ratio),
    capped at the N − |S| examples outside S and at least 1 while any is left. Ties in
    ``predicted`` (aligned with ``pool_ids``): smaller example id first.
    """
    pool = np.asarray(pool_ids, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.float64)
    if pool.shape != pred.shape or pool.ndim != 1:
        raise ValueError(f"pool ids {pool.shape} and predictions {pred.shape} do not match")
    if not 0 < fraction <= 1:
        raise ValueError(f"featurize fraction must be in (0, 1], got {fraction}")
    rest = ~np.isin(pool, np.asarray(fit_ids, dtype=np.int64))
    n_rest = int(rest.sum())
    n = min(n_rest, max(1 if n_rest else 0, int(math.floor(fraction * pool.size))))
    ids, p = pool[rest], pred[rest]
    return ids[_best_first(ids, p)[:n]]


def prefilter_scores(pool_ids, exact_ids, exact_scores, predicted) -> np.ndarray:
    """The prefilter's score of every pool example: ``(N,)`` float64 in ``pool_ids`` order.

    Featurised examples (``exact_ids``, S ∪ T) keep their exact LESS score. The R others are
    ranked by ``predicted`` (aligned with ``pool_ids``; ties: smaller example id first) and the one
    at rank r (0 = best) gets lo − 1 − r / R, with lo the lowest exact score: each lies below every
    exact score, in the predicted order. So a deterministic top-k takes featurised examples only
    while k ≤ |S ∪ T|, and beyond that the best-predicted rest. These values are ranks, not LESS
    scores; they stay distinct in float32 for R up to ~4·10⁶ (spacing 1/R at magnitude < 4).
    Ties among exact scores are left to the selection (smaller example id first).
    """
    pool = np.asarray(pool_ids, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.float64)
    ex_ids = np.asarray(exact_ids, dtype=np.int64)
    ex = np.asarray(exact_scores, dtype=np.float64)
    if pool.shape != pred.shape or ex_ids.shape != ex.shape:
        raise ValueError("pool ids / predictions or exact ids / scores differ in length")
    if np.unique(ex_ids).size != ex_ids.size:
        raise ValueError("exact ids are not unique")
    pos = {int(e): i for i, e in enumerate(pool.tolist())}
    missing = [int(e) for e in ex_ids if int(e) not in pos]
    if missing:
        raise ValueError(f"{len(missing)} exact ids are not in the pool, e.g. {missing[:3]}")
    if not np.isfinite(ex).any():
        raise ValueError("no finite exact score")
    out = np.empty(pool.size, dtype=np.float64)
    known = np.zeros(pool.size, dtype=bool)
    rows = np.asarray([pos[int(e)] for e in ex_ids], dtype=np.int64)
    out[rows] = ex
    known[rows] = True
    rest = np.flatnonzero(~known)
    if rest.size:
        order = rest[_best_first(pool[rest], pred[rest])]
        lo = float(np.nanmin(ex[np.isfinite(ex)]))
        out[order] = lo - 1.0 - np.arange(rest.size, dtype=np.float64) / rest.size
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman ρ (winnow.stats); None (JSON null) where it is undefined."""
    from winnow.stats import spearman

    rho = spearman(a, b)
    return rho if math.isfinite(rho) else None


def prefilter_comparison(pool_ids, exact, prefilter, predict_only, featurised, fit, ratio: float) -> dict:
    """The prefilter against full featurisation, all arrays aligned with ``pool_ids``.

    Args:
        exact: exact LESS scores of the whole pool (full featurisation).
        prefilter: :func:`prefilter_scores`.
        predict_only: exact on S, predicted elsewhere (``less predict``'s path: no exact refinement).
        featurised, fit: boolean masks of S ∪ T and of S.
        ratio: the selection ratio (select.less), k = ⌊ratio · N⌋.
    Top-k sets come from the shared selection code (deterministic, ties: smaller example id).
    recall_at_k = |top-k(scores) ∩ top-k(exact)| / k; recall_ceiling: the share of the exact top-k
    that was featurised (the most any refinement of S ∪ T alone can recover).
    """
    from winnow.select import SelectParams, select

    pool = np.asarray(pool_ids, dtype=np.int64)
    arrays = [np.asarray(a, dtype=np.float64) for a in (exact, prefilter, predict_only)]
    exact, prefilter, predict_only = arrays
    featurised = np.asarray(featurised, dtype=bool)
    fit = np.asarray(fit, dtype=bool)
    if any(a.shape != pool.shape for a in (*arrays, featurised, fit)):
        raise ValueError("every array must be aligned with pool_ids")
    params = SelectParams(direction="higher", ratio=ratio, temperature=0.0)
    k = params.count(pool.size)

    def top(s):
        return set(select(pool, s, params)[0].tolist())

    want = top(exact)

    def recall(s):
        return len(top(s) & want) / k if k else None

    f, rest = featurised, ~fit
    return {
        "k": k,
        "recall_ceiling": len(want & set(pool[featurised].tolist())) / k if k else None,
        "random_expected": k / pool.size if pool.size else None,
        "prefilter": {
            "recall_at_k": recall(prefilter),
            "spearman_pool": _spearman(prefilter, exact),
            "spearman_featurised": _spearman(prefilter[f], exact[f]),
            "max_abs_diff_featurised": float(np.abs(prefilter[f] - exact[f]).max()) if f.any() else None,
        },
        "predict_only": {
            "recall_at_k": recall(predict_only),
            "spearman_pool": _spearman(predict_only, exact),
            "spearman_predicted": _spearman(predict_only[rest], exact[rest]),
        },
    }
