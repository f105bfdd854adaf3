"""Evaluation targets held out from selection targets, decided from the config alone."""

from __future__ import annotations

from winnow.data.heldout import heldout_problems, may_share_documents

VAL_SHAKE = {"splits": ["val"], "domains": ["shakespeare"], "n": 8, "seed": 0}


def _cfg(eval_spec, targets=("pds_target_eval",), **extra):
    return {
        "subsets": {"pds_target": VAL_SHAKE, "pds_target_eval": eval_spec},
        "eval": {"targets": list(targets)},
        **extra,
    }


def test_another_split_or_disjoint_domains_cannot_share_documents():
    assert may_share_documents(VAL_SHAKE, {"splits": ["test"], "domains": ["shakespeare"]}) == []
    assert may_share_documents(VAL_SHAKE, {"splits": ["val"], "domains": ["kjv"]}) == []
    assert heldout_problems(_cfg({"splits": ["test"], "domains": ["shakespeare"], "seed": 2})) == []


def test_a_shared_split_and_domain_is_named_with_both_keys():
    (msg,) = heldout_problems(_cfg({"splits": ["val", "test"], "domains": ["shakespeare"], "seed": 2}))
    assert "eval.targets (pds_target_eval)" in msg and "subsets.pds_target" in msg and "split val" in msg


def test_unrestricted_splits_or_domains_may_overlap():
    assert may_share_documents(VAL_SHAKE, {"domains": ["shakespeare"]}) == ["split val", "domain shakespeare"]
    assert may_share_documents(VAL_SHAKE, {"splits": ["val"]}) == ["split val", "domain shakespeare"]


def test_the_selection_target_itself_is_refused_as_evaluation_or_primary_metric():
    cfg = _cfg({"splits": ["test"], "seed": 2}, targets=("pds_target",))
    cfg.update(methods=["bakeoff"], bakeoff={"primary": "target/pds_target"})
    problems = heldout_problems(cfg)
    assert len(problems) == 2
    assert problems[0].startswith("config key eval.targets (pds_target) is subsets.pds_target")
    assert problems[1].startswith("config key bakeoff.primary is subsets.pds_target")
    # a primary metric that is not a target loss is not a target set
    cfg["bakeoff"]["primary"] = "ppl_token/all"
    assert len(heldout_problems(cfg)) == 1
