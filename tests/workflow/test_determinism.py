"""Two clean CPU runs of the tiny workflow into two directories: byte-identical scores, ids, weights."""

from __future__ import annotations

import pytest
from conftest import smk, tiny_config, write_config

from winnow.audit import compare_runs

pytestmark = pytest.mark.slow
R = "results/tiny"


def test_two_clean_runs_are_byte_identical(tiny_finished, tmp_path):
    first, _ = tiny_finished
    work = tmp_path / "again"
    work.mkdir()
    smk(work, write_config(tmp_path / "tiny.yaml", tiny_config()))
    rows, summary = compare_runs(first / R, work / R)
    assert summary["passed"], summary["failed"]
    status = {r["artifact"]: r["status"] for r in rows}
    for must in (
        "scores/pds/scores.parquet",
        "selected/pds/s0/ids.parquet",
        "selected/random/s0/ids.parquet",
        "models/pds/s0/model/model.safetensors",
        "models/random/s0/model/model.safetensors",
        "pds/gamma.parquet",
        "ablation/merges/kjv+pydocs/model/model.safetensors",
    ):
        assert status.get(must) == "identical", (must, status.get(must))
    assert summary["identical"] == summary["judged"] > 50
