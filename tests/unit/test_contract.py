"""The data contract: every problem kind names its config key and what exists instead."""

from __future__ import annotations

import numpy as np
import pytest

from winnow.data import contract
from winnow.data.subsets import draw_subset

# A user's corpus: three domains none of the defaults name.
DOCS = {
    "train": {"debdocs": 40, "licenses": 30, "pydoc": 20},
    "val": {"debdocs": 3, "licenses": 2},
    "test": {"debdocs": 3, "pydoc": 2},
}
EXAMPLES = {
    "train": {"debdocs": 300, "licenses": 200, "pydoc": 27},
    "val": {"debdocs": 9, "licenses": 4},
    "test": {"debdocs": 8, "pydoc": 5},
}
STATS = {"docs": DOCS, "examples": EXAMPLES}


def _cfg(**subsets):
    return {"subsets": subsets, "methods": ["random"], "eval": {"split": "test"}}


def test_a_config_the_corpus_serves_has_no_problem():
    cfg = _cfg(
        pool={"splits": ["train"], "fraction": 1.0, "seed": 0},
        t={"splits": ["val"], "domains": ["debdocs"], "n": 9, "seed": 1},
    )
    assert contract.check(cfg, STATS) == []


def test_missing_domain_names_key_and_the_corpus_domains():
    cfg = _cfg(pds_target={"splits": ["val"], "domains": ["shakespeare"], "n": 4, "seed": 2})
    assert contract.check(cfg, STATS) == [
        "subsets.pds_target.domains: shakespeare not in corpus (have: debdocs, licenses, pydoc)"
    ]


def test_missing_split_names_key_and_the_splits():
    cfg = _cfg(x={"splits": ["target"], "n": 4, "seed": 2})
    assert contract.check(cfg, STATS) == ["subsets.x.splits: target not in corpus (have: test, train, val)"]


def test_too_large_subset_names_what_there_is():
    cfg = _cfg(pds_proxy={"splits": ["train"], "n": 1024, "seed": 1})
    (p,) = contract.check(cfg, STATS)
    assert p == "subsets.pds_proxy.n: 1024 examples asked, 527 in split train of all domains"


def test_empty_subsets_are_errors():
    # a domain that exists, but not in the split asked for
    cfg = _cfg(
        a={"splits": ["val"], "domains": ["pydoc"], "fraction": 1.0, "seed": 0},
        b={"splits": ["train"], "n": 0, "seed": 0},
        c={"splits": ["val"], "domains": ["licenses"], "fraction": 0.1, "seed": 0},
    )
    a, b, c = contract.check(cfg, STATS)
    assert a.startswith("subsets.a: 0 examples in split val of domain pydoc: an empty subset")
    assert "domains there: debdocs, licenses" in a
    assert b.startswith("subsets.b.n: 0 examples asked: an empty subset")
    assert c == "subsets.c.fraction: 0.1 of 4 examples in split val of domain licenses keeps 0"


def test_before_tokenize_only_names_and_emptiness_are_checked():
    cfg = _cfg(
        p={"splits": ["train"], "n": 10**6, "seed": 0}, q={"splits": ["val"], "domains": ["pydoc"], "n": 1, "seed": 0}
    )
    (p,) = contract.check(cfg, {"docs": DOCS, "examples": None})
    assert p.startswith("subsets.q: 0 documents in split val of domain pydoc")


def test_ablation_partitions_and_seed_mix():
    cfg = _cfg()
    cfg["methods"] = ["ablation"]
    cfg["ablation"] = {"column": "domain", "partitions": ["kjv", "debdocs"], "seed_mix": ["fortunes", "pydoc"]}
    have = "(have: debdocs, licenses, pydoc)"
    assert contract.check(cfg, STATS) == [
        f"ablation.partitions: kjv not in corpus {have}",
        f"ablation.seed_mix: fortunes not in corpus {have}",
    ]
    # not in methods: not checked; another column: not countable from ingest
    assert contract.check({**cfg, "methods": ["random"]}, STATS) == []
    assert contract.check({**cfg, "ablation": {**cfg["ablation"], "column": "source"}}, STATS) == []


def test_empty_partition():
    cfg = _cfg()
    cfg["methods"] = ["ablation"]
    cfg["ablation"] = {"partitions": ["debdocs"], "seed_mix": "pool"}
    examples = {**EXAMPLES, "train": {"debdocs": 0, "licenses": 3}}
    (p,) = contract.check(
        cfg, {"docs": {**DOCS, "train": {"debdocs": 0, "licenses": 1}, "val": {"debdocs": 1}}, "examples": examples}
    )
    assert p.startswith("ablation.partitions: debdocs has no train-split example") and "licenses" in p


