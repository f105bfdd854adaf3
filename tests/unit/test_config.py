"""workflow/schemas/config.schema.yaml: accepts the shipped configs, rejects typos and bad values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
CONFIGS = [ROOT / "config" / "config.yaml", *sorted((ROOT / "tests" / "configs").glob("*.y*ml"))]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def config() -> dict:
    return copy.deepcopy(load(ROOT / "config" / "config.yaml"))


def errors(cfg: dict) -> list[str]:
    """Every error as jsonschema prints it (message + path), as Snakemake's validate shows it."""
    return [f"{e.message} @ {e.json_path}" for e in VALIDATOR.iter_errors(cfg)]


def test_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate(path):
    assert errors(load(path)) == []


def test_misspelled_top_level_key(config):
    config["trian"] = config.pop("train")
    errs = errors(config)
    assert any("'trian' was unexpected" in e for e in errs), errs
    assert any("'train' is a required property" in e for e in errs), errs


def test_extra_top_level_key(config):
    config["seed"] = 1
    errs = errors(config)
    assert len(errs) == 1 and "'seed' was unexpected" in errs[0]


@pytest.mark.parametrize(
    "block,good,bad",
    [
        ("train", "steps", "stpes"),
        ("corpus", "text_field", "txt_field"),
        ("tokenize", "seq_len", "seqlen"),
        ("eval", "n_choice", "n_choices"),
        ("model", "hidden_size", "hiden_size"),
    ],
)
def test_misspelled_nested_key(config, block, good, bad):
    config[block][bad] = config[block].pop(good)
    errs = errors(config)
    assert any(f"'{bad}' was unexpected" in e and f"$.{block}" in e for e in errs), errs


def test_misspelled_key_in_a_subset_and_select(config):
    config["subsets"]["pool"]["sead"] = config["subsets"]["pool"].pop("seed")
    config["select"]["random"]["temprature"] = 0.5
    errs = errors(config)
    assert any("'sead' was unexpected" in e and "$.subsets.pool" in e for e in errs), errs
    assert any("'temprature' was unexpected" in e and "$.select.random" in e for e in errs), errs


@pytest.mark.parametrize(
    "path,value,expect",
    [
        (("train", "steps"), "300", "'300' is not of type 'integer'"),
        (("train", "lr"), "fast", "'fast' is not of type 'number'"),
        (("tokenize", "num_shards"), 2.5, "2.5 is not of type 'integer'"),
        (("corpus", "inputs"), "data/x.jsonl", "is not of type 'array'"),
        (("train", "schedule"), "lin", "'lin' is not one of"),
        (("tokenize", "seq_len"), 1, "1 is less than the minimum of 2"),
        (("methods",), ["random", "random"], "has non-unique elements"),
        (("run",), "has space", "does not match"),
    ],
)
def test_wrong_type_or_value_names_the_key(config, path, value, expect):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errs = errors(config)
    where = "$." + ".".join(path)
    assert any(expect in e and e.endswith(f"@ {where}") for e in errs), errs


def test_subset_with_both_n_and_fraction(config):
    config["subsets"]["pool"]["n"] = 100  # pool already has fraction
    errs = errors(config)
    assert any("$.subsets.pool" in e and "'n'" in e and "'fraction'" in e for e in errs), errs
    del config["subsets"]["pool"]["fraction"]
    assert errors(config) == []  # n alone is fine
    del config["subsets"]["pool"]["n"]
    assert any("$.subsets.pool" in e for e in errors(config))  # neither is an error too


def test_select_with_both_ratio_and_k(config):
    config["select"]["random"]["k"] = 10
    assert any("$.select.random" in e for e in errors(config))


def test_missing_required_subset_pool(config):
    config["subsets"] = {"warmup": {"fraction": 0.1, "seed": 0}}
    assert any("'pool' is a required property" in e for e in errors(config))


def test_ablation_lr_defaults_to_the_seeds_final_lr(config):
    """ablation.lr: null (the default) = the seed's final lr; a positive number overrides it."""
    assert config["ablation"]["lr"] is None
    del config["ablation"]["lr"]
    assert errors(config) == []
    config["ablation"]["lr"] = 1e-3
    assert errors(config) == []
    config["ablation"]["lr"] = 0
    assert any(e.endswith("@ $.ablation.lr") for e in errors(config)), errors(config)
