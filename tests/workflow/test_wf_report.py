"""`snakemake --report` on the finished tiny run: the zip holds the figures and the tables."""

from __future__ import annotations

import zipfile

import pytest
from conftest import smk

pytestmark = pytest.mark.slow


def test_report_zip_holds_figures_and_tables(tiny_finished, tmp_path):
    work, cfg = tiny_finished
    out = tmp_path / "report.zip"
    smk(work, cfg, "--report", str(out))
    names = zipfile.ZipFile(out).namelist()
    for want in (
        "report/overlap.png",
        "report/composition.png",
        "report/scores.png",
        "eval/compare-pds.tsv",
        "eval/summary.tsv",
        "ablation/correlation.png",
        "ablation/correlation.tsv",
    ):
        assert any(n.endswith(want) for n in names), (want, names[:40])
    assert any(n.endswith("report.html") for n in names)
