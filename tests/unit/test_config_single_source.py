"""A parameter is declared once: adding a config key to a method touches the schema, the default
config, the command's params class and its use — never a rule or an argparse flag
(docs/examples/made-up-key.diff is that change for a made-up key)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from winnow import params as P

ROOT = Path(__file__).resolve().parents[2]
DIFF = ROOT / "docs" / "examples" / "made-up-key.diff"
KNOB = {"type": "integer", "minimum": 0, "default": 0, "description": "an example key: how a parameter is added"}


@pytest.fixture
def knob(monkeypatch):
    """The made-up key added the way a maintainer would: schema (with its description), config.yaml
    and a field of the command's params class. Returns (schema, config)."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    schema, config = copy.deepcopy(schema), copy.deepcopy(config)
    schema["properties"]["mates"]["properties"]["made_up_knob"] = KNOB
    config["mates"]["made_up_knob"] = 3
    base = P.COMMANDS["mates pools"]
    monkeypatch.setitem(P.COMMANDS, "mates pools", base)  # restored after the test

    @P.command("mates pools", "mates")
    class PoolsParams(base):
        made_up_knob: int

    return schema, config


def test_the_key_validates_and_is_documented(knob, ref):
    schema, config = knob
    assert list(Draft202012Validator(schema).iter_errors(config)) == []
    bad = copy.deepcopy(config)
    bad["mates"]["made_up_knob"] = -1
    assert [e.json_path for e in Draft202012Validator(schema).iter_errors(bad)] == ["$.mates.made_up_knob"]
    row = [line for line in ref.render(schema, config).splitlines() if "`mates.made_up_knob`" in line]
    assert row == [
        "| `mates.made_up_knob` | integer | `0`; config.yaml: `3` | an example key: how a parameter is added |"
    ]


def test_the_rule_hands_it_to_the_command_and_the_command_reads_it(knob, tmp_path):
    from winnow.cli import build_parser

    _, config = knob
    # What the rule's `**cli_params("mates pools")` (its `cfg` param) renders (rules/common.smk).
    text = P.command_params(config, "mates pools")
    assert json.loads(text) == {"made_up_knob": 3, "probe_size": 1000, "seed": 0, "stage_size": 4000}
    argv = ["mates", "pools", "--pool", "p.parquet", "--part", "0", "--params", text, "--out", "o.parquet"]
    args = build_parser().parse_args(argv)
    assert args.params.made_up_knob == 3 and args.params.stage_size == 4000


def test_unknown_and_missing_keys_are_refused_by_name(knob):
    _, config = knob
    cls = P.COMMANDS["mates pools"]
    good = json.loads(P.command_params(config, "mates pools"))
    with pytest.raises(ValueError, match="unknown key 'typo'"):
        cls.from_dict({**good, "typo": 1})
    with pytest.raises(ValueError, match=r"missing key 'made_up_knob' \(config mates.made_up_knob\)"):
        cls.from_dict({k: v for k, v in good.items() if k != "made_up_knob"})
    with pytest.raises(ValueError, match="'seed'.*must be"):
        cls.from_dict({**good, "seed": "0"})


def test_only_declared_keys_travel():
    """A job's params are the keys its command reads: a new MATES stage (mates.stages) or another
    command's key changes no pool job's params, so Snakemake reruns none of them."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    before = P.command_params(config, "mates pools")
    config["mates"].update(stages=config["mates"]["stages"] + 1, n_probe=7, stage_steps=99)
    assert P.command_params(config, "mates pools") == before
    config["mates"]["stage_size"] += 1
    assert P.command_params(config, "mates pools") != before


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_no_rule_or_flag_mirrors_a_declared_key():
    from winnow.cli import build_parser

    parser = build_parser()
    rules = "\n".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.smk")))
    for name, cls in P.COMMANDS.items():
        flags = {s for a in _subparser(parser, *name.split())._actions for s in a.option_strings}
        assert "--params" in flags
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            assert flag not in flags, f"{name}: {flag} mirrors config key {cls.config_key(field)}"
        # cli_params (cfg and code) or, beside other params of the command, block_params
        assert f'params("{name}"' in rules, f"no rule hands {name} its params"


def test_the_example_diff_touches_schema_config_and_the_command_only():
    files = re.findall(r"^\+\+\+ b/(\S+)", DIFF.read_text(), flags=re.M)
    assert sorted(files) == [
        "config/config.yaml",
        "docs/configuration-reference.md",  # generated: python tools/config_reference.py
        "src/winnow/cli/mates.py",
        "src/winnow/params.py",
        "workflow/schemas/config.schema.yaml",
    ]


def test_schema_params_takes_each_default_from_the_schema_and_checks_what_is_given():
    """Callers without a workflow config (tests, benchmarks) get the schema's defaults, not a copy."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    corpus = schema["properties"]["corpus"]["properties"]
    got = json.loads(P.schema_params("data ingest", id_field="id"))
    assert got["id_field"] == "id"
    assert {k: got[k] for k in ("max_chars", "split_fractions", "domain_field")} == {
        k: corpus[k]["default"] for k in ("max_chars", "split_fractions", "domain_field")
    }
    with pytest.raises(KeyError, match="tokenize.seq_len has no schema default"):
        P.schema_params("data tokenize", num_shards=1, shards_per_block=1)
    with pytest.raises(ValueError, match="'vocab_size' .*tokenizer.vocab_size.* must be"):
        P.schema_params("data tokenizer", vocab_size="big")
