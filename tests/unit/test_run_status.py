"""The run-status section of `snakemake --report`: what was run, and what was not."""

from __future__ import annotations

from winnow import run_status


def test_run_status_says_what_was_not_run():
    groups = {"random": ["a", "b"], "pds": ["c", "d"], "ablation": ["e"]}
    rows = run_status.status(groups, lambda f: f in {"a", "b", "c"})
    assert [(r["method"], r["status"]) for r in rows] == [
        ("random", "complete"),
        ("pds", "partial"),
        ("ablation", "not run"),
    ]
    text = run_status.rst(rows)
    assert "* **ablation**: not run (0 of 1 target files); missing: ``e``" in text
    assert "Not in this report (not run or not finished): pds, ablation." in text
