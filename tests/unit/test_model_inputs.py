"""Local model folders as inputs: their file lists (single and sharded), vocabulary checks and
LoRA target defaults per architecture (winnow.models.local)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from winnow.models import local

TEXTS = ["the quick brown fox jumps over the lazy dog", "in the beginning was the word", "def f(x): return x"] * 20


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same tiny Llama (same seed, same tokenizer) written as one file and as shards."""
    root = tmp_path_factory.mktemp("local")
    single = local.make_local_model(root / "single", "llama", TEXTS, vocab_size=300, hidden=16, layers=1, heads=2)
    sharded = local.make_local_model(
        root / "sharded", "llama", TEXTS, vocab_size=300, hidden=16, layers=1, heads=2, max_shard_size="10KB"
    )
    return {"single": single, "sharded": sharded}


def test_single_file_folder_lists_config_weights_and_tokenizer(folders):
    names = [p.name for p in local.model_files(folders["single"])]
    assert names[:3] == ["config.json", "generation_config.json", "model.safetensors"]
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(names)


def test_sharded_folder_lists_the_index_and_every_shard(folders):
    folder = folders["sharded"]
    files = local.model_files(folder)
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    assert [p.name for p in files if p.name.startswith("model-")] == shards
    assert folder / local.INDEX in files
    assert not (folder / "model.safetensors").exists()


def test_a_shard_the_index_names_is_listed_even_when_missing(folders, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folders["sharded"], copy)
    gone = sorted(copy.glob("model-*.safetensors"))[0]
    gone.unlink()
    assert gone in local.model_files(copy)  # Snakemake then reports it missing, before any job


def test_sharded_and_single_file_load_to_the_same_model(folders):
    from winnow.models.build import load_pretrained

    x = torch.tensor([[3, 7, 11, 19]])
    a = load_pretrained(folders["single"]).eval()
    b = load_pretrained(folders["sharded"]).eval()
    assert type(a).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


def test_tokenizer_size_counts_specials_and_fits_the_embedding(folders):
    n, specials = local.tokenizer_size(folders["single"])
    cfg = json.loads((folders["single"] / "config.json").read_text())
    assert n == cfg["vocab_size"]
    assert specials["eos_token"] == cfg["eos_token_id"] and specials["pad_token"] == cfg["pad_token_id"]
    local.check_vocab("model.pretrained", folders["single"], n, specials)  # its own tokenizer fits


def test_vocab_mismatch_names_the_key_and_both_numbers(folders):
    rows = json.loads((folders["single"] / "config.json").read_text())["vocab_size"]
    with pytest.raises(ValueError) as e:
        local.check_vocab("model.pretrained", folders["single"], 1024, {}, "tokenizer (tokenizer.kind bpe)")
    msg = str(e.value)
    assert msg.startswith("config key model.pretrained:")
    assert f"embedding has {rows} rows" in msg and "has 1024 tokens (incl. specials)" in msg


def test_special_id_beyond_the_embedding_is_refused(folders, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(folders["single"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["pad_token_id"] = cfg["vocab_size"] + 5
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=rf"pad_token_id is {cfg['vocab_size'] + 5}, beyond the embedding's {cfg['vocab_size']} rows"
    ):
        local.check_vocab("model.pretrained", copy, 10)
    with pytest.raises(ValueError, match="eos_token has id 400"):
        local.check_vocab("less.base", folders["single"], 10, {"eos_token": 400})


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
def test_lora_defaults_name_real_modules_of_each_architecture(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = local.train_tokenizer(TEXTS, 280)
    cfg = local.hf_config(arch, len(tok), 16, 1, 2, 32, tok)
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    targets = local.lora_targets("less.lora.target_modules", tmp_path, None)
    assert targets == local.LORA_DEFAULTS[arch]
    leaves = {name.rsplit(".", 1)[-1] for name, _ in AutoModelForCausalLM.from_config(cfg).named_modules()}
    assert set(targets) <= leaves
    assert set(local.ARCH_MODULES[arch]) <= leaves  # every name the check accepts exists


def test_null_targets_without_a_folder_are_the_neox_defaults():
    assert local.lora_targets("less.lora.target_modules", None, None) == ["query_key_value", "dense"]


def test_a_module_name_of_another_architecture_is_refused_naming_the_key(folders):
    with pytest.raises(ValueError) as e:
        local.lora_targets("less.lora.target_modules", folders["single"], ["q_proj", "query_key_value"])
    msg = str(e.value)
    assert "config key less.lora.target_modules" in msg and "'query_key_value'" in msg and "llama" in msg
    assert local.lora_targets("less.lora.target_modules", folders["single"], ["q_proj", "v_proj"]) == [
        "q_proj",
        "v_proj",
    ]


def test_a_folder_without_weights_or_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="config key model.pretrained: .* neither model.safetensors"):
        local.model_files(tmp_path, "model.pretrained")
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        local.model_files(tmp_path / "nope", "model.pretrained")


def test_tool_builds_a_sharded_qwen2_folder(tmp_path):
    import importlib.util

    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXTS))
    spec = importlib.util.spec_from_file_location("mlm", Path(__file__).parents[2] / "tools" / "make_local_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "q"
    tool.main(
        [
            "--arch",
            "qwen2",
            "--text",
            str(text),
            "--out",
            str(out),
            "--vocab-size",
            "280",
            "--hidden",
            "16",
            "--layers",
            "1",
            "--max-shard-size",
            "10KB",
        ]
    )
    assert local.model_type(out) == "qwen2"
    assert len([p for p in local.model_files(out) if p.name.startswith("model-")]) > 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|assistant|>\n") and "hi<|endoftext|>" in chat


def test_a_sharded_llama_folder_is_a_scorer_backbone(folders):
    """Scoring with the local model: its sharded folder loads as the encoder of a scorer."""
    from winnow.scorer import ScorerConfig, build_scorer

    model = build_scorer(ScorerConfig(pretrained=str(folders["sharded"]), dropout=0.0), None, 0, 1).eval()
    ids = torch.tensor([[3, 7, 11, 1], [5, 9, 1, 1]])
    with torch.no_grad():
        scores = model(ids, (ids != 1).long())
    assert scores.shape == (2,) and torch.isfinite(scores).all()
