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
    # the zip keeps each file's name under report/data/raw/<hash>/
    files = {n.rsplit("/", 1)[-1] for n in names}
    want = {"overlap.png", "composition.png", "scores.png", "compare-pds.tsv", "summary.tsv"}
    want |= {"correlation.png", "correlation.tsv"}
    assert want <= files, sorted(want - files)
    assert "report.html" in files
