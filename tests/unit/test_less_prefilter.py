"""winnow.methods.less_prefilter and `winnow less prefilter`: S, T, the final ordering, the recall."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from winnow.data.subsets import ids_table, sample_ids
from winnow.io.tables import IDS, SCORES, read_table, write_table
from winnow.methods.less_prefilter import (
    prefilter_comparison,
    prefilter_fit_ids,
    prefilter_scores,
    prefilter_top_ids,
)
from winnow.select import SelectParams, select


def _pool(n: int, seed: int = 0) -> np.ndarray:
    """Ids of two token shards (shard · 2³² + index), shuffled: the code must not rely on row order."""
    ids = np.concatenate([np.arange(n // 2), (1 << 32) + np.arange(n - n // 2)]).astype(np.int64)
    return ids[np.random.default_rng(seed).permutation(n)]


def _brute_top(ids, scores, k: int) -> list[int]:
    """Independent top-k: Python's sort on (−score, id), NaN never taken."""
    rows = [(-float(s), int(i)) for i, s in zip(ids, scores, strict=True) if not math.isnan(float(s))]
    return [i for _, i in sorted(rows)[:k]]


# ------------------------------------------------------------------------------------------ S and T


def test_fit_sample_is_seeded_sorted_and_the_predictors_sample():
    pool = _pool(101)
    s = prefilter_fit_ids(pool, 0.3, seed=4)
    assert s.dtype == np.int64 and s.size == round(0.3 * 101) and np.all(np.diff(s) > 0)
    assert set(s.tolist()) <= set(pool.tolist())
    np.testing.assert_array_equal(s, prefilter_fit_ids(pool[::-1], 0.3, seed=4))  # row order free
    np.testing.assert_array_equal(s, np.sort(sample_ids(np.sort(pool), 4, n=30)))  # `less predict`'s draw
    assert not np.array_equal(s, prefilter_fit_ids(pool, 0.3, seed=5))
    assert prefilter_fit_ids(pool, 0.001, seed=0).size == 2  # a ridge fit needs two points
    with pytest.raises(ValueError):
        prefilter_fit_ids(pool[:1], 0.5, seed=0)


def test_top_is_the_best_predicted_outside_the_sample_ties_by_id():
    rng = np.random.default_rng(1)
    pool = _pool(60)
    pred = rng.integers(0, 8, size=pool.size).astype(np.float64)  # many ties
    fit = prefilter_fit_ids(pool, 0.5, seed=0)
    top = prefilter_top_ids(pool, pred, fit, 0.15)
    assert top.size == math.floor(0.15 * 60) == 9
    assert not set(top.tolist()) & set(fit.tolist())
    rest = ~np.isin(pool, fit)
    assert top.tolist() == _brute_top(pool[rest], pred[rest], 9)  # best first, ties by smaller id
    # capped by the rest, at least one while any is left, empty when S is the pool
    assert prefilter_top_ids(pool, pred, fit, 1.0).size == int(rest.sum())
    assert prefilter_top_ids(pool, pred, fit, 0.001).size == 1
    assert prefilter_top_ids(pool, pred, pool, 0.5).size == 0
    with pytest.raises(ValueError):
        prefilter_top_ids(pool, pred[:-1], fit, 0.1)


# ------------------------------------------------------------------------------------- final scores


