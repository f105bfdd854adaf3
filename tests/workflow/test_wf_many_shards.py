"""A real run with many token shards (issue 9): 1,000 shards in four blocks. The jobs are per
block, readers find the shard files through the manifest (no shard list on any command line), and
the pool is scored block by block, every pool id exactly once."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import planned_jobs, smk, tiny_config, write_config

pytestmark = pytest.mark.slow
R = "results/tiny"
TARGETS = [f"{R}/scores/pds/scores.parquet", f"{R}/models/random/s0/model/model.safetensors"]


def test_a_thousand_shards_run_in_four_blocks(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["tokenize"] = {"seq_len": cfg["tokenize"]["seq_len"], "num_shards": 1000, "shards_per_block": 250}
    cfg_path = write_config(tmp_path / "many.yaml", cfg)
    plan = planned_jobs(smk(work, cfg_path, "-n", *TARGETS))
    assert plan["tokenize"] == 4 and plan["score_pool"] == 4
    smk(work, cfg_path, *TARGETS, timeout=1800)

    manifest = json.loads((work / R / "tokens/manifest.json").read_text())
    assert manifest["layout"] == {
        "tokens": "block-{block}/tokens-{shard}.bin",
        "shards_per_block": 250,
        "num_shards": 1000,
    }
    examples = pq.read_table(work / R / "tokens/examples.parquet")
    assert sum(manifest["shards"].values()) == examples.num_rows == manifest["examples"]
    assert len(manifest["shards"]) > 250  # documents spread over many shards of every block
    for block in range(4):
        files = {p.name for p in (work / R / f"tokens/block-{block}").glob("tokens-*.bin")}
        assert files == {f"tokens-{s}.bin" for s in range(250 * block, 250 * (block + 1))}, block
    assert set(examples["shard"].to_pylist()) == {int(s) for s in manifest["shards"]}

    pool = pq.read_table(work / R / "subsets/pool/ids.parquet")["example_id"].to_pylist()
    scores = pq.read_table(work / R / "scores/pds/scores.parquet")["example_id"].to_pylist()
    assert sorted(scores) == sorted(pool) and len(scores) == len(set(scores))
    for block in range(4):
        part = pq.read_table(work / R / f"scores/pds/parts/{block}.parquet")["example_id"].to_pylist()
        assert all((i >> 32) // 250 == block for i in part), block
    # Jobs that read the corpus name the manifest, not 1,000 shard files.
    side = json.loads((work / R / "models/random/s0/model/model.safetensors.prov.json").read_text())
    assert any(p.endswith("tokens/manifest.json") for p in side["inputs"])
    assert not any("tokens-" in p for p in side["inputs"])
    assert "--shards" not in " ".join(side["argv"])
