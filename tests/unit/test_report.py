"""Report figures' numbers: Jaccard overlap and per-domain composition against hand counts."""

from __future__ import annotations

import json

import pytest

from winnow.report import composition_rows, jaccard, mates_stage_rows, overlap_rows, plot_composition, plot_overlap


def test_jaccard_and_overlap_rows():
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert jaccard([], []) == 1.0 and jaccard([1], [2]) == 0.0
    rows = overlap_rows({"b": [1, 2], "a": [2, 3, 4]})
    assert [(r["a"], r["b"]) for r in rows] == [("a", "a"), ("a", "b"), ("b", "b")]
    ab = rows[1]
    assert (ab["n_a"], ab["n_b"], ab["shared"]) == (3, 2, 1) and ab["jaccard"] == pytest.approx(1 / 4)


def test_composition_rows_shares_sum_to_one():
    domain_of = {1: "x", 2: "x", 3: "y", 4: "z"}
    rows = composition_rows({"s": [1, 2, 3], "t": [4]}, domain_of)
    s = {r["domain"]: (r["n"], r["share"]) for r in rows if r["selection"] == "s"}
    assert s == {"x": (2, pytest.approx(2 / 3)), "y": (1, pytest.approx(1 / 3))}
    assert [r["share"] for r in rows if r["selection"] == "t"] == [1.0]
    with pytest.raises(KeyError):
        composition_rows({"u": [99]}, domain_of)


def test_mates_rows_and_plots(tmp_path):
    paths = []
    for arm, k, seed, loss in (("mrandom", 0, 0, 7.8), ("mrandom", 1, 0, 7.5), ("mates", 1, 0, 7.3)):
        p = tmp_path / "eval" / f"{arm}_k{k}" / f"s{seed}" / "reference.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"loss": loss}))
        paths.append(p)
    rows = mates_stage_rows(paths)
    assert {(r["arm"], r["stage"], r["loss"]) for r in rows} == {
        ("mrandom", 0, 7.8),
        ("mrandom", 1, 7.5),
        ("mates", 1, 7.3),
    }
    plot_overlap(overlap_rows({"a": [1, 2], "b": [2]}), tmp_path / "o.png")
    plot_composition(composition_rows({"a": [1]}, {1: "x"}), tmp_path / "c.png")
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "c.png").stat().st_size > 1000


def test_curve_rows_and_plot(tmp_path):
    from winnow.report import curve_rows, plot_curves

    states = {}
    for method, seed, base in (("random", 0, 6.0), ("pds_pool", 1, 5.0)):
        p = tmp_path / f"{method}{seed}.json"
        p.write_text(json.dumps({"history": [[s, base - 0.01 * s, 1e-3] for s in range(1, 31)]}))
        states[f"{method}_s{seed}"] = p
    rows = curve_rows(states)
    assert len(rows) == 60
    # the name splits at the last "_s": method names may hold underscores
    assert {(r["method"], r["seed"]) for r in rows} == {("random", 0), ("pds_pool", 1)}
    assert rows[0]["step"] == 1 and rows[0]["loss"] == pytest.approx(5.99)
    plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
