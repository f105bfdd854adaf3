"""MATES on the tiny config for real: stages, exact oracle, influence model, per-stage comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import all_methods_config, planned_jobs, smk, write_config
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
R = "results/tiny"


@pytest.fixture(scope="module")
def mates_run(tiny_all_finished) -> tuple[Path, Path]:
    """The tiny run of every method (MATES included, two seeds), shared with other tests."""
    return tiny_all_finished


def test_stages_pools_and_oracle(mates_run):
    work, _ = mates_run
    pools = [set(pq.read_table(work / R / f"mates/pools/stage-{k}.parquet")["example_id"].to_pylist()) for k in (0, 1)]
    probe = set(pq.read_table(work / R / "mates/pools/probe.parquet")["example_id"].to_pylist())
    assert not (pools[0] & pools[1]) and not (probe & (pools[0] | pools[1]))
    oracle = pq.read_table(work / R / "mates/mates/s0/stage-1/oracle.parquet").to_pydict()
    assert set(oracle["example_id"]) <= probe and len(oracle["example_id"]) == 16
    for before, after, delta in zip(oracle["ref_loss_before"], oracle["ref_loss_after"], oracle["delta"]):
        assert abs((after - before) - delta) < 1e-6
    fit = json.loads((work / R / "scorers/mates_s0_k1/fit.json").read_text())
    assert fit["label_column"] == "delta" and -1 <= fit["val_spearman"] <= 1
    selected = set(pq.read_table(work / R / "mates/mates/s0/stage-1/ids.parquet")["example_id"].to_pylist())
    assert selected <= pools[1] and len(selected) == 30  # ratio 0.5 of the 60-example stage pool
    # the oracle's reference items (val) and the reference the stages are judged on (test) are
    # cut from different documents
    sources = {
        sp: set(json.loads((work / R / f"mates/reference/{sp}/manifest.json").read_text())["source_docs"])
        for sp in ("val", "test")
    }
    assert sources["val"] and sources["test"] and not sources["val"] & sources["test"]


def test_a_stage_resumes_the_previous_stage_optimizer(mates_run):
    work, _ = mates_run
    stage0 = load_file(str(work / R / "mates/mrandom/s0/stage-0/model/optimizer.safetensors"))
    stage1 = load_file(str(work / R / "mates/mates/s0/stage-1/model/optimizer.safetensors"))
    key = "gpt_neox.embed_in.weight.step"
    assert float(stage0[key]) == 3 and float(stage1[key]) == 6  # AdamW's step count carries over
    log = (work / R / "logs/mates_train/mates-s0-1.log").read_text()
    assert "initialised weights and optimizer state from" in log


def test_per_stage_comparison_and_idempotence(mates_run):
    work, cfg = mates_run
    lines = (work / R / "mates/compare.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["stage", "method", "baseline"]
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    ref = [r for r in rows if r["metric"] == "reference/loss"]
    assert [r["stage"] for r in ref] == ["1"] and ref[0]["method"] == "mates_k1"
    # the reference loss is judged on test-split items (the oracle's are val), with an interval
    assert int(ref[0]["n_items"]) > 1 and ref[0]["verdict"] in ("better", "worse", "no detectable difference")
    assert float(ref[0]["ci_low"]) <= float(ref[0]["ci_high"])
    assert planned_jobs(smk(work, cfg, "-n", "mates")) == {}


def test_adding_a_stage_plans_only_the_new_stage(mates_run, tmp_path):
    # Pools are cut [probe | stage 0 | stage 1 | ...] from one permutation, one job each, so a third
    # stage leaves stages 0-1, their oracles and models alone: only stage 2's jobs and the table.
    work, _ = mates_run
    cfg = all_methods_config()
    cfg["mates"]["stages"] = 3
    n = len(cfg["seeds"])
    jobs = planned_jobs(smk(work, write_config(tmp_path / "three.yaml", cfg), "-n", "mates"))
    assert jobs.pop("mates_pools") == 1 and jobs.pop("mates_oracle") == n and jobs.pop("fit_scorer") == n
    assert jobs.pop("mates_train") == 2 * n and jobs.pop("mates_decay") == 2 * n  # stage 2, both arms
    assert jobs.pop("mates_compare") == 1 and jobs.pop("mates") == 1
    assert set(jobs) <= {
        "mates_select",
        "mates_random_scores",
        "score_pool",
        "merge_scores",
        "eval_ppl",
        "eval_harness",
        "eval_target",
        "mates_eval_reference",
    }
    assert jobs["mates_select"] == 2 * n and jobs["mates_eval_reference"] == 2 * n
