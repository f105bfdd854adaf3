"""Statistics used across Winnow: correlations and the paired bootstrap of method-vs-baseline
differences. One module, backed by scipy (pinned in requirements.txt, envs/winnow.yaml and
pyproject.toml; imported without a fallback), so every table follows the same edge rules.

Edge rules: a correlation of fewer than 3 points or of a constant input is nan (two points always
correlate ±1; a constant has no ranks to compare); inputs that are not two 1-d arrays of one
length raise ValueError; a NaN among the inputs gives nan (scipy's propagation). A bootstrap
whose resampled differences are all equal (e.g. identical models) has the zero-width interval at
that value.

See docs/statistics.md for the definitions and why items (not seeds) are resampled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


def rankdata(x) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata as _rankdata

    return np.asarray(_rankdata(np.asarray(x, dtype=np.float64), method="average"), dtype=np.float64)


def _usable(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-d arrays of one length, got {x.shape} and {y.shape}")
    return x.size >= 3 and not np.all(x == x[0]) and not np.all(y == y[0])


def pearson(x, y) -> float:
    """Pearson's r (``scipy.stats.pearsonr``); nan for < 3 points or a constant input."""
    from scipy.stats import pearsonr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(pearsonr(x, y).statistic) if _usable(x, y) else float("nan")


def spearman(x, y) -> float:
    """Spearman's ρ with average ranks for ties (``scipy.stats.spearmanr``); nan as :func:`pearson`."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(spearmanr(x, y).statistic) if _usable(x, y) else float("nan")


# ------------------------------------------------------------------------------ item-level metrics
@dataclass(frozen=True)
class ItemMetric:
    """A metric computed from per-item numbers: ``value = transform(Σ num / Σ den)``.

    ``ids``: item keys (str), one per item; ``num``, ``den``: float64 ``(n,)``. A mean over items
    (loss, accuracy) has ``den`` all ones and ``transform`` ``"identity"``; token perplexity has
    ``num`` = −log-likelihood (nats) and ``den`` = tokens per document, ``transform`` ``"exp"``.
    """

    ids: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray
    transform: str = "identity"

    def value(self) -> float:
        return float(TRANSFORMS[self.transform](np.asarray(self.num.sum() / self.den.sum())))


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda r: r,
    "exp": np.exp,
}


def mean_metric(ids: Sequence, values: Sequence[float], transform: str = "identity") -> ItemMetric:
    values = np.asarray(values, dtype=np.float64)
    return ItemMetric(tuple(map(str, ids)), values, np.ones_like(values), transform)


@dataclass(frozen=True)
class Interval:
    """``diff`` = mean over seeds of (method − baseline); ``[low, high]`` its bootstrap interval."""

    diff: float
    low: float
    high: float
    n_items: int
    n_seeds: int


def paired_bootstrap(
    method: Sequence[ItemMetric],
    baseline: Sequence[ItemMetric],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """The difference method − baseline with a paired bootstrap interval over evaluation items.

    ``method[s]`` and ``baseline[s]`` are the same metric of the two models trained with seed s
    (same seed = same training seed, steps and evaluation items). Items are matched by id; only
    ids present in every model are used. The statistic is the mean over seeds of
    ``metric(method_s) − metric(baseline_s)``, each computed on one resample of the items (the
    same resample for every model and seed: paired). scipy's BCa interval
    (``scipy.stats.bootstrap``, fixed ``seed``), so a rerun gives the same numbers.

    Seeds are averaged, not resampled: with the two or three seeds a run has, resampling them
    would give an interval of a handful of values. The per-seed differences are reported beside.
    """
    from scipy.stats import bootstrap

    if len(method) != len(baseline) or not method:
        raise ValueError(f"need one method and one baseline metric per seed, got {len(method)}/{len(baseline)}")
    transforms = {m.transform for m in [*method, *baseline]}
    if len(transforms) != 1:
        raise ValueError(f"one metric must have one transform, got {sorted(transforms)}")
    g = TRANSFORMS[transforms.pop()]
    common = set(method[0].ids)
    for m in [*method, *baseline]:
        common &= set(m.ids)
    ids = sorted(common)
    if len(ids) < 2:
        raise ValueError(f"need ≥ 2 items shared by every model, got {len(ids)}")

    def aligned(ms: Sequence[ItemMetric], field: str) -> np.ndarray:
        out = []
        for m in ms:
            pos = {k: i for i, k in enumerate(m.ids)}
            out.append(getattr(m, field)[[pos[k] for k in ids]])
        return np.stack(out)  # (seeds, items)

    num_m, den_m = aligned(method, "num"), aligned(method, "den")
    num_b, den_b = aligned(baseline, "num"), aligned(baseline, "den")
    unit_den = bool(np.all(den_m == 1) and np.all(den_b == 1))

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        # idx: (..., m) item indices of resamples; sums over the items of each resample.
        idx = np.asarray(idx, dtype=np.int64)

        def metric(num, den):
            # A mean over items (den all ones) needs no second gather: half the work.
            total = idx.shape[-1] if unit_den else den[:, idx].sum(axis=-1)
            return g(num[:, idx].sum(axis=-1) / total)  # (seeds, ...)

        return (metric(num_m, den_m) - metric(num_b, den_b)).mean(axis=0)

    point = float(statistic(np.arange(len(ids))))
    with warnings.catch_warnings():
        # Identical models give a degenerate distribution (BCa is then undefined): handled below.
        warnings.simplefilter("ignore")
        res = bootstrap(
            (np.arange(len(ids)),),
            statistic,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution)
    if not (math.isfinite(low) and math.isfinite(high)):
        if np.ptp(dist) == 0:
            low = high = float(dist[0])
        else:  # BCa undefined on a near-degenerate distribution: fall back to percentiles
            alpha = (1 - confidence) / 2
            low, high = (float(q) for q in np.quantile(dist, [alpha, 1 - alpha]))
    return Interval(point, low, high, len(ids), len(method))


def verdict(low: float, high: float, lower_is_better: bool) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no detectable difference``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "NA"
    if low <= 0 <= high:
        return NO_DIFFERENCE
    improved = high < 0 if lower_is_better else low > 0
    return BETTER if improved else WORSE