def test_less_sources_are_corpus_domains():
    cfg = _cfg()
    cfg["methods"] = ["less"]
    cfg["less"] = {"data": {"target_task": "define"}}
    t, pool = contract.check(cfg, STATS)
    assert t.startswith("less.data.target_task: define is built from domain wordnet, which has no val-split document")
    assert "corpus domains: debdocs, licenses, pydoc" in t and "define: wordnet" in t
    assert pool.startswith("less.data: no train-split document of a domain LESS builds instructions from")
    ok = {"docs": {"train": {"wordnet": 5}, "val": {"wordnet": 1}, "test": {"wordnet": 1}}, "examples": None}
    assert contract.check(cfg, ok) == []


def test_eval_split():
    cfg = _cfg()
    cfg["eval"] = {"split": "dev"}
    assert contract.check(cfg, STATS) == ["eval.split: dev not in corpus (have: test, train, val)"]


def test_every_problem_in_one_message():
    cfg = _cfg(
        pds_proxy={"splits": ["train"], "n": 1024, "seed": 1},
        pds_target={"splits": ["val"], "domains": ["shakespeare"], "n": 64, "seed": 2},
    )
    msg = contract.format(contract.check(cfg, STATS))
    assert msg.splitlines()[0].endswith("(2 problems):")
    assert "  - subsets.pds_proxy.n: 1024" in msg and "  - subsets.pds_target.domains: shakespeare" in msg


def test_config_part_is_what_the_check_reads():
    full = {
        "subsets": {"a": {}},
        "methods": ["less"],
        "eval": {"split": "test", "n_choice": 3},
        "less": {"data": {"seed": 0}, "lora": {}},
        "ablation": {"partitions": ["x"], "lr": 1},
    }
    part = contract.config_part(full)
    assert part["eval"] == {"split": "test"} and part["ablation"] == {"partitions": ["x"]}
    assert part["less"] == {"data": {"seed": 0}}


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        (np.array([], dtype=np.int64), {"fraction": 1.0}, "subsets.s.fraction: no example matches"),
        (np.arange(5), {"n": 0}, "subsets.s.n: 0 examples asked"),
        (np.arange(5), {"n": 6}, "subsets.s.n: 6 examples asked, 5 match"),
        (np.arange(5), {"fraction": 0.1}, "subsets.s.fraction: 0.1 of 5"),
    ],
)
def test_the_sampler_refuses_an_empty_or_too_large_subset(ids, kwargs, match):
    key = f"subsets.s.{next(iter(kwargs))}"
    with pytest.raises(ValueError, match=match):
        draw_subset(ids, 0, key=key, **kwargs)
    assert draw_subset(np.arange(5), 0, n=5, key="k").size == 5


def test_mates_stages_must_fit_the_pool():
    cfg = _cfg(pool={"splits": ["train"], "fraction": 0.5, "seed": 0})
    cfg["methods"] = ["mates"]
    cfg["mates"] = {"stages": 2, "stage_size": 120, "probe_size": 24}
    (p,) = contract.check(cfg, STATS)
    assert (
        p
        == "mates.stage_size: 2 stages × 120 + mates.probe_size 24 = 264 examples asked of subsets.pool, which has 263"
    )
    cfg["mates"]["stage_size"] = 100
    assert contract.check(cfg, STATS) == []


def test_the_contract_command_fails_with_the_message_or_writes_its_record(tmp_path):
    import json

    from winnow.cli import main as cli

    ingest, manifest = tmp_path / "ingest.json", tmp_path / "manifest.json"
    ingest.write_text(json.dumps({"split_domains": DOCS}))
    manifest.write_text(json.dumps({"split_domains": EXAMPLES}))
    args = ["data", "contract", "--ingest", str(ingest), "--manifest", str(manifest), "--out", str(tmp_path / "c.json")]
    bad = _cfg(pds_proxy={"splits": ["train"], "n": 1024, "seed": 1})
    with pytest.raises(SystemExit, match=r"\(1 problem\):\n  - subsets.pds_proxy.n: 1024 examples asked, 527"):
        cli([*args, "--config", json.dumps(bad)])
    assert not (tmp_path / "c.json").exists()
    cli([*args, "--config", json.dumps(_cfg(pool={"splits": ["train"], "fraction": 1.0, "seed": 0}))])
    assert json.loads((tmp_path / "c.json").read_text())["problems"] == []
