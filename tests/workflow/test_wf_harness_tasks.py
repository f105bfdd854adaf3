"""eval.harness on the tiny run: a task of the include path lands in the summary and the comparison.

Reuses the shared finished tiny run (a copy of its working directory), so only the new jobs run:
the check, lm-eval on each model, and the tables that gain columns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, smk, write_config

from winnow.eval.table import read_tsv

TASKS = ROOT / "data" / "tasks"


@pytest.fixture(scope="module")
def harness_run(tiny_finished, tmp_path_factory):
    src_work, src_cfg = tiny_finished
    base = tmp_path_factory.mktemp("harness_tasks")
    work = base / "work"
    shutil.copytree(src_work, work, symlinks=True)
    cfg = yaml.safe_load(Path(src_cfg).read_text())
    cfg["eval"]["harness"] = {"tasks": ["arc_corpus"], "include_path": str(TASKS)}
    path = write_config(base / "tiny.yaml", cfg)
    proc = smk(work, path, "--", "results/tiny/eval/summary.tsv", "results/tiny/eval/compare-pds.tsv")
    return work, path, proc


def test_task_columns_in_summary_and_compare(harness_run):
    work, _, proc = harness_run
    out = work / "results" / "tiny" / "eval"
    # Only what eval.harness adds ran: the models were not retrained.
    assert "train_lm" not in proc.stderr.split("Job stats:")[1].split("total")[0]
    resolved = json.loads((out / "harness-tasks.json").read_text())["tasks"]["arc_corpus"]
    assert resolved["yaml"] == str(TASKS / "arc_corpus" / "arc_corpus.yaml") and resolved["n_docs"] == 120
    rows = {r["method"]: r for r in read_tsv(out / "summary.tsv")}
    assert set(rows) >= {"random", "pds"}
    for row in rows.values():
        assert 0.0 <= float(row["arc_corpus/acc"]) <= 1.0 and 0.0 <= float(row["arc_corpus/acc_norm"]) <= 1.0
        assert row["choice/acc"] != "NA"  # the built-in tasks are still there
    compare = {r["metric"]: r for r in read_tsv(out / "compare-pds.tsv")}
    for metric in ("arc_corpus/acc", "arc_corpus/acc_norm"):
        assert compare[metric]["direction"] == "higher"
        assert compare[metric]["n_items"] == "120" and compare[metric]["verdict"] != "NA"


def test_include_path_outside_project_fails_at_parse_time(harness_run, tmp_path):
    work, path, _ = harness_run
    outside = tmp_path / "tasks"
    shutil.copytree(TASKS, outside)
    cfg = yaml.safe_load(path.read_text())
    cfg["eval"]["harness"]["include_path"] = str(outside)
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "eval.harness.include_path" in out and "outside the project" in out
