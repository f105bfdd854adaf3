"""The trainer: exact resume after a kill, name-keyed optimizer state, DDP equals one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from winnow.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"hidden_size": 48, "num_layers": 2, "num_heads": 2, "intermediate_size": 96, "max_position_embeddings": 64}


def _train_cfg(**kw) -> dict:
    cfg = {
        "steps": 40,
        "batch_size": 8,
        "micro_batch_size": 4,
        "lr": 3e-3,
        "schedule": "cosine",
        "warmup_steps": 3,
        "ckpt_every": 5,
        "keep_checkpoints": 2,
        "precision": "fp32",
        "seed": 0,
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Ingest + tokenizer + one shard + examples + an id list, through the CLI functions."""
    d = tmp_path_factory.mktemp("trainer")
    os.environ.setdefault("HF_HOME", str(d / "hf"))
    corpus = ROOT / "tests/data/tiny_corpus.jsonl.gz"
    p = {
        k: d / v
        for k, v in {
            "docs": "docs.parquet",
            "rejects": "rejects.parquet",
            "ingest": "ingest.json",
            "tok": "tok/tokenizer.json",
            "block": "tokens/block-0",
            "examples": "tokens/examples.parquet",
            "manifest": "tokens/manifest.json",
            "ids": "ids.parquet",
        }.items()
    }
    cli(
        [
            "data",
            "ingest",
            "--inputs",
            str(corpus),
            "--id-field",
            "id",
            "--docs",
            str(p["docs"]),
            "--rejects",
            str(p["rejects"]),
            "--manifest",
            str(p["ingest"]),
        ]
    )
    cli(
        [
            "data",
            "tokenizer",
            "--docs",
            str(p["docs"]),
            "--vocab-size",
            "512",
            "--max-train-chars",
            "300000",
            "--out",
            str(p["tok"]),
        ]
    )
    cli(
        [
            "data",
            "tokenize",
            "--docs",
            str(p["docs"]),
            "--tokenizer",
            str(p["tok"]),
            "--block",
            "0",
            "--shards-per-block",
            "1",
            "--num-shards",
            "1",
            "--seq-len",
            "64",
            "--out",
            str(p["block"]),
        ]
    )
    cli(
        [
            "data",
            "merge-examples",
            "--blocks",
            str(p["block"]),
            "--shards-per-block",
            "1",
            "--num-shards",
            "1",
            "--tokenizer",
            str(p["tok"]),
            "--seq-len",
            "64",
            "--out",
            str(p["examples"]),
            "--manifest",
            str(p["manifest"]),
        ]
    )
    cli(
        [
            "data",
            "sample-subset",
            "--examples",
            str(p["examples"]),
            "--splits",
            "train",
            "--n",
            "400",
            "--seed",
            "0",
            "--out",
            str(p["ids"]),
        ]
    )
    return p


