"""Modular data ablations in the real tiny run: what was made, and what config edits re-plan.

Reads the finished tiny workflow shared with test_e2e.py (conftest.tiny_finished); every config
edit here is a dry run against it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import planned_jobs, smk, tiny_config, write_config
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
R = "results/tiny/ablation"
PARTS = ["kjv", "pydocs", "shakespeare"]
MIXES = ["kjv+pydocs", "kjv+shakespeare", "pydocs+shakespeare"]


@pytest.fixture(scope="module")
def finished(tiny_finished) -> tuple[Path, Path]:
    return tiny_finished


def test_ablation_outputs_exist_with_provenance(finished):
    work, _ = finished
    models = ["seed"] + [f"components/{p}" for p in PARTS] + [f"{k}/{m}" for k in ("mixtures", "merges") for m in MIXES]
    rels = [f"{m}/model/model.safetensors" for m in models + ["macros/kp_s"]]
    rels += [f"eval/{m}/ppl.json" for m in models + ["macros/kp_s"]]
    rels += [f"partitions/{p}/ids.parquet" for p in PARTS] + [f"mixtures/{m}/ids.parquet" for m in MIXES]
    rels += ["correlation.tsv", "correlation.json", "points.tsv", "ppl.parquet", "correlation.png"]
    for rel in rels:
        path = work / R / rel
        assert path.exists(), rel
        side = json.loads(Path(f"{path}.prov.json").read_text())
        assert side["code"]["hash"] and side["sha256"], rel


def test_components_and_mixtures_continue_the_seed(finished):
    work, _ = finished
    cfg = tiny_config()["ablation"]
    seed_state = json.loads((work / R / "seed/model/trainer_state.json").read_text())
    assert seed_state["step"] == cfg["seed_steps"]
    for model, steps in [(f"components/{p}", cfg["budget_steps"]) for p in PARTS] + [
        (f"mixtures/{m}", 2 * cfg["budget_steps"]) for m in MIXES
    ]:
        state = json.loads((work / R / model / "model/trainer_state.json").read_text())
        assert state["step"] == steps and state["config"]["schedule"] == "constant", model
        assert state["config"]["lr"] == cfg["lr"] and state["config"]["warmup_steps"] == 0, model
        # AdamW's step counter went on from the seed's: the optimizer state was restored too.
        opt = load_file(str(work / R / model / "model/optimizer.safetensors"))
        counters = {float(v) for k, v in opt.items() if k.endswith(".step")}
        assert counters == {float(cfg["seed_steps"] + steps)}, model
        side = json.loads((work / R / model / "model/model.safetensors.prov.json").read_text())
        assert f"{R}/seed/model" in side["inputs"], model


def test_merges_are_the_mean_of_their_components(finished):
    work, _ = finished
    for mix in MIXES:
        comps = [load_file(str(work / R / f"components/{p}/model/model.safetensors")) for p in mix.split("+")]
        merged = load_file(str(work / R / f"merges/{mix}/model/model.safetensors"))
        assert set(merged) == set(comps[0])
        for key, t in merged.items():
            mean = torch.stack([c[key].double() for c in comps]).mean(0).to(t.dtype)
            assert torch.allclose(t, mean, atol=1e-7, rtol=0), (mix, key)
        members = json.loads((work / R / f"merges/{mix}/members.json").read_text())
        assert [Path(m).parent.name for m in members["members"]] == mix.split("+")


def test_mixture_ids_give_each_partition_an_equal_share(finished):
    work, _ = finished
    part_of = {}
    for p in PARTS:
        for i in pq.read_table(work / R / f"partitions/{p}/ids.parquet")["example_id"].to_pylist():
            part_of[i] = p
    for mix in MIXES:
        ids = pq.read_table(work / R / f"mixtures/{mix}/ids.parquet")["example_id"].to_pylist()
        shares = Counter(part_of[i] for i in ids)
        assert set(shares) == set(mix.split("+")) and len(set(shares.values())) == 1, (mix, shares)


def test_correlation_report_has_numbers(finished):
    work, _ = finished
    report = json.loads((work / R / "correlation.json").read_text())
    assert report["mixtures"] == MIXES and report["partitions"] == PARTS
    assert {"fortunes", "milton"} <= set(report["held_out_domains"])
    for proxy in ("merged", "mean_components"):
        pooled = report["summary"][proxy]["__pooled__"]
        assert pooled["n"] == 3 * len(
            {r["domain"] for r in report["rows"]}
            - {"__all__"}
            - {"__pooled__", "__pooled_partitions__", "__pooled_held_out__"}
        )
        assert -1 <= pooled["pearson"] <= 1 and -1 <= pooled["spearman"] <= 1
    ppl = pq.read_table(work / R / "ppl.parquet").to_pylist()
    assert all(math.isfinite(r["ppl_token"]) and r["ppl_token"] > 1 for r in ppl)
    assert {r["kind"] for r in ppl} == {"seed", "components", "mixtures", "merges", "macros"}


def test_second_dry_run_of_the_ablation_target_has_nothing_to_do(finished):
    work, cfg = finished
    assert planned_jobs(smk(work, cfg, "-n", "ablation")) == {}


def test_adding_a_partition_plans_its_component_and_mixtures_and_retrains_nothing_else(finished, tmp_path):
    work, _ = finished
    cfg = tiny_config()
    cfg["ablation"]["partitions"] = PARTS + ["wordnet"]
    jobs = planned_jobs(smk(work, write_config(tmp_path / "p.yaml", cfg), "-n"))
    new_mixtures = 3  # kjv+wordnet, pydocs+wordnet, shakespeare+wordnet
    # no contract job: the edited config was checked at parse time against the recorded counts
    assert jobs == {
        "ablation_partition": 1,  # wordnet
        "ablation_component": 1,  # wordnet
        "ablation_mixture_ids": new_mixtures,
        "ablation_mixture": new_mixtures,
        "ablation_merge": new_mixtures,
        "ablation_ppl": 1 + 2 * new_mixtures,  # the new component, mixtures and merges
        "ablation_correlate": 1,
        "all": 1,
    }


def test_changing_the_budget_keeps_the_seed_and_the_id_lists(finished, tmp_path):
    work, _ = finished
    cfg = tiny_config()
    cfg["ablation"]["budget_steps"] = 4
    jobs = planned_jobs(smk(work, write_config(tmp_path / "b.yaml", cfg), "-n", "ablation"))
    assert jobs == {
        "ablation_component": 3,
        "ablation_mixture": 3,
        "ablation_merge": 3,
        "ablation_macro": 1,
        "ablation_ppl": 10,  # all but the seed's
        "ablation_correlate": 1,
        "ablation": 1,
    }
