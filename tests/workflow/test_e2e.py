"""The tiny workflow end to end, for real, then what a second run and config edits re-plan."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import planned_jobs, smk, tiny_config, write_config

pytestmark = pytest.mark.slow
R = "results/tiny"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("e2e")
    work = base / "work"
    work.mkdir()
    cfg = write_config(base / "tiny.yaml", tiny_config())
    smk(work, cfg)
    return work, cfg


def test_outputs_of_every_layer_exist(finished):
    work, _ = finished
    for rel in (
        "data/docs.parquet",
        "data/rejects.parquet",
        "data/ingest.json",
        "tokenizer/tokenizer.json",
        "tokens/tokens-0.bin",
        "tokens/examples.parquet",
        "tokens/manifest.json",
        "subsets/pool/ids.parquet",
        "selected/random/s0/ids.parquet",
        "models/random/s0/model/model.safetensors",
        "models/random/s0/model/optimizer.safetensors",
        "eval/random/s0/ppl.json",
        "eval/random/s0/harness.json",
        "eval/summary.tsv",
    ):
        path = work / R / rel
        assert path.exists(), rel
        side = json.loads(Path(f"{path}.prov.json").read_text())
        assert side["code"]["hash"] and side["sha256"], rel


def test_nothing_is_lost_at_ingest(finished):
    work, _ = finished
    manifest = json.loads((work / R / "data/ingest.json").read_text())
    docs = pq.read_table(work / R / "data/docs.parquet")
    rejects = pq.read_table(work / R / "data/rejects.parquet")
    assert manifest["records"] == docs.num_rows + rejects.num_rows
    reasons = set(rejects["reason"].to_pylist())
    assert reasons == {
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "missing_text",
        "empty_text",
        "over_length",
        "duplicate_id",
        "bad_messages",
    }
    assert all(rejects["reason"].to_pylist()) and all(r is not None for r in rejects["raw"].to_pylist())


def test_the_model_trained_on_exactly_the_selection(finished):
    work, _ = finished
    state = json.loads((work / R / "models/random/s0/model/trainer_state.json").read_text())
    assert state["step"] == 12
    selected = pq.read_table(work / R / "selected/random/s0/ids.parquet")["example_id"].to_numpy()
    pool = pq.read_table(work / R / "subsets/pool/ids.parquet")["example_id"].to_numpy()
    assert len(selected) == len(pool) // 2
    side = json.loads((work / R / "models/random/s0/model/model.safetensors.prov.json").read_text())
    ids_path = f"{R}/selected/random/s0/ids.parquet"
    assert ids_path in side["inputs"]


def test_eval_outputs_have_numbers(finished):
    work, _ = finished
    ppl = json.loads((work / R / "eval/random/s0/ppl.json").read_text())["domains"]
    assert ppl["__all__"]["ppl_token"] > 1 and ppl["__all__"]["n_tokens"] > 0
    harness = json.loads((work / R / "eval/random/s0/harness.json").read_text())
    assert 0 <= harness["winnow_choice"]["acc"] <= 1
    assert harness["n_samples"]["winnow_lastword"] > 0


def test_second_dry_run_has_nothing_to_do(finished):
    work, cfg = finished
    assert planned_jobs(smk(work, cfg, "-n")) == {}


def test_changing_the_ratio_replans_only_select_and_what_follows(finished, tmp_path):
    work, _ = finished
    cfg = tiny_config()
    cfg["select"]["random"]["ratio"] = 0.25
    jobs = planned_jobs(smk(work, write_config(tmp_path / "r.yaml", cfg), "-n"))
    assert jobs == {"select": 1, "train_lm": 1, "eval_ppl": 1, "eval_harness": 1, "eval_table": 1, "all": 1}


def test_changing_eval_docs_replans_only_perplexity(finished, tmp_path):
    work, _ = finished
    cfg = tiny_config()
    cfg["eval"]["max_docs_per_domain"] = 2
    jobs = planned_jobs(smk(work, write_config(tmp_path / "e.yaml", cfg), "-n"))
    assert jobs == {"eval_ppl": 1, "eval_table": 1, "all": 1}
