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