def test_final_scores_exact_on_featurised_and_the_rest_below_in_predicted_order():
    rng = np.random.default_rng(2)
    pool = _pool(80)
    exact_all = rng.uniform(-0.3, 0.4, size=pool.size)
    pred = rng.integers(0, 5, size=pool.size).astype(np.float64)  # ties among the rest
    fit = prefilter_fit_ids(pool, 0.25, seed=0)
    top = prefilter_top_ids(pool, pred, fit, 0.2)
    ex_ids = np.concatenate([fit, top])
    row = {int(e): i for i, e in enumerate(pool)}
    ex = exact_all[[row[int(e)] for e in ex_ids]]
    final = prefilter_scores(pool, ex_ids, ex, pred)
    featurised = np.isin(pool, ex_ids)
    np.testing.assert_array_equal(final[featurised], exact_all[featurised])
    assert final[~featurised].max() < final[featurised].min()  # below every exact score
    assert final[~featurised].max() <= ex.min() - 1.0
    # the rest in predicted order (ties: smaller id first), kept in the float32 table
    f32 = final.astype(np.float32)
    rest = np.flatnonzero(~featurised)
    assert np.unique(f32[rest]).size == rest.size
    by_final = [int(pool[i]) for i in rest[np.argsort(-f32[rest].astype(np.float64))]]
    assert by_final == _brute_top(pool[rest], pred[rest], rest.size)
    # the arm's selection: only featurised examples while k ≤ |S ∪ T|, then the best-predicted rest
    n_feat = int(featurised.sum())
    for k in (1, n_feat // 2, n_feat):
        got, _ = select(pool, f32, SelectParams(k=k))
        assert set(got.tolist()) <= set(ex_ids.tolist())
        assert got.tolist() == _brute_top(pool, f32, k)
    got, _ = select(pool, f32, SelectParams(k=n_feat + 3))
    assert got[n_feat:].tolist() == by_final[:3]


def test_final_scores_reject_bad_exact_ids():
    pool = _pool(10)
    with pytest.raises(ValueError, match="not in the pool"):
        prefilter_scores(pool, np.array([pool[0], 999]), np.array([0.1, 0.2]), np.zeros(10))
    with pytest.raises(ValueError, match="not unique"):
        prefilter_scores(pool, np.array([pool[0], pool[0]]), np.array([0.1, 0.2]), np.zeros(10))
    out = prefilter_scores(pool, pool, np.linspace(0, 1, 10), np.zeros(10))  # all featurised
    np.testing.assert_array_equal(out, np.linspace(0, 1, 10))


# ------------------------------------------------------------------------------------------ recall


def test_comparison_recall_equals_brute_force():
    rng = np.random.default_rng(3)
    pool = _pool(200)
    exact = np.round(rng.normal(size=pool.size), 1)  # ties in the exact scores too
    noisy = exact + rng.normal(scale=0.8, size=pool.size)  # a mediocre predictor
    fit = np.isin(pool, prefilter_fit_ids(pool, 0.3, seed=0))
    predict_only = np.where(fit, exact, noisy)
    top = prefilter_top_ids(pool, noisy, pool[fit], 0.15)
    feat = fit | np.isin(pool, top)
    final = prefilter_scores(pool, pool[feat], exact[feat], predict_only)
    rep = prefilter_comparison(pool, exact, final, predict_only, feat, fit, ratio=0.05)
    k = 10
    want = set(_brute_top(pool, exact, k))
    assert rep["k"] == k and rep["random_expected"] == pytest.approx(k / 200)
    assert rep["prefilter"]["recall_at_k"] == pytest.approx(len(set(_brute_top(pool, final, k)) & want) / k)
    assert rep["predict_only"]["recall_at_k"] == pytest.approx(len(set(_brute_top(pool, predict_only, k)) & want) / k)
    assert rep["recall_ceiling"] == pytest.approx(len(want & set(pool[feat].tolist())) / k)
    # refinement never loses what S ∪ T holds: the prefilter recovers the whole featurised part
    assert rep["prefilter"]["recall_at_k"] == pytest.approx(rep["recall_ceiling"])
    assert rep["prefilter"]["recall_at_k"] >= rep["predict_only"]["recall_at_k"]
    assert rep["prefilter"]["spearman_featurised"] == pytest.approx(1.0)
    assert rep["prefilter"]["max_abs_diff_featurised"] == 0.0
    assert -1 <= rep["predict_only"]["spearman_predicted"] <= 1
    # a perfect predictor: everything recovered on both paths
    perfect = prefilter_comparison(pool, exact, exact, exact, feat, fit, ratio=0.05)
    assert perfect["prefilter"]["recall_at_k"] == perfect["predict_only"]["recall_at_k"] == 1.0


# ------------------------------------------------------------------------------------- the command


def _scores(path, ids, scores) -> str:
    write_table(
        path, pa.table({"example_id": np.asarray(ids, np.int64), "score": np.asarray(scores, np.float32)}), SCORES
    )
    return str(path)


def test_prefilter_command_writes_scores_report_and_sidecars(tmp_path):
    from winnow.cli import main

    rng = np.random.default_rng(4)
    pool = np.sort(_pool(40))
    exact = rng.uniform(-0.5, 0.5, size=pool.size).astype(np.float32).astype(np.float64)
    pred = exact + rng.normal(scale=0.3, size=pool.size)
    fit = prefilter_fit_ids(pool, 0.5, seed=0)
    top = prefilter_top_ids(pool, pred, fit, 0.15)
    row = {int(e): i for i, e in enumerate(pool)}
    at = lambda ids: [row[int(e)] for e in ids]  # noqa: E731
    fit_mask = np.isin(pool, fit)
    write_table(tmp_path / "pool.parquet", ids_table(pool), IDS)
    write_table(tmp_path / "fit-ids.parquet", ids_table(fit), IDS)
    write_table(tmp_path / "top-ids.parquet", ids_table(top), IDS)
    (tmp_path / "fit-match.json").write_text(json.dumps({"epoch_weights": [0.6, 0.4]}))
    args = ["less", "prefilter", "--pool", str(tmp_path / "pool.parquet")]
    args += ["--fit-ids", str(tmp_path / "fit-ids.parquet"), "--top-ids", str(tmp_path / "top-ids.parquet")]
    args += ["--fit-scores", _scores(tmp_path / "fit-scores.parquet", fit, exact[at(fit)])]
    args += ["--top-scores", _scores(tmp_path / "top-scores.parquet", top, exact[at(top)])]
    args += ["--predicted", _scores(tmp_path / "predicted.parquet", pool, np.where(fit_mask, exact, pred))]
    args += ["--fit-match", str(tmp_path / "fit-match.json")]
    args += ["--full-scores", _scores(tmp_path / "full.parquet", pool, exact)]
    cfg = {"mode": "full", "fit_fraction": 0.5, "featurize_fraction": 0.15, "ratio": 0.1}
    args += ["--params", json.dumps(cfg), "--out", str(tmp_path / "out.parquet")]
    args += ["--report", str(tmp_path / "prefilter.json")]
    assert main(args) == 0
    rep = json.loads((tmp_path / "prefilter.json").read_text())
    assert (rep["n_pool"], rep["n_fit"], rep["n_top"], rep["n_featurised"]) == (40, 20, 6, 26)
    assert rep["saved_fraction"] == pytest.approx(14 / 40) and rep["k"] == 4 and rep["k_within_featurised"]
    assert rep["pool_gradient_examples"] == {"prefilter": 52, "full": 80, "saved": 28}
    out = read_table(tmp_path / "out.parquet", SCORES)
    want = set(_brute_top(pool, exact, 4))
    recall = len(set(_brute_top(out["example_id"].to_numpy(), out["score"].to_numpy(), 4)) & want) / 4
    assert rep["side_by_side"]["prefilter"]["recall_at_k"] == rep["comparison"]["prefilter"]["recall_at_k"] == recall
    assert rep["side_by_side"]["full"] == {"n_featurised": 40, "featurised_fraction": 1.0, "recall_at_k": 1.0}
    for name in ("out.parquet", "prefilter.json"):  # provenance sidecars, as every LESS command
        side = json.loads((tmp_path / f"{name}.prov.json").read_text())
        assert side["command"] == "less prefilter" and cfg.items() <= side["params"].items()
    # without the whole pool's scores: counts only
    i = args.index("--full-scores")
    assert main(args[:i] + args[i + 2 :]) == 0
    rep = json.loads((tmp_path / "prefilter.json").read_text())
    assert rep["comparison"] is None and rep["side_by_side"]["prefilter"]["recall_at_k"] is None
    assert rep["n_featurised"] == 26


def test_features_params_reject_unknown_keys():
    from winnow.params import COMMANDS

    cls = COMMANDS["less features"]
    assert cls.from_dict({"dim": 64, "seed": 3, "dtype": "float16", "batch_size": 4, "method": "hooks"}).seed == 3
    with pytest.raises(ValueError, match="unknown key 'dims'"):
        cls.from_dict({"dims": 64})
