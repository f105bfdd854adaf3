"""winnow.stats: the paired bootstrap against scipy run directly, verdicts, and correlations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from winnow.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    ItemMetric,
    mean_metric,
    paired_bootstrap,
    pearson,
    rankdata,
    spearman,
    verdict,
)


def _pair(seed: int, n: int = 120, shift: float = 0.0, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    base = rng.normal(5.0, 1.0, n)
    return base + shift + rng.normal(0.0, noise, n), base


def test_one_seed_mean_metric_equals_scipy_on_the_differences():
    """A mean metric of one seed: the item-index bootstrap is scipy's bootstrap of the paired
    differences themselves (same generator seed, so the same resamples)."""
    m, b = _pair(0, shift=-0.05)
    ids = [f"x{i:03d}" for i in range(m.size)]  # sorted order = array order
    ci = paired_bootstrap([mean_metric(ids, m)], [mean_metric(ids, b)], n_resamples=2000, seed=7)
    ref = sps.bootstrap(
        (m - b,), np.mean, n_resamples=2000, confidence_level=0.95, method="BCa", rng=np.random.default_rng(7)
    )
    assert ci.diff == pytest.approx(float(np.mean(m - b)), abs=1e-12)
    assert ci.low == pytest.approx(ref.confidence_interval.low, abs=1e-10)
    assert ci.high == pytest.approx(ref.confidence_interval.high, abs=1e-10)
    assert ci.n_items == m.size and ci.n_seeds == 1


def test_ratio_metric_resamples_numerator_and_denominator_together():
    """Token perplexity exp(Σnll/Σtokens): the statistic of the resampled documents, checked
    against scipy's paired bootstrap of the four arrays with a hand-written statistic."""
    rng = np.random.default_rng(3)
    n = 40
    tokens = rng.integers(20, 400, n).astype(float)
    nll_b = tokens * rng.normal(4.0, 0.3, n)
    nll_m = nll_b + tokens * rng.normal(0.05, 0.05, n)
    ids = [f"d{i:02d}" for i in range(n)]
    ci = paired_bootstrap(
        [ItemMetric(tuple(ids), nll_m, tokens, "exp")], [ItemMetric(tuple(ids), nll_b, tokens, "exp")], seed=1
    )

    def stat(a, b, t, axis=-1):
        return np.exp(a.sum(axis) / t.sum(axis)) - np.exp(b.sum(axis) / t.sum(axis))

    ref = sps.bootstrap(
        (nll_m, nll_b, tokens), stat, paired=True, vectorized=True, method="BCa", rng=np.random.default_rng(1)
    )
    assert ci.diff == pytest.approx(math.exp(nll_m.sum() / tokens.sum()) - math.exp(nll_b.sum() / tokens.sum()))
    assert ci.low == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert ci.high == pytest.approx(ref.confidence_interval.high, rel=1e-9)
    assert ci.low > 0  # a 5% per-token loss increase on 40 documents is detectable


def test_zero_effect_says_no_detectable_difference():
    """Two seeds, method = baseline + zero-mean item noise: the interval covers 0."""
    pairs = [_pair(s, n=200, shift=0.0, noise=0.5) for s in (10, 11)]
    ids = list(range(200))
    ms = [mean_metric(ids, m) for m, _ in pairs]
    bs = [mean_metric(ids, b) for _, b in pairs]
    ci = paired_bootstrap(ms, bs)
    assert ci.low < 0 < ci.high
    assert verdict(ci.low, ci.high, lower_is_better=True) == NO_DIFFERENCE
    assert verdict(ci.low, ci.high, lower_is_better=False) == NO_DIFFERENCE


