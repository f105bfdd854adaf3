"""Issue 18: a user's corpus with other domain names and the default config otherwise. The data
contract fails before any training job with ONE message naming every config key whose data the
corpus lacks (and what it has instead); the dry run after that fails with it at parse time; a
fixed config plans."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, planned_jobs, smk, write_config

DOMAINS = ("debdocs", "licenses", "pydoc")
WORDS = "package install source binary license permission module function return value error file".split()


def _corpus(path: Path) -> Path:
    rng = random.Random(0)
    with path.open("w") as fh:
        for d in DOMAINS:
            for i in range(40):
                text = " ".join(rng.choice(WORDS) for _ in range(120)) + "."
                fh.write(json.dumps({"doc_id": f"{d}/{i}", "domain": d, "text": text}) + "\n")
    return path


def _fixed(cfg: dict) -> dict:
    """The user's config with every problem the contract named fixed."""
    fixed = json.loads(json.dumps(cfg))
    fixed["methods"] = ["random", "pds", "ablation"]
    fixed["seeds"] = [0]
    for key in ("pds_target", "pds_target_eval"):
        fixed["subsets"][key].update(domains=["debdocs"], n=1)
    fixed["subsets"]["pds_proxy"]["n"] = 64
    fixed["subsets"]["ablation_seed"]["domains"] = ["pydoc"]
    fixed["ablation"]["partitions"] = ["debdocs", "licenses"]
    return fixed


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The defaults with only corpus.inputs changed, run once (stops at the contract)."""
    tmp = tmp_path_factory.mktemp("contract")
    work = tmp / "w"
    work.mkdir()
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["corpus"]["inputs"] = [str(_corpus(tmp / "mine.jsonl"))]
    proc = smk(work, write_config(tmp / "mine.yaml", cfg), check=False)
    return work, tmp, cfg, proc


def test_the_contract_names_every_problem_before_any_training(user):
    work, _, _, proc = user
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    have = "(have: debdocs, licenses, pydoc)"
    for problem in (
        f"subsets.pds_target.domains: shakespeare not in corpus {have}",
        f"subsets.pds_target_eval.domains: shakespeare not in corpus {have}",
        f"subsets.ablation_seed.domains: fortunes not in corpus {have}",
        f"ablation.partitions: kjv not in corpus {have}",
        "less.data.target_task: define is built from domain wordnet",
        "subsets.pds_proxy.n: 1024 examples asked,",
    ):
        assert problem in out, problem
    assert out.count("the config asks for data the corpus does not have") >= 1
    run = work / "results/default"
    assert (run / "data/ingest.json").exists() and not (run / "data/contract.json").exists()
    # nothing that trains (or samples) started
    assert not (run / "models").exists() and not (run / "pds").exists() and not (run / "subsets").exists()
    logs = {p.parent.name if p.parent.name != "logs" else p.stem for p in (run / "logs").rglob("*.log")}
    assert logs <= {"ingest", "tokenizer", "tokenize", "merge_examples", "contract"}, logs


def test_the_dry_run_then_fails_at_parse_time_and_a_fixed_config_plans(user):
    work, tmp, cfg, _ = user
    proc = smk(work, write_config(tmp / "again.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"subsets.pds_target.domains: shakespeare not in corpus (have: {', '.join(DOMAINS)})" in out
    assert "subsets.pds_proxy.n: 1024 examples asked" in out  # the tokens manifest is there too

    fixed = _fixed(cfg)
    jobs = planned_jobs(smk(work, write_config(tmp / "fixed.yaml", fixed), "-n"))
    assert jobs["contract"] == 1 and jobs["train_lm"] == 2 and "ingest" not in jobs


def test_the_report_covers_what_exists_and_names_what_was_not_run(user):
    """Issue 18, item 6: ablation (and PDS) in methods but not run used to fail `--report` ("marked
    for report but does not exist"); the report now holds what exists and a run-status section."""
    work, tmp, cfg, _ = user
    fixed = write_config(tmp / "report.yaml", _fixed(cfg))
    smk(work, fixed, "results/default/data/contract.json")
    out = tmp / "report.zip"
    smk(work, fixed, "--report", str(out))
    html = next(n for n in zipfile.ZipFile(out).namelist() if n.endswith("report.html"))
    page = zipfile.ZipFile(out).read(html).decode()
    assert "Run status" in page
    assert "<strong>ablation</strong>: not run" in page and "<strong>pds</strong>: not run" in page
    assert "results/default/ablation/correlation.tsv" in page
