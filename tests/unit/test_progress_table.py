"""Progress lines (rate, ETA, steady interval) and the evaluation summary table."""

from __future__ import annotations

import json
import logging

import pytest

from winnow.eval.table import compare_rows, model_key, read_tsv, summary_rows, write_tsv
from winnow.progress import Progress


def test_progress_logs_rate_and_eta_at_the_interval(caplog, monkeypatch):
    clock = iter([0.0, 0.0, 5.0, 11.0, 12.0, 23.0])  # start, 4 updates, done
    monkeypatch.setattr("winnow.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="winnow.progress"):
        prog = Progress("job", total=10, unit="docs", interval_s=10)
        for _ in range(4):
            prog.update(1, tokens=100)
        prog.done()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("job: start")
    # Updates at t=0, 5 and 12 are within 10 s of the previous line; only t=11 logs, then done.
    assert len(lines) == 3
    assert "3/10 (30.0%)" in lines[1]
    assert "ETA 0:25" in lines[1] and "0.27 docs/s" in lines[1] and "27.3 tokens/s" in lines[1]
    assert lines[-1].endswith("(done)") and "4/10" in lines[-1] and "elapsed 0:23" in lines[-1]


def test_summary_rows_join_ppl_and_harness(tmp_path):
    paths = {}
    for method, seed, ppl, acc in (("random", 0, 10.0, 0.3), ("random", 1, 12.0, 0.4)):
        d = tmp_path / "eval" / method / f"s{seed}"
        d.mkdir(parents=True)
        (d / "ppl.json").write_text(
            json.dumps(
                {
                    "domains": {
                        "__all__": {"ppl_token": ppl, "bits_per_byte": 1.0},
                        "kjv": {"ppl_token": ppl * 2, "bits_per_byte": 2.0},
                    }
                }
            )
        )
        (d / "harness.json").write_text(
            json.dumps(
                {
                    "winnow_choice": {"acc": acc, "acc_stderr": 0.1},
                    "n_samples": {"winnow_choice": 5},
                    "lm_eval_version": "x",
                }
            )
        )
        paths[(method, seed)] = d
    rows = summary_rows([paths[k] / "ppl.json" for k in paths] + [paths[k] / "harness.json" for k in paths])
    assert [(r["method"], r["seed"]) for r in rows] == [("random", 0), ("random", 1)]
    assert rows[1]["ppl_token/all"] == 12.0 and rows[1]["ppl_token/kjv"] == 24.0
    assert rows[0]["choice/acc"] == 0.3 and "choice/acc_stderr" not in rows[0]
    write_tsv(tmp_path / "t.tsv", rows)
    header, first, _ = (tmp_path / "t.tsv").read_text().splitlines()
    assert header.split("\t")[:2] == ["method", "seed"] and first.split("\t")[:2] == ["random", "0"]
    assert model_key("results/x/eval/pds/s3/ppl.json") == ("pds", 3)


def test_compare_rows_pair_seeds_and_respect_direction(tmp_path):
    summary = [
        {"method": "random", "seed": "0", "target/t": "3.0", "choice/acc": "0.30"},
        {"method": "random", "seed": "1", "target/t": "3.2", "choice/acc": "0.20"},
        {"method": "pds", "seed": "0", "target/t": "2.9", "choice/acc": "0.25"},
        {"method": "pds", "seed": "1", "target/t": "3.3", "choice/acc": "0.40"},
        {"method": "pds", "seed": "7", "target/t": "1.0", "choice/acc": "0.99"},  # no baseline seed 7
    ]
    rows = {r["metric"]: r for r in compare_rows(summary, "random")}
    t, acc = rows["target/t"], rows["choice/acc"]
    assert t["direction"] == "lower" and t["n_seeds"] == 2 and t["wins"] == 1
    assert abs(t["diff"] - 0.0) < 1e-12 and abs(t["method_mean"] - 3.1) < 1e-12
    assert acc["direction"] == "higher" and acc["wins"] == 1 and abs(acc["diff"] - 0.075) < 1e-12
    assert t["per_seed_diff"] == "s0:-0.1;s1:0.1"
    # without per-item values there is no interval, and the table says so
    assert (t["ci_low"], t["ci_high"], t["verdict"]) == (None, None, "NA")
    write_tsv(tmp_path / "c.tsv", list(rows.values()))
    back = read_tsv(tmp_path / "c.tsv")
    assert [r["metric"] for r in back] == ["target/t", "choice/acc"]


def _target_json(path, ids, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    items = {"example_id": list(ids), "loss": list(losses)}
    path.write_text(json.dumps({"loss": sum(losses) / len(losses), "items": items}))
    return path


def test_compare_reads_items_and_puts_an_interval_around_the_seed_mean(tmp_path):
    """Eval files with per-item losses → a compare row whose interval is the paired bootstrap of
    those items (recomputed here from the files with winnow.stats), with a verdict."""
    import numpy as np

    from winnow.eval.table import compare_rows, evals_and_items
    from winnow.stats import mean_metric, paired_bootstrap

    rng = np.random.default_rng(0)
    ids = list(range(100))
    paths, raw = [], {}
    for seed in (0, 1):
        base = rng.normal(5, 1, 100)
        raw[("random", seed)] = base
        raw[("pds", seed)] = base - 0.3 + rng.normal(0, 0.2, 100)  # clearly lower loss
        raw[("same", seed)] = base + rng.normal(0, 0.2, 100)  # no effect
        for method in ("random", "pds", "same"):
            path = tmp_path / "eval" / method / f"s{seed}" / "target-t.json"
            paths.append(_target_json(path, ids, raw[(method, seed)].tolist()))
    summary, items = evals_and_items(paths)
    rows = {r["method"]: r for r in compare_rows(summary, "random", items)}
    expect = paired_bootstrap(
        [mean_metric(ids, raw[("pds", s)]) for s in (0, 1)], [mean_metric(ids, raw[("random", s)]) for s in (0, 1)]
    )
    pds = rows["pds"]
    assert pds["metric"] == "target/t" and pds["n_items"] == 100
    assert pds["diff"] == pytest.approx(expect.diff, abs=1e-12)
    assert (pds["ci_low"], pds["ci_high"]) == (expect.low, expect.high)
    assert pds["ci_low"] <= pds["diff"] <= pds["ci_high"] < 0 and pds["verdict"] == "better"
    assert rows["same"]["verdict"] == "no detectable difference"
