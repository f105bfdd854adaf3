"""LESS on the tiny config for real: instruction store, warm-up, features, matching, predictor, arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import planned_jobs, smk

pytestmark = pytest.mark.slow
R = "results/tiny"


@pytest.fixture(scope="module")
def less_run(tiny_all_finished) -> tuple[Path, Path]:
    """The tiny run of every method (LESS included), shared with the bake-off and report tests."""
    return tiny_all_finished


def test_data_sets_are_disjoint_and_from_their_splits(less_run):
    work, _ = less_run
    examples = pq.read_table(work / R / "less/data/examples.parquet").to_pandas().set_index("example_id")
    sets = {
        n: pq.read_table(work / R / f"less/data/{n}.parquet")["example_id"].to_numpy()
        for n in ("pool", "target", "eval")
    }
    assert set(examples.loc[sets["pool"], "split"]) == {"train"}
    assert set(examples.loc[sets["target"], "split"]) == {"val"}
    assert set(examples.loc[sets["eval"], "split"]) == {"test"}
    assert set(examples.loc[sets["target"], "domain"]) == {"define"} == set(examples.loc[sets["eval"], "domain"])
    assert (examples["loss_start"] > 0).all()  # the loss is on responses only
    # held out: the reference points LESS matches against share no source document with the
    # items it is judged on (doc_id = task/source doc/k)
    source = examples["doc_id"].str.split("/").str[1:-1].str.join("/")
    assert not set(source.loc[sets["target"]]) & set(source.loc[sets["eval"]])
    assert not set(sets["target"]) & set(sets["eval"])


def test_features_have_validated_sidecars_and_scores_cover_the_pool(less_run):
    work, _ = less_run
    pool = np.sort(pq.read_table(work / R / "less/data/pool.parquet")["example_id"].to_numpy())
    feats = []
    for shard in (0, 1):
        path = work / R / f"less/s0/features/epoch-2/pool-{shard}.npy"
        side = json.loads(Path(f"{path}.json").read_text())
        arr = np.load(path)
        assert side["kind"] == "adam" and side["d"] == 64 and arr.shape == (len(side["ids"]), 64)
        assert np.allclose(np.linalg.norm(arr.astype(np.float32), axis=1), 1.0, atol=1e-2)
        feats += side["ids"]
    assert sorted(feats) == pool.tolist()
    scores = pq.read_table(work / R / "less/s0/scores.parquet").to_pandas()
    assert sorted(scores["example_id"]) == pool.tolist() and scores["score"].between(-1, 1).all()
    match = json.loads((work / R / "less/s0/match.json").read_text())
    assert abs(sum(match["epoch_weights"]) - 1) < 1e-6 and len(match["epoch_weights"]) == 2


def test_selection_is_the_top_of_the_scores(less_run):
    work, _ = less_run
    scores = pq.read_table(work / R / "less/s0/scores.parquet").to_pandas()
    ids = pq.read_table(work / R / "less/less/s0/ids.parquet")["example_id"].to_numpy()
    assert len(ids) == 12  # ratio 0.1 of the 120-example pool
    kth = scores["score"].nlargest(12).min()
    assert (scores.set_index("example_id").loc[ids, "score"] >= kth).all()


def test_predictor_report_and_arms_compared(less_run):
    work, cfg = less_run
    rep = json.loads((work / R / "less/s0/predictor.json").read_text())
    assert rep["n_fit"] + rep["n_held_out"] == 120
    assert -1 <= rep["held_out"]["spearman"] <= 1 and 0 <= rep["overlap_hybrid"] <= 1
    rows = (work / R / "less/compare.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    arms = {dict(zip(header, r.split("\t")))["arm"] for r in rows[1:]}
    assert arms == {"less", "random", "full", "predicted"}
    ev = json.loads((work / R / "less/full/s0/eval.json").read_text())
    assert ev["target_loss"] > 0 and 0 <= ev["define_choice_acc"] <= 1
    assert planned_jobs(smk(work, cfg, "-n", "less")) == {}


def _top(ids, scores, k: int) -> set[int]:
    """Top-k by score, ties by smaller id (plain Python, independent of winnow.select)."""
    return {i for _, i in sorted((-float(s), int(i)) for i, s in zip(ids, scores, strict=True))[:k]}


def test_prefilter_featurises_part_of_the_pool_and_recovers_the_exact_top(less_run):
    work, _ = less_run
    for seed in (0, 1):
        s = work / R / f"less/s{seed}"
        rep = json.loads((s / "prefilter.json").read_text())
        fit = pq.read_table(s / "prefilter/fit-ids.parquet")["example_id"].to_numpy()
        top = pq.read_table(s / "prefilter/top-ids.parquet")["example_id"].to_numpy()
        assert rep["mode"] == "full" and rep["n_pool"] == 120
        assert (rep["n_fit"], rep["n_top"]) == (fit.size, top.size) == (60, 18)  # 0.5 and ⌊0.15 · 120⌋
        assert rep["n_featurised"] == 78 < rep["n_pool"] and not set(fit) & set(top)
        assert rep["pool_gradient_examples"] == {"prefilter": 2 * 78, "full": 2 * 120, "saved": 2 * 42}
        # exact features of S and T only, every warm-up epoch, through the pool's feature command
        for part, ids in (("fit", fit), ("top", top)):
            for epoch in (1, 2):
                side = json.loads((s / f"prefilter/features/{part}/epoch-{epoch}/pool-0.npy.json").read_text())
                assert sorted(side["ids"]) == sorted(ids.tolist()) and side["kind"] == "adam"
        full = pq.read_table(s / "scores.parquet").to_pandas().set_index("example_id")["score"]
        pre = pq.read_table(s / "prefilter/scores.parquet").to_pandas().set_index("example_id")["score"]
        assert sorted(pre.index) == sorted(full.index)
        featurised = np.concatenate([fit, top])
        rest = pre.index.difference(featurised)
        assert pre.loc[rest].max() < pre.loc[featurised].min()  # the rest ranks below every exact score
        # the features of an id list give the whole pool's scores (up to fp16 storage and batching)
        assert np.abs(pre.loc[featurised].to_numpy() - full.loc[featurised].to_numpy()).max() < 1e-2
        k = rep["k"]
        assert k == 12 and rep["k_within_featurised"]
        want = _top(full.index, full.to_numpy(), k)
        recall = len(_top(pre.index, pre.to_numpy(), k) & want) / k
        assert 0 <= recall <= 1 and rep["side_by_side"]["prefilter"]["recall_at_k"] == pytest.approx(recall)
        hybrid = pq.read_table(s / "prefilter/predicted.parquet").to_pandas().set_index("example_id")["score"]
        recall_po = len(_top(hybrid.index, hybrid.to_numpy(), k) & want) / k
        assert rep["side_by_side"]["predict_only"]["recall_at_k"] == pytest.approx(recall_po)
        assert rep["comparison"]["recall_ceiling"] == pytest.approx(len(want & set(featurised.tolist())) / k)


def test_prefilter_mode_needs_no_full_pool_features(less_run, tmp_path):
    """Mode prefilter: the less arm selects from the prefilter's scores; no whole-pool feature jobs."""
    _, cfg_path = less_run
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["less"]["predictor"]["mode"] = "prefilter"
    path = tmp_path / "prefilter.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    work = tmp_path / "work"
    work.mkdir()
    jobs = planned_jobs(smk(work, path, "-n", "less"))
    assert not {"less_features", "less_match", "less_predict"} & set(jobs)
    n_seeds = len(cfg["seeds"])
    assert jobs["less_prefilter_features"] == 2 * 2 * n_seeds  # (S, T) × 2 epochs × seeds
    assert jobs["less_prefilter"] == n_seeds
