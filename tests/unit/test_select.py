"""winnow.select: deterministic top-k, Gumbel-top-k (checked against exact probabilities), params."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from winnow.select import SelectParams, select


def _perm(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


# ------------------------------------------------------------------------------- temperature 0


def test_top_k_higher_ties_broken_by_smaller_id_in_any_row_order():
    ids = np.array([50, 10, 40, 20, 30, 60], dtype=np.int64)
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 2.0])
    # best: score 3 → ids 10, 30, 40 (by id); then score 2 → 20 before 60
    expected = [10, 30, 40, 20, 60, 50]
    for seed in range(6):
        p = _perm(ids.size, seed)
        got, keys = select(ids[p], scores[p], SelectParams(k=5))
        assert got.tolist() == expected[:5]
        assert keys.tolist() == [3.0, 3.0, 3.0, 2.0, 2.0]
        assert got.dtype == np.int64


def test_top_k_lower_direction():
    ids = np.arange(100, 106)
    scores = np.array([0.3, -1.0, 0.3, 5.0, -1.0, 0.0])
    got, keys = select(ids, scores, SelectParams(direction="lower", k=4))
    assert got.tolist() == [101, 104, 105, 100]  # -1 (ties by id), 0, then 0.3 (smaller id)
    np.testing.assert_allclose(keys, [1.0, 1.0, 0.0, -0.3])  # keys are the goodness −score
    higher, _ = select(ids, scores, SelectParams(direction="higher", k=1))
    assert higher.tolist() == [103]


def test_ratio_uses_floor_of_pool_size_and_k_is_capped():
    ids = np.arange(10)
    scores = np.arange(10, dtype=float)
    assert select(ids, scores, SelectParams(ratio=0.35))[0].tolist() == [9, 8, 7]  # floor(3.5)
    assert select(ids, scores, SelectParams(ratio=1.0))[0].tolist() == list(range(9, -1, -1))
    assert select(ids, scores, SelectParams(k=3))[0].tolist() == [9, 8, 7]
    assert select(ids, scores, SelectParams(k=50))[0].size == 10
    assert SelectParams(ratio=0.35).count(10) == 3
    assert SelectParams(k=4).count(3) == 3


def test_a_ratio_that_keeps_nothing_is_an_error_naming_the_key():
    """ratio · n < 1 would select 0 examples (and train on nothing) without a word: refused, naming
    the config key the workflow passes (``--key``)."""
    ids, scores = np.arange(500), np.zeros(500)
    with pytest.raises(ValueError, match=r"select\.pds\.ratio: 0\.001 of 500 pool examples keeps 0"):
        select(ids, scores, SelectParams(ratio=0.001), key="select.pds.ratio")
    with pytest.raises(ValueError, match=r"^ratio: 0\.05 of 10 pool examples keeps 0"):
        SelectParams(ratio=0.05).count(10)
    assert select(ids, scores, SelectParams(ratio=0.002), key="select.pds.ratio")[0].size == 1


def test_select_cli_names_the_key(tmp_path):
    import pyarrow as pa

    from winnow.cli import main as cli
    from winnow.io.tables import SCORES, write_table

    scores = tmp_path / "scores.parquet"
    write_table(scores, pa.table({"example_id": np.arange(500), "score": np.zeros(500, dtype=np.float32)}), SCORES)
    args = ["select", "select", "--scores", str(scores), "--direction", "higher", "--temperature", "1.0"]
    args += ["--out", str(tmp_path / "ids.parquet"), "--manifest", str(tmp_path / "m.json")]
    with pytest.raises(ValueError, match=r"select\.mates\.ratio: 0\.001 of 500 pool examples keeps 0"):
        cli([*args, "--ratio", "0.001", "--key", "select.mates.ratio"])
    assert not (tmp_path / "ids.parquet").exists()
    cli([*args, "--ratio", "0.01", "--key", "select.mates.ratio"])
    assert (tmp_path / "ids.parquet").exists()


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_nan_never_selected(temperature):
    ids = np.arange(8)
    scores = np.array([np.nan, 1.0, np.nan, 0.5, 2.0, np.nan, -3.0, np.nan])
    for seed in range(50):
        got, keys = select(ids, scores, SelectParams(k=8, temperature=temperature, seed=seed))
        assert sorted(got.tolist()) == [1, 3, 4, 6]  # only the 4 finite ones, even with k=8
        assert np.isfinite(keys).all()
    got, _ = select(ids, scores, SelectParams(direction="lower", ratio=1.0))
    assert got.tolist() == [6, 3, 1, 4]


def test_all_nan_selects_nothing():
    got, keys = select(np.arange(3), np.full(3, np.nan), SelectParams(k=2))
    assert got.size == 0 and keys.size == 0


def test_input_validation():
    with pytest.raises(ValueError, match="unique"):
        select(np.array([1, 1, 2]), np.zeros(3), SelectParams(k=1))
    with pytest.raises(ValueError, match="equal length"):
        select(np.array([1, 2]), np.zeros(3), SelectParams(k=1))


# ------------------------------------------------------------------------------- temperature > 0


def test_gumbel_reproducible_per_seed_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    ids = rng.choice(10**6, size=200, replace=False).astype(np.int64)
    scores = rng.normal(size=200)
    params = SelectParams(ratio=0.25, temperature=0.5, seed=7)
    ref, ref_keys = select(ids, scores, params)
    assert ref.size == 50
    for s in range(5):
        p = _perm(ids.size, s)
        got, keys = select(ids[p], scores[p], params)
        assert got.tolist() == ref.tolist()
        np.testing.assert_array_equal(keys, ref_keys)
    assert np.all(np.diff(ref_keys) <= 0)  # best first
    other, _ = select(ids, scores, SelectParams(ratio=0.25, temperature=0.5, seed=8))
    assert other.tolist() != ref.tolist()
    # noise actually matters: it is not just the deterministic top-k
    top, _ = select(ids, scores, SelectParams(ratio=0.25))
    assert set(top.tolist()) != set(ref.tolist())


def test_gumbel_nan_does_not_shift_other_noise():
    """Noise is drawn for every id, so marking one id NaN leaves the others' keys unchanged."""
    ids = np.arange(20)
    scores = np.linspace(-1, 1, 20)
    params = SelectParams(k=20, temperature=1.0, seed=3)
    ids_a, keys_a = select(ids, scores, params)
    with_nan = scores.copy()
    with_nan[0] = np.nan
    ids_b, keys_b = select(ids, with_nan, params)
    a = dict(zip(ids_a.tolist(), keys_a.tolist(), strict=True))
    b = dict(zip(ids_b.tolist(), keys_b.tolist(), strict=True))
    assert 0 not in b
    assert all(a[i] == b[i] for i in b)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _exact_inclusion(goodness: np.ndarray, tau: float, k: int) -> np.ndarray:
    """P(i selected) for k draws without replacement from softmax(goodness/τ), by enumeration:
    sum over ordered tuples of P(a first)·P(b second | a removed)·…"""
    p = _softmax(goodness / tau)
    inc = np.zeros(p.size)
    for tup in itertools.permutations(range(p.size), k):
        prob, left = 1.0, 1.0
        for a in tup:
            prob *= p[a] / left
            left -= p[a]
        inc[list(tup)] += prob
    return inc


