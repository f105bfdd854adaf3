"""`snakemake audit` on a copy of the finished tiny run: one edited byte is named, strict mode fails."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import smk

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
