"""Model construction and checkpoint files: local folders only, safetensors only, name-keyed state."""

from __future__ import annotations

import json

import pytest
import torch

from winnow.models.build import build_model, count_parameters, load_pretrained
from winnow.models.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_state_by_name,
    save_checkpoint,
)

CFG = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}


def _model(seed=0):
    return build_model(CFG, vocab_size=100, eos_id=0, pad_id=1, seed=seed)


def test_seeded_init_is_reproducible_and_seed_dependent():
    a, b, c = _model(0), _model(0), _model(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == 100
    assert count_parameters(a) == sum(p.numel() for p in a.parameters())


def _step(model, opt):
    x = torch.randint(0, 100, (2, 8))
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_checkpoint_round_trip_restores_weights_and_moments(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _step(model, opt)
    save_checkpoint(tmp_path / "step-00000001", model, opt, {"step": 1})
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"

    fresh = _model(seed=5)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path / "step-00000001", fresh, fresh_opt)
    assert state == {"step": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    before, after = optimizer_state_by_name(model, opt), optimizer_state_by_name(fresh, fresh_opt)
    assert before.keys() == after.keys() and before
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # One more identical step from both gives identical weights: the optimizer state is complete.
    torch.manual_seed(0)
    _step(model, opt)
    torch.manual_seed(0)
    _step(fresh, fresh_opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_latest_checkpoint_ignores_temp_and_incomplete_folders(tmp_path):
    (tmp_path / "step-00000009").mkdir()  # no trainer_state.json: a half-written checkpoint
    (tmp_path / ".tmp-step-00000010.abc").mkdir()
    (tmp_path / "step-00000003").mkdir()
    (tmp_path / "step-00000003" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000003"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_pretrained_must_be_a_local_folder():
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_pretrained("EleutherAI/pythia-160m")


def test_pretrained_folder_loads_from_safetensors(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "m", model, None, {"step": 0})
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not list((tmp_path / "m").glob("*.bin"))
    loaded = build_model({**CFG, "pretrained": str(tmp_path / "m")}, 100, 0, 1, seed=9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "gpt_neox"
