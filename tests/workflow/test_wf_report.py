"""`snakemake --report` on the finished tiny run of every method: the zip holds the figures and the
tables, and the page a person opens renders them (headless Chromium, no script errors)."""

from __future__ import annotations

import os
import zipfile

import pytest
from _cdp import Browser, chromium_path
from conftest import smk

pytestmark = pytest.mark.slow

CATEGORIES = ["Ablations", "Bake-off", "Evaluation", "LESS", "MATES", "Scores", "Selections", "Training"]
ARMS = ["random", "pds", "mates_pool", "less_pool"]

# Click the innermost element whose text is exactly t (the report's menu entries).
CLICK_TEXT = """(t => { const el = [...document.querySelectorAll('a, button, li, span, div')]
  .filter(e => e.children.length <= 2 && e.innerText && e.innerText.trim() === t).pop();
  if (!el) return false; el.click(); return true; })"""
# Click the "view" (eye) button of the result row whose file name starts with f.
VIEW_FILE = """(f => { const row = [...document.querySelectorAll('tr')].find(r => r.innerText.trim().startsWith(f));
  if (!row) return false; row.querySelector('a[iconname=eye]').click(); return true; })"""


@pytest.fixture(scope="module")
def report_zip(tiny_all_finished, tmp_path_factory):
    work, cfg = tiny_all_finished
    out = tmp_path_factory.mktemp("report") / "report.zip"
    smk(work, cfg, "--report", str(out))
    return out


def test_report_zip_holds_figures_and_tables(report_zip):
    names = zipfile.ZipFile(report_zip).namelist()
    # the zip keeps each file's name under report/data/raw/<hash>/
    files = {n.rsplit("/", 1)[-1] for n in names}
    want = {"overlap.png", "composition.png", "scores.png", "curves.png", "mates_stages.png"}
    want |= {"compare-pds.tsv", "summary.tsv", "correlation.png", "correlation.tsv"}
    want |= {"leaderboard.html", "leaderboard.tsv", "compare.tsv", "composition.tsv"}
    assert want <= files, sorted(want - files)
    assert "report.html" in files


def test_rendered_report_shows_categories_and_the_bakeoff_table(report_zip, tmp_path):
    binary = chromium_path()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: ./dev.sh test installs Debian's chromium package (as root)")
        pytest.skip("Debian's chromium package is not installed (./dev.sh test installs it as root)")
    zipfile.ZipFile(report_zip).extractall(tmp_path)
    page = next(tmp_path.rglob("report.html"))
    with Browser(binary) as b:
        b.open(page.as_uri(), settle_s=2)
        menu = b.js("document.body.innerText")
        missing = [c for c in CATEGORIES if c not in menu.splitlines()]
        assert not missing, (missing, menu[:2000])
        assert b.js(CLICK_TEXT + '("Bake-off")', settle_s=1), "no Bake-off entry to click"
        assert b.js(VIEW_FILE + '("results/tiny/bakeoff/leaderboard.html")', settle_s=2), "no leaderboard to view"
        # the table as rendered inside the report's viewer frame: one row per arm
        rows = b.js(
            """[...document.querySelectorAll('iframe')].flatMap(f => f.contentDocument ?
            [...f.contentDocument.querySelectorAll('#leaderboard tbody tr')].map(r =>
            [...r.cells].map(c => c.innerText)) : [])"""
        )
        b.pump(1.0)
        b.screenshot(tmp_path / "bakeoff.png")
        errors = b.errors()
    assert sorted(r[1] for r in rows) == sorted(ARMS), rows
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    assert all(r[2] == "2" for r in rows)  # two seeds per arm
    assert all("±" in r[3] for r in rows)  # mean ± sd of the primary metric
    assert errors == [], errors
