"""A local Llama-architecture model folder (sharded, with its own tokenizer) on the workflow spine:
its files are inputs (an edited shard replans its trainers), a tokenizer that does not fit it is
refused at parse time, and the spine trains from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, planned_jobs, smk, tiny_config, write_config

from winnow.provenance import path_sha256

MODEL = "results/tiny/models/random/s0/model/model.safetensors"


def local_config(folder, **tokenizer):
    cfg = tiny_config()
    cfg["methods"] = ["random"]
    cfg["model"]["pretrained"] = str(folder)
    cfg["tokenizer"].update({"kind": "local", "path": str(folder), **tokenizer})
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, config, model folder) after one real run of the spine up to the trained model."""
    base = tmp_path_factory.mktemp("local_model")
    folder = base / "tiny-llama"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "make_local_model.py"),
            "--arch",
            "llama",
            "--text",
            str(ROOT / "tests" / "data" / "tiny_corpus.jsonl.gz"),
            "--out",
            str(folder),
            "--vocab-size",
            "400",
            "--hidden",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--max-shard-size",
            "20KB",
        ],
        check=True,
        capture_output=True,
    )
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    work = base / "work"
    work.mkdir()
    cfg = write_config(base / "tiny.yaml", local_config(folder))
    plan = planned_jobs(smk(work, cfg, "-n"))  # the whole spine plans (no MissingInputException)
    assert plan["train_lm"] == 1 and plan["tokenizer"] == 1 and plan["all"] == 1
    smk(work, cfg, MODEL)
    return work, cfg, folder


def test_spine_trains_the_local_llama_with_its_tokenizer(trained):
    work, _, folder = trained
    out = json.loads((work / MODEL).with_name("config.json").read_text())
    own = json.loads((folder / "config.json").read_text())
    assert out["model_type"] == "llama" and out["vocab_size"] == own["vocab_size"]
    tok = json.loads((work / "results/tiny/tokenizer/tokenizer.json").read_text())
    assert tok["model"]["vocab"] == json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    side = json.loads((work / (MODEL + ".prov.json")).read_text())
    assert side["inputs"][str(folder)] == path_sha256(folder)  # the audit re-hashes the folder


def test_a_bpe_tokenizer_larger_than_the_embedding_is_refused(trained, tmp_path):
    _, _, folder = trained
    cfg = local_config(folder, kind="bpe", path=None)
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    rows = json.loads((folder / "config.json").read_text())["vocab_size"]
    out = proc.stdout + proc.stderr
    assert f"config key model.pretrained: embedding has {rows} rows but tokenizer" in out
    assert "has 1024 tokens (incl. specials)" in out


def test_a_lora_target_the_architecture_lacks_fails_at_parse_time(trained, tmp_path):
    _, _, folder = trained
    cfg = local_config(folder)
    cfg["less"]["base"] = str(folder)
    cfg["less"]["lora"]["target_modules"] = ["query_key_value"]
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key less.lora.target_modules: 'query_key_value' matches no module of a llama model" in out
    cfg["less"]["lora"]["target_modules"] = None  # null: the Llama projections
    cfg["methods"] = ["random", "less"]
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", "-p")
    assert '"target_modules":["q_proj","k_proj","v_proj","o_proj"]' in proc.stdout
    # base random: the spine's random-selection model, trained from model.pretrained (a Llama)
    cfg["less"]["base"] = "random"
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", "-p")
    assert '"target_modules":["q_proj","k_proj","v_proj","o_proj"]' in proc.stdout
    cfg["less"]["lora"]["target_modules"] = ["query_key_value"]
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert "'query_key_value' matches no module of a llama model" in proc.stdout + proc.stderr


def test_rewriting_a_weight_shard_replans_its_consumers(trained):
    """Last in the module: it edits the shared folder."""
    from safetensors.torch import load_file, save_file

    work, cfg, folder = trained
    assert planned_jobs(smk(work, cfg, "-n", MODEL)) == {}
    shard = sorted(folder.glob("model-*-of-*.safetensors"))[-1]
    before = path_sha256(folder)
    save_file({k: v * 1.5 for k, v in load_file(shard).items()}, str(shard), {"format": "pt"})
    assert path_sha256(folder) != before
    proc = smk(work, cfg, "-n", MODEL)
    assert planned_jobs(proc) == {"train_lm": 1}
    assert "updated input files" in proc.stdout
