"""`snakemake audit` on a copy of the finished tiny run: one edited byte is named, strict mode fails."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import ROOT, smk

pytestmark = pytest.mark.slow
R = "results/tiny"


def test_audit_names_an_edited_artifact_and_strict_mode_fails(tiny_finished, tmp_path):
    first, cfg = tiny_finished
    work = tmp_path / "copy"
    shutil.copytree(first / "results", work / "results")  # the session's run stays untouched
    smk(work, cfg, "audit")
    before = json.loads((work / R / "audit/audit.json").read_text())
    assert before["artifacts"] > 100
    assert before["failed"]["bytes"] == [] and before["failed"]["missing"] == [] and before["failed"]["code"] == []
    target = work / R / "models/random/s0/model/model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    smk(work, cfg, "audit")
    after = json.loads((work / R / "audit/audit.json").read_text())
    assert after["failed"]["bytes"] == ["models/random/s0/model/model.safetensors"]
    # everything that read those weights is now stale (its recorded input hash no longer matches)
    assert "eval/random/s0/ppl.json" in after["failed"]["inputs"]
    proc = smk(work, cfg, "audit", "--config", "audit_strict=true", check=False)
    assert proc.returncode != 0 and "audit failed" in (
        proc.stdout + proc.stderr + (work / R / "logs/audit.log").read_text()
    )


def test_a_module_edit_names_exactly_the_artifacts_it_made(tiny_finished, tmp_path):
    """Edit winnow/eval/perplexity.py in a copy of the workflow: the audit's `code` check and the
    jobs `snakemake -n` plans for changed params both name exactly the artifacts `eval ppl` wrote."""
    first, cfg = tiny_finished
    repo = tmp_path / "repo"
    repo.mkdir()
    for part in ("Snakefile", "rules", "src", "workflow", "report", "envs", "profiles", "config"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, repo / part)
    work = tmp_path / "work"
    shutil.copytree(first, work, symlinks=True)  # results and .snakemake/ (the params record)
    module = repo / "src/winnow/eval/perplexity.py"
    module.write_text(module.read_text() + "\n# an edit that changes the module's bytes\n")
    sidecars = sorted((work / R).rglob("*.prov.json"))
    made_by_ppl = {
        str(p.relative_to(work / R))[: -len(".prov.json")]
        for p in sidecars
        if json.loads(p.read_text()).get("command") == "eval ppl"
    }
    assert len(made_by_ppl) >= 3  # the spine's models and the ablation models

    smk(work, cfg, "audit", snakefile=repo / "Snakefile")
    audit = json.loads((work / R / "audit/audit.json").read_text())
    assert set(audit["failed"]["code"]) == made_by_ppl
    assert audit["failed"]["bytes"] == []

    # the dry run: the jobs it plans because their params (the code hash) changed, by output
    plan = smk(work, cfg, "-n", snakefile=repo / "Snakefile")
    rerun = set()
    for block in re.split(r"\n(?=\[|rule |localrule )", plan.stdout):
        out = re.search(r"^\s+output: (.*)$", block, re.M)
        if out and re.search(r"^\s+reason: .*Params have changed", block, re.M):
            rerun |= {f.strip().removeprefix(f"{R}/") for f in out.group(1).split(",")}
    assert rerun == made_by_ppl, (sorted(rerun ^ made_by_ppl), plan.stdout[-3000:])
