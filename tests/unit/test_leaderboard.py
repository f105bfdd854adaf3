"""The bake-off leaderboard: mean ± sample sd over seeds, ranking, wins; and its HTML page."""

from __future__ import annotations

import math
import statistics

import pytest

from winnow.eval.table import leaderboard_html, leaderboard_rows

SUMMARY = [
    {"method": "random", "seed": 0, "target/t": 5.0, "lastword/acc": 0.10},
    {"method": "random", "seed": 1, "target/t": 5.2, "lastword/acc": 0.12},
    {"method": "pds", "seed": 0, "target/t": 4.9, "lastword/acc": 0.08},
    {"method": "pds", "seed": 1, "target/t": 5.4, "lastword/acc": 0.09},
    {"method": "less_pool", "seed": 0, "target/t": 4.5, "lastword/acc": 0.105},
    {"method": "less_pool", "seed": 1, "target/t": 4.7, "lastword/acc": "NA"},
]


def test_means_sds_rank_and_wins_match_a_direct_computation():
    rows = {r["method"]: r for r in leaderboard_rows(SUMMARY, "target/t")}
    for method in ("random", "pds", "less_pool"):
        vals = [r["target/t"] for r in SUMMARY if r["method"] == method]
        assert rows[method]["target/t"] == pytest.approx(statistics.mean(vals))
        assert rows[method]["target/t sd"] == pytest.approx(statistics.stdev(vals))
    # lower loss ranks first; NA values are left out of the mean, and one value has no sd
    assert [r["method"] for r in sorted(rows.values(), key=lambda r: r["rank"])] == ["less_pool", "random", "pds"]
    assert rows["less_pool"]["lastword/acc"] == pytest.approx(0.105)
    assert math.isnan(rows["less_pool"]["lastword/acc sd"])
    # seed by seed against random: pds wins seed 0 (4.9 < 5.0) and loses seed 1 (5.4 > 5.2)
    assert rows["pds"]["wins vs random"] == 1 and rows["less_pool"]["wins vs random"] == 2
    assert "wins vs random" not in rows["random"]
    # the difference of the primary metric, mean over seeds; no items → no interval
    assert rows["pds"]["diff"] == pytest.approx(((4.9 - 5.0) + (5.4 - 5.2)) / 2)
    assert rows["pds"]["verdict"] == "NA" and rows["pds"]["ci_low"] is None


def test_higher_is_better_metrics_rank_descending():
    rows = leaderboard_rows(SUMMARY, "lastword/acc")
    assert [r["method"] for r in rows] == ["random", "less_pool", "pds"]


def test_unequal_seeds_and_unknown_metric_fail():
    with pytest.raises(ValueError, match="different seeds"):
        leaderboard_rows(SUMMARY + [{"method": "pds", "seed": 2, "target/t": 1.0}], "target/t")
    with pytest.raises(ValueError, match="primary metric"):
        leaderboard_rows(SUMMARY, "target/nope")


def test_html_page_has_one_row_per_method_in_rank_order():
    rows = leaderboard_rows(SUMMARY, "target/t")
    page = leaderboard_html(rows, "target/t", ["target/t", "lastword/acc"], "Bake-off <test>")
    assert page.count("<tr>") == 1 + len(rows)  # header + one per method
    assert "Bake-off &lt;test&gt;" in page  # escaped
    assert page.index("<td>less_pool</td>") < page.index("<td>random</td>") < page.index("<td>pds</td>")
    assert "4.6 ± 0.14" in page  # less_pool: mean 4.6, sd 0.1414
