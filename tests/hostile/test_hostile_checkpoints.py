"""Corrupt model files and checkpoints (issue 17, items 7b and 7c): every load error names the
file, and a corrupt newest checkpoint does not block the resume from the one before it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from _neox import one_thread, random_store, tiny_neox  # noqa: F401 (one_thread: autouse fixture)
from _tiny import offline_env


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def saved_model(tmp_path, monkeypatch) -> Path:
    """A tiny GPT-NeoX saved as a checkpoint folder (config, weights, optimizer, trainer state)."""
    offline_env(tmp_path, monkeypatch)
    from winnow.models.checkpoint import save_checkpoint

    model = tiny_neox(50, 10, 0, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[2, 3, 4]])).logits.sum().backward()
    opt.step()
    return save_checkpoint(tmp_path / "ckpt/step-00000001", model, opt, {"step": 1})


# ---------------------------------------------------------------- 7b: load errors name the file


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_truncated_model_file_is_named_by_load_pretrained(saved_model, name):
    from winnow.models.build import load_pretrained

    _truncate(saved_model / name)
    with pytest.raises(Exception) as info:
        load_pretrained(saved_model)
    assert str(saved_model / name) in str(info.value), repr(info.value)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer_state.json"])
def test_a_truncated_checkpoint_file_is_named_by_load_checkpoint(saved_model, name):
    from winnow.models.checkpoint import load_checkpoint

    model = tiny_neox(50, 10, 0, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _truncate(saved_model / name)
    with pytest.raises(Exception) as info:
        load_checkpoint(saved_model, model, opt)
    assert str(saved_model / name) in str(info.value), repr(info.value)


def test_weights_of_another_model_are_named(saved_model):
    from winnow.models.checkpoint import load_weights

    other = tiny_neox(60, 10, 0, dtype=torch.float32)  # another vocabulary: shapes differ
    with pytest.raises(Exception) as info:
        load_weights(other, saved_model)
    assert str(saved_model / "model.safetensors") in str(info.value), repr(info.value)


def test_a_truncated_tokenizer_file_is_named(tmp_path, monkeypatch):
    offline_env(tmp_path, monkeypatch)
    from _tiny import train_tokenizer

    from winnow.data.tokenizer import load

    tok = train_tokenizer(["some words to learn a few merges from"] * 20, vocab_size=280)
    tok.save_pretrained(tmp_path / "tok")
    _truncate(tmp_path / "tok/tokenizer.json")
    with pytest.raises(Exception) as info:
        load(tmp_path / "tok")
    assert str(tmp_path / "tok") in str(info.value), repr(info.value)


def test_a_truncated_scorer_is_named(saved_model):
    from winnow.scorer import load_scorer

    folder = saved_model
    (folder / "scorer.json").write_text(json.dumps({"config": {"pooling": "mean", "dropout": 0.0}}))
    _truncate(folder / "model.safetensors")
    with pytest.raises(Exception) as info:
        load_scorer(folder)
    assert str(folder / "model.safetensors") in str(info.value), repr(info.value)


# ---------------------------------------------------------------- 7c: resume past a corrupt checkpoint


def _run(tmp_path: Path, name: str, model_seed: int = 0, **kw):
    """In process: 9 steps on 10 random examples, a checkpoint every 3 steps (3 and 6 kept)."""
    from winnow.train.trainer import TrainConfig, train

    store, ids = random_store(tmp_path, 10, 10, 50, seed=0)
    model = tiny_neox(50, 10, 0, seed=model_seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = {
        "steps": 9,
        "batch_size": 4,
        "micro_batch_size": 2,
        "seq_len": 10,
        "lr": 1e-2,
        "precision": "fp32",
        "log_every_s": 1e9,
        "ckpt_every": 3,
        "keep_checkpoints": 3,
        **kw,
    }
    summary = train(model, store, ids, TrainConfig(**cfg), tmp_path / name / "model", tmp_path / name / "ckpt", 0)
    return model, init, summary


def _same(a: torch.nn.Module, b: dict | torch.nn.Module) -> bool:
    b = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("broken", ["model.safetensors", "optimizer.safetensors", "trainer_state.json"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, broken):
    whole, _, summary = _run(tmp_path, "whole")
    assert summary["resumed_at"] == 0
    shutil.copytree(tmp_path / "whole/ckpt", tmp_path / "again/ckpt")
    bad = tmp_path / "again/ckpt/step-00000006" / broken
    _truncate(bad)
    with caplog.at_level(logging.WARNING, logger="winnow.train.trainer"):
        again, _, summary = _run(tmp_path, "again", model_seed=5)
    assert summary["resumed_at"] == 3
    assert _same(again, whole)  # the same weights as the uninterrupted run
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(bad) in w for w in warnings), warnings


def test_no_loadable_checkpoint_starts_from_scratch_with_untouched_weights(tmp_path, caplog):
    _run(tmp_path, "whole")
    fresh, _, _ = _run(tmp_path, "fresh", model_seed=5)
    shutil.copytree(tmp_path / "whole/ckpt", tmp_path / "again/ckpt")
    # step 6: weights fine, optimizer truncated (the weights must not leak into a fresh start);
    # step 3: weights truncated
    _truncate(tmp_path / "again/ckpt/step-00000006/optimizer.safetensors")
    _truncate(tmp_path / "again/ckpt/step-00000003/model.safetensors")
    with caplog.at_level(logging.WARNING, logger="winnow.train.trainer"):
        again, _, summary = _run(tmp_path, "again", model_seed=5)
    assert summary["resumed_at"] == 0
    assert _same(again, fresh)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "step-00000006/optimizer.safetensors" in text and "step-00000003/model.safetensors" in text
    assert "from scratch" in text
