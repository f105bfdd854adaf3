"""An artifact never decides to run code (issue 17, item 6): a scorer folder whose scorer.json says
``trust_remote_code: true``, with an ``auto_map`` in its config.json and a Python file beside it,
is loaded without importing that file. Only the workflow config may opt in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tiny import offline_env

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("the artifact's code ran")
from transformers import GPTNeoXConfig, GPTNeoXModel


class EvilConfig(GPTNeoXConfig):
    model_type = "evil_neox"


class EvilModel(GPTNeoXModel):
    config_class = EvilConfig
"""


def _scorer_folder(root: Path, marker: Path, model_type: str = "gpt_neox") -> Path:
    """A scorer folder (as fit_scorer writes it) that asks for remote code three ways."""
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXModel

    from winnow.scorer import ScorerModel

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = ScorerModel(GPTNeoXModel(config), 16, "mean", 0.0)
    folder = root / "scorer"
    folder.mkdir()
    config.save_pretrained(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    meta = {
        "format": 1,
        "config": {"trust_remote_code": True, "pooling": "mean", "dropout": 0.0, "max_len": 8},
        "pad_id": 0,
    }
    (folder / "scorer.json").write_text(json.dumps(meta))
    return folder


def test_a_scorer_folder_cannot_opt_itself_into_remote_code(tmp_path, monkeypatch):
    offline_env(tmp_path, monkeypatch)
    from winnow.scorer import load_scorer

    marker = tmp_path / "marker.txt"
    folder = _scorer_folder(tmp_path, marker)
    model, meta = load_scorer(folder)  # a known model_type: loads with the library's own class
    assert not marker.exists(), "loading the scorer ran the folder's own Python file"
    assert type(model.backbone).__name__ == "GPTNeoXModel"
    with torch.no_grad():
        out = model(torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long))
    assert out.shape == (1,)


def test_an_unknown_architecture_fails_clearly_without_running_its_code(tmp_path, monkeypatch):
    offline_env(tmp_path, monkeypatch)
    from winnow.scorer import load_scorer

    marker = tmp_path / "marker.txt"
    folder = _scorer_folder(tmp_path, marker, model_type="evil_neox")
    with pytest.raises(Exception) as info:
        load_scorer(folder)
    assert not marker.exists(), "loading the scorer ran the folder's own Python file"
    assert str(folder) in str(info.value)
    assert "trust_remote_code" in str(info.value)