def _train_cmd(data: dict, out: Path, cfg: dict, launcher: list[str] | None = None) -> list[str]:
    return [
        *(launcher or [sys.executable]),
        "-m",
        "winnow",
        "train",
        "lm",
        "--examples",
        str(data["examples"]),
        "--manifest",
        str(data["manifest"]),
        "--tokenizer",
        str(data["tok"]),
        "--ids",
        str(data["ids"]),
        "--model-config",
        json.dumps(MODEL),
        "--train-config",
        json.dumps(cfg),
        "--ckpt-root",
        str(out / "checkpoints"),
        "--out",
        str(out / "model/model.safetensors"),
    ]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(tmp / "hf"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    cfg = _train_cfg(steps=60)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(data, whole, cfg), check=True, env=_env(tmp_path), capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(data, killed, cfg), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not any((killed / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model/model.safetensors").exists(), "run finished before the kill: make it longer"
    assert any((killed / "checkpoints").glob("step-*")), "no checkpoint before the kill"

    rerun = subprocess.run(
        _train_cmd(data, killed, cfg), check=True, env=_env(tmp_path), capture_output=True, text=True
    )
    state = json.loads((killed / "model/trainer_state.json").read_text())
    assert state["summary"]["resumed_at"] > 0, rerun.stderr[-2000:]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = _tensors(whole / "model" / name), _tensors(killed / "model" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    # the training curve of the resumed run is the uninterrupted run's, one row per step
    whole_curve = json.loads((whole / "model/trainer_state.json").read_text())["history"]
    assert [r[0] for r in whole_curve] == list(range(1, 61))
    assert state["history"] == whole_curve


def test_checkpoints_from_another_config_are_not_resumed(data, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(data, out, _train_cfg(steps=12)), check=True, env=_env(tmp_path), capture_output=True)
    stale = sorted((out / "checkpoints").glob("step-*"))
    assert stale
    proc = subprocess.run(
        _train_cmd(data, out, _train_cfg(steps=12, lr=1e-3)),
        check=True,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert "another configuration; starting over" in proc.stderr
    assert json.loads((out / "model/trainer_state.json").read_text())["summary"]["resumed_at"] == 0


def test_optimizer_state_is_keyed_by_parameter_name(data, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(data, out, _train_cfg(steps=6)), check=True, env=_env(tmp_path), capture_output=True)
    weights = _tensors(out / "model/model.safetensors")
    opt = _tensors(out / "model/optimizer.safetensors")
    params = [
        k
        for k in weights
        if not k.endswith(("masked_bias", ".bias_buffer")) and "rotary" not in k and "inv_freq" not in k
    ]
    for name in params:
        assert opt[f"{name}.exp_avg"].shape == weights[name].shape
        assert opt[f"{name}.exp_avg_sq"].shape == weights[name].shape
        assert float(opt[f"{name}.step"]) == 6.0
        assert torch.all(opt[f"{name}.exp_avg_sq"] >= 0)
    # v is a running mean of squared gradients: after 6 steps it cannot be all zero anywhere big.
    assert float(opt["gpt_neox.embed_in.weight.exp_avg_sq"].sum()) > 0


def test_two_process_ddp_matches_one_process(data, tmp_path):
    cfg = _train_cfg(steps=6, ckpt_every=100)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train_cmd(data, one, cfg), check=True, env=_env(tmp_path), capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    # torchrun runs `python -m winnow` when given `-m`; drop our own interpreter from the command.
    cmd = _train_cmd(data, two, cfg, launcher=launcher)
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((two / "model/trainer_state.json").read_text())
    assert state["summary"]["world_size"] == 2
    a, b = _tensors(one / "model/model.safetensors"), _tensors(two / "model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_from_loads_the_exact_optimizer_state(data, tmp_path, monkeypatch):
    """A MATES stage (or an ablation component) continues from a previous run's checkpoint: right
    after loading, every AdamW moment and step count equals the saved ones, bit for bit."""
    import numpy as np

    from winnow.data.tokenizer import load
    from winnow.io.tables import IDS, read_table
    from winnow.models.build import build_model
    from winnow.models.checkpoint import optimizer_state_by_name
    from winnow.train import trainer
    from winnow.train.batches import open_store

    prev = tmp_path / "prev"
    subprocess.run(_train_cmd(data, prev, _train_cfg(steps=5)), check=True, env=_env(tmp_path), capture_output=True)
    saved = _tensors(prev / "model/optimizer.safetensors")

    captured = {}
    real_load = trainer.load_checkpoint

    def spy(ckpt_dir, model, optimizer):
        state = real_load(ckpt_dir, model, optimizer)
        # clone: on CPU the by-name view aliases the optimizer's tensors, which the next step updates
        captured.update({k: v.clone() for k, v in optimizer_state_by_name(model, optimizer).items()})
        return state

    monkeypatch.setattr(trainer, "load_checkpoint", spy)
    torch.set_num_threads(1)
    tok = load(data["tok"].parent)
    store, _ = open_store(data["examples"], data["manifest"])
    ids = read_table(data["ids"], IDS)["example_id"].to_numpy()
    model = build_model(MODEL, len(tok), tok.eos_token_id, tok.pad_token_id, seed=123)
    cfg = trainer.TrainConfig(seq_len=64, **_train_cfg(steps=1, schedule="constant", warmup_steps=0))
    trainer.train(model, store, np.asarray(ids), cfg, tmp_path / "next/model", tmp_path / "next/ckpt", tok.pad_token_id,
                  init="resume", resume_from=prev / "model")
    assert captured.keys() == saved.keys() and captured
    for k in saved:
        assert torch.equal(captured[k], saved[k]), k
    after = _tensors(tmp_path / "next/model/optimizer.safetensors")
    assert float(after["gpt_neox.embed_in.weight.step"]) == 6.0  # the step count carries on