SCORES4 = np.array([0.0, 0.5, 1.0, 2.0])
IDS4 = np.array([10, 11, 12, 13], dtype=np.int64)
TAU = 0.7
N_SEEDS = 20_000


def _empirical_inclusion(k: int, direction: str) -> np.ndarray:
    counts = np.zeros(4)
    for seed in range(N_SEEDS):
        got, _ = select(IDS4, SCORES4, SelectParams(direction=direction, k=k, temperature=TAU, seed=seed))
        assert got.size == k and len(set(got.tolist())) == k  # without replacement
        counts[got - 10] += 1
    return counts / N_SEEDS


def _z(empirical: np.ndarray, exact: np.ndarray) -> float:
    """Largest per-item deviation in binomial standard errors."""
    se = np.sqrt(exact * (1 - exact) / N_SEEDS)
    return float(np.max(np.abs(empirical - exact) / se))


def _reversed_gumbel_inclusion(k: int) -> np.ndarray:
    """The MATES-code variant for lower-is-better scores: key = p/τ + G, take the k *smallest*
    (same noise draws as winnow's: default_rng(seed).gumbel over ids in id order)."""
    gumbel = np.stack([np.random.default_rng(s).gumbel(size=4) for s in range(N_SEEDS)])
    keys = SCORES4 / TAU + gumbel
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return np.bincount(chosen.ravel(), minlength=4) / N_SEEDS


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_gumbel_top1_matches_softmax(direction):
    goodness = SCORES4 if direction == "higher" else -SCORES4
    exact = _softmax(goodness / TAU)
    emp = _empirical_inclusion(1, direction)
    chi2 = float(np.sum(N_SEEDS * (emp - exact) ** 2 / exact))
    assert chi2 < 21.1, (emp, exact)  # χ²(3 d.o.f.) at p = 1e-4
    assert _z(emp, exact) < 4.5


def test_gumbel_top2_matches_sampling_without_replacement():
    exact = _exact_inclusion(-SCORES4, TAU, 2)
    assert math.isclose(exact.sum(), 2.0)
    emp = _empirical_inclusion(2, "lower")
    assert _z(emp, exact) < 4.5, (emp, exact)
    # sampling *with* replacement-like behaviour (inclusion ∝ softmax) would be far off
    assert _z(np.minimum(2 * _softmax(-SCORES4 / TAU), 1.0), exact) > 8


def test_reversed_gumbel_variant_would_be_caught():
    """The MATES sign quirk gives different inclusion probabilities; the same tolerance that
    accepts winnow's sampler rejects it, for k = 1 and k = 2."""
    for k in (1, 2):
        exact = _exact_inclusion(-SCORES4, TAU, k)
        assert _z(_reversed_gumbel_inclusion(k), exact) > 8


# ------------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"direction": "up", "k": 1}, "direction"),
        ({}, "exactly one of ratio or k"),
        ({"ratio": 0.5, "k": 3}, "exactly one of ratio or k"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"k": 0}, "k must be"),
        ({"k": 1, "temperature": -0.1}, "temperature"),
        ({"k": 1, "temperature": float("inf")}, "temperature"),
        ({"k": 1, "temperature": float("nan")}, "temperature"),
    ],
)
def test_select_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelectParams(**kwargs)


def test_select_params_as_dict():
    assert SelectParams(direction="lower", k=3, temperature=0.5, seed=2).as_dict() == {
        "direction": "lower",
        "ratio": None,
        "k": 3,
        "temperature": 0.5,
        "seed": 2,
    }
