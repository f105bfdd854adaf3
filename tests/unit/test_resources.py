"""Cluster requests sized from the job (winnow.resources): the parameter counts against real
models and files, the memory and time formula's floor, doubling and caps, and the ordering of
kinds by what they hold."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from winnow import resources as R
from winnow.models.build import build_model, count_parameters
from winnow.workflow_env import set_aside_logs

ROOT = Path(__file__).resolve().parents[2]


def _config(path="config/config.yaml") -> dict:
    return yaml.safe_load((ROOT / path).read_text())


@pytest.mark.parametrize("dims", [(128, 4, 512, 8192), (32, 2, 64, 1024), (48, 3, 200, 777)])
def test_neox_params_equals_the_built_models_count(dims):
    hidden, layers, inter, vocab = dims
    cfg = {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": 2,
        "intermediate_size": inter,
        "max_position_embeddings": 64,
    }
    model = build_model(cfg, vocab_size=vocab, eos_id=0, pad_id=0, seed=0)
    assert R.neox_params(hidden, layers, inter, vocab) == count_parameters(model)


def test_default_config_shape_is_the_default_model():
    cfg = _config()
    shape = R.model_shape(cfg)
    model = build_model(cfg["model"], vocab_size=cfg["tokenizer"]["vocab_size"], eos_id=0, pad_id=0, seed=0)
    assert shape.params == count_parameters(model)
    assert (shape.hidden, shape.layers, shape.vocab) == (128, 4, 8192)


def test_pretrained_folders_are_counted_from_safetensors_headers(tmp_path):
    cfg = _config()
    model = build_model(cfg["model"], vocab_size=1000, eos_id=0, pad_id=0, seed=0)
    n = count_parameters(model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    hf = {"hidden_size": 128, "num_hidden_layers": 4, "vocab_size": 1000}
    single = tmp_path / "single"
    single.mkdir()
    save_file(tensors, str(single / "model.safetensors"))
    (single / "config.json").write_text(json.dumps(hf))
    # Sharded: two files and the index that maps each tensor to its file.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(sharded / fname))
        weight_map.update(dict.fromkeys(part, fname))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(hf))
    for folder in (single, sharded):
        assert R.safetensors_params(folder) == n
        shape = R.model_shape({**cfg, "model": {**cfg["model"], "pretrained": str(folder)}})
        assert (shape.params, shape.vocab) == (n, 1000)


def test_a_missing_pretrained_folder_is_sized_from_the_config_block(tmp_path):
    cfg = _config()
    shape = R.model_shape({**cfg, "model": {**cfg["model"], "pretrained": str(tmp_path / "nope")}})
    assert shape == R.model_shape(cfg)


def test_memory_has_a_floor_doubles_on_a_retry_and_never_exceeds_the_cap():
    shape = R.Shape(params=1000, hidden=8, layers=1, vocab=10)
    job = {"batch": 1, "seq": 8}
    assert R.memory_mb("train", shape, job, gpu=False) == R.FLOOR_MB
    assert R.memory_mb("train", shape, job, attempt=2, gpu=False) == 2 * R.FLOOR_MB
    big = R.Shape(params=1_000_000_000, hidden=2048, layers=24, vocab=50_000)
    first = R.memory_mb("train", big, {"batch": 8, "seq": 2048})
    # 16 bytes per parameter (weights, gradients, two AdamW moments) and more, times 1.5.
    assert first >= 1.5 * 16e9 / R.MB
    assert R.memory_mb("train", big, {"batch": 8, "seq": 2048}, attempt=2, cap_mb=first + 1000) == first + 1000
    assert R.memory_mb("train", big, {"batch": 8, "seq": 2048}, cap_mb=10_000) == 10_000
    assert first % 500 == 0


def test_the_solver_and_oracle_hold_more_than_a_trainer_and_inference_less():
    sizes = R.job_sizes(_config())
    mem = {k: R.memory_mb(k, *sizes[k][:2], gpu=False) for k in R.KINDS}
    held = {k: R.held_bytes(k, *sizes[k][:2]) for k in R.KINDS}
    assert held["solver"] > held["train"] and held["oracle"] > held["train"]
    assert held["infer"] < held["train"]
    assert mem["solver"] >= mem["train"] >= mem["infer"]


def test_requests_cover_the_default_runs_measured_peaks():
    """Peak resident memory (Snakemake benchmark max_rss, MB) of the default run's CPU jobs,
    the largest job of each kind, 2 cores, fresh clone of 0b634f2, 2026-12-05): every CPU request
    computed from the default config is above it."""
    measured = {
        "solver": 1820,  # pds_solve
        "features": 1782,  # bakeoff_less_features
        "oracle": 1371,  # bakeoff_mates_oracle
        "train": 1001,  # train_lm, pds_init
        "lora": 995,  # less_warmup
        "infer": 900,  # eval_harness
        "scorer": 731,  # fit_scorer
    }
    sizes = R.job_sizes(_config())
    for kind, peak in measured.items():
        assert R.memory_mb(kind, *sizes[kind][:2], gpu=False) > peak, kind


def test_runtime_has_a_floor_per_kind_doubles_and_is_capped():
    sizes = R.job_sizes(_config())
    for kind in R.KINDS:
        shape, _, tokens = sizes[kind]
        one = R.runtime_min(kind, shape, tokens, gpu=False)
        assert one > R.RUNTIME_FLOOR_MIN[kind]
        assert R.runtime_min(kind, shape, tokens, attempt=2, gpu=False) == 2 * one
        assert R.runtime_min(kind, shape, tokens, attempt=3, gpu=False, cap_min=one + 1) == one + 1
        assert R.runtime_min(kind, shape, tokens, gpu=True) <= one


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown job kind"):
        R.held_bytes("nope", R.Shape(1, 1, 1, 1), {"batch": 1, "seq": 1})


def test_set_aside_logs_moves_existing_logs_of_jobs_to_prev(tmp_path):
    old = tmp_path / "a.log"
    old.write_text("earlier run\n")
    absent = tmp_path / "b.log"
    jobs = [types.SimpleNamespace(log=[str(old)]), types.SimpleNamespace(log=[str(absent)]), types.SimpleNamespace()]
    assert set_aside_logs(jobs) == [str(old)]
    assert not old.exists() and not absent.exists()
    assert (tmp_path / "a.log.prev").read_text() == "earlier run\n"


def test_gpu_jobs_leave_activations_to_the_device():
    big = R.Shape(params=160_000_000, hidden=768, layers=12, vocab=50_304)
    job = {"batch": 8, "seq": 2048}
    cpu, gpu = R.held_bytes("train", big, job), R.held_bytes("train", big, job, gpu=True)
    assert gpu == 16 * big.params and cpu - gpu == 8 * 2048 * (12 * 768 * 40 + 50_304 * 12)