def test_identical_models_give_a_zero_width_interval():
    m, _ = _pair(1)
    ids = list(range(m.size))
    ci = paired_bootstrap([mean_metric(ids, m)], [mean_metric(ids, m)])
    assert (ci.diff, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert verdict(ci.low, ci.high, True) == NO_DIFFERENCE


def test_items_are_matched_by_id_not_position():
    m, b = _pair(2, shift=0.2)
    ids = [f"i{i:03d}" for i in range(m.size)]
    perm = np.random.default_rng(0).permutation(m.size)
    shuffled = ItemMetric(tuple(np.asarray(ids)[perm]), m[perm], np.ones(m.size))
    a = paired_bootstrap([mean_metric(ids, m)], [mean_metric(ids, b)])
    c = paired_bootstrap([shuffled], [mean_metric(ids, b)])
    assert (a.diff, a.low, a.high) == pytest.approx((c.diff, c.low, c.high), abs=1e-12)


def test_verdicts_follow_the_metric_direction():
    assert verdict(-0.3, -0.1, lower_is_better=True) == BETTER
    assert verdict(-0.3, -0.1, lower_is_better=False) == WORSE
    assert verdict(0.1, 0.3, lower_is_better=False) == BETTER
    assert verdict(0.1, 0.3, lower_is_better=True) == WORSE
    assert verdict(float("nan"), 0.1, True) == "NA"


def test_the_bootstrap_is_reproducible():
    m, b = _pair(4, shift=0.01)
    ids = list(range(m.size))
    one = paired_bootstrap([mean_metric(ids, m)], [mean_metric(ids, b)])
    two = paired_bootstrap([mean_metric(ids, m)], [mean_metric(ids, b)])
    assert one == two


def test_correlations_are_scipys_with_one_edge_rule():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=30), rng.normal(size=30)
    y[3] = y[4]  # a tie
    assert pearson(x, y) == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_array_equal(rankdata(y), sps.rankdata(y))
    for bad in ((x[:2], y[:2]), (np.ones(5), y[:5]), (x[:5], np.zeros(5))):
        assert math.isnan(pearson(*bad)) and math.isnan(spearman(*bad))


# ------------------------------------------------------------- correlations by hand (no scipy)
def _hand_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, each tie group given the mean of the positions it spans: a plain loop."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    out = np.empty(len(v))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _hand_pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum()))


def test_correlations_match_the_textbook_formulas():
    rng = np.random.default_rng(11)
    x = rng.normal(size=25)
    y = 0.6 * x + rng.normal(size=25)
    x[[2, 7, 9]] = x[0]  # a three-way tie
    y[[4, 5]] = y[1]
    np.testing.assert_array_equal(rankdata(x), _hand_ranks(x))
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])
    assert pearson(x, y) == pytest.approx(_hand_pearson(x, y), abs=1e-12)
    assert spearman(x, y) == pytest.approx(_hand_pearson(_hand_ranks(x), _hand_ranks(y)), abs=1e-12)
    # without ties Spearman is 1 − 6Σd² / (n(n² − 1))
    u, v = rng.permutation(10).astype(float), rng.permutation(10).astype(float)
    d = _hand_ranks(u) - _hand_ranks(v)
    assert spearman(u, v) == pytest.approx(1 - 6 * (d**2).sum() / (10 * 99), abs=1e-12)


def test_the_edge_rule_by_hand():
    """Three points are enough; two, a constant input or a NaN give nan; misshapen inputs raise."""
    assert pearson([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) == pytest.approx(
        _hand_pearson(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0])), abs=1e-12
    )
    assert spearman([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5, abs=1e-12)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0, abs=1e-12)
    for f in (pearson, spearman):
        assert math.isnan(f([1.0, 2.0], [2.0, 1.0]))  # 2 points: always ±1, reported nan
        assert math.isnan(f([], []))
        assert math.isnan(f([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]))
        assert math.isnan(f([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]))
        assert math.isnan(f([1.0, 2.0, float("nan"), 4.0], [1.0, 2.0, 3.0, 4.0]))
        with pytest.raises(ValueError):
            f([1.0, 2.0, 3.0], [1.0, 2.0])
        with pytest.raises(ValueError):
            f(np.ones((3, 2)), np.ones((3, 2)))
