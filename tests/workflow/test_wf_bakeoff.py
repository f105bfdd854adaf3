"""The bake-off on the tiny run of every method: one pool, one budget, the shared suite, a
leaderboard whose numbers are the per-model evaluations; and its config checked at parse time."""

from __future__ import annotations

import json
import statistics

import pyarrow.parquet as pq
import pytest
from conftest import all_methods_config, smk, write_config

pytestmark = pytest.mark.slow
R = "results/tiny"
ARMS = ["random", "pds", "mates_pool", "less_pool"]


def _ids(path) -> set[int]:
    return set(pq.read_table(path)["example_id"].to_pylist())


def test_arms_select_the_same_budget_from_the_same_pool(tiny_all_finished):
    work, _ = tiny_all_finished
    pool = _ids(work / R / "subsets/pool/ids.parquet")
    sizes = set()
    for arm in ARMS:
        for seed in (0, 1):
            sel = _ids(work / R / f"selected/{arm}/s{seed}/ids.parquet")
            assert sel <= pool, arm
            sizes.add(len(sel))
    assert len(sizes) == 1 and sizes.pop() == round(0.5 * len(pool))  # tiny: every ratio is 0.5


def test_model_aware_arms_label_the_proxy_and_aim_at_the_target(tiny_all_finished):
    work, _ = tiny_all_finished
    proxy = _ids(work / R / "subsets/pds_proxy/ids.parquet")
    oracle = pq.read_table(work / R / "bakeoff/mates_pool/oracle.parquet")
    assert oracle.num_rows == 16 and set(oracle["example_id"].to_pylist()) <= proxy
    report = json.loads((work / R / "bakeoff/mates_pool/oracle.json").read_text())
    assert report["n_reference"] == len(_ids(work / R / "subsets/pds_target/ids.parquet"))
    labels = pq.read_table(work / R / "bakeoff/less_pool/labels.parquet")
    assert set(labels["example_id"].to_pylist()) == proxy  # LESS labels the whole proxy sample
    for scorer in ("mates_pool", "less_pool"):
        fit = json.loads((work / R / f"scorers/{scorer}/fit.json").read_text())
        assert fit["label_column"] == {"mates_pool": "delta", "less_pool": "score"}[scorer]
        scores = pq.read_table(work / R / f"scores/{scorer}/scores.parquet")
        assert set(scores["example_id"].to_pylist()) == _ids(work / R / "subsets/pool/ids.parquet")


def test_leaderboard_is_the_mean_and_sd_of_the_model_evaluations(tiny_all_finished):
    work, _ = tiny_all_finished
    lines = (work / R / "bakeoff/leaderboard.tsv").read_text().splitlines()
    header, rows = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), ln.split("\t"))) for ln in lines[1:]]
    # ranked by the held-out twin of the target every arm aims at, never by that target itself
    m = "target/pds_target_eval"
    assert header[:9] == ["rank", "method", "n_seeds", m, f"{m} sd", "diff", "ci_low", "ci_high", "verdict"]
    assert "target/pds_target" not in header
    assert sorted(r["method"] for r in rows) == sorted(ARMS)
    means = {}
    for r in rows:
        losses = [
            json.loads((work / R / f"eval/{r['method']}/s{s}/target-pds_target_eval.json").read_text())["loss"]
            for s in (0, 1)
        ]
        assert float(r[m]) == pytest.approx(statistics.mean(losses), rel=1e-5)
        assert float(r[f"{m} sd"]) == pytest.approx(statistics.stdev(losses), rel=1e-4, abs=1e-9)
        means[r["method"]] = statistics.mean(losses)
        if r["method"] == "random":
            assert r["verdict"] == "NA"
        else:
            assert float(r["ci_low"]) <= float(r["diff"]) <= float(r["ci_high"])
            assert r["verdict"] in ("better", "worse", "no detectable difference")
    assert [r["method"] for r in rows] == sorted(means, key=lambda m: (means[m], m))  # ranked by loss
    html = (work / R / "bakeoff/leaderboard.html").read_text()
    assert all(f"<td>{arm}</td>" in html for arm in ARMS)


def test_unequal_budgets_fail_at_parse_time_naming_the_keys(tmp_path):
    cfg = all_methods_config()
    cfg["select"]["less_pool"]["ratio"] = 0.25
    work = tmp_path / "work"
    work.mkdir()
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "select.{random,pds,mates_pool,less_pool}.ratio must be equal" in proc.stdout + proc.stderr


def test_less_arm_features_are_stored_one_file_per_block(tiny_all_finished):
    """tiny: 3 shards, 2 a block → pool-0.npy holds the proxy ids of shards 0-1, pool-1.npy of shard 2."""
    from winnow.methods.less import read_features

    work, _ = tiny_all_finished
    proxy = _ids(work / R / "subsets/pds_proxy/ids.parquet")
    for epoch in (1, 2):
        seen = []
        for block in (0, 1):
            _, ids = read_features(work / R / f"bakeoff/less_pool/features/epoch-{epoch}/pool-{block}.npy", {})
            assert all((int(i) >> 32) // 2 == block for i in ids), (epoch, block)
            seen += ids.tolist()
        assert sorted(seen) == sorted(proxy) and len(seen) == len(proxy)
        assert not (work / R / f"bakeoff/less_pool/features/epoch-{epoch}/pool-2.npy").exists()
