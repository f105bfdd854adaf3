"""External scores on the tiny run: a score file made outside the workflow (the demo heuristic's)
becomes the arm external-demo, selected by the shared rule, trained, evaluated and compared with
random; it joins the bake-off leaderboard; bad configs fail at parse time naming their key."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import all_methods_config, planned_jobs, smk, tiny_config, write_config

R = "results/tiny"


def _external_config(score_file, **spec) -> dict:
    cfg = tiny_config()
    cfg["methods"] = ["random", "external"]
    cfg["external"] = {"demo": {"path": str(score_file), "key": "doc_id", **spec}}
    return cfg


@pytest.fixture(scope="module")
def external_run(tmp_path_factory):
    """(workdir, config, score file) of one finished tiny run of random and external-demo."""
    base = tmp_path_factory.mktemp("external")
    work = base / "work"
    work.mkdir()
    # The score file is made "elsewhere" from the ingested documents, before the arm exists.
    spine = tiny_config()
    spine["methods"] = ["random"]
    smk(work, write_config(base / "spine.yaml", spine), f"{R}/data/docs.parquet")
    scores = base / "demo-scores.tsv"
    cmd = [sys.executable, "-m", "winnow", "select", "heuristic-scores", "--docs", str(work / R / "data/docs.parquet")]
    subprocess.run([*cmd, "--out", str(scores)], check=True)
    with scores.open("a") as f:  # a record of no known document and one without a number
        f.write("no-such-doc\t1.0\nno-such-doc-either\thigh\n")
    cfg = write_config(base / "tiny.yaml", _external_config(scores, missing="lowest"))
    smk(work, cfg)
    return work, cfg, scores


def _ids(path) -> list[int]:
    return pq.read_table(path)["example_id"].to_pylist()


def test_external_arm_selects_its_top_scores_at_randoms_budget(external_run):
    work, _, scores = external_run
    pool = set(_ids(work / R / "subsets/pool/ids.parquet"))
    report = json.loads((work / R / "external/demo/report.json").read_text())
    assert report["pool_examples"] == len(pool) and report["coverage"] == 1.0
    assert report["rejected"] == {"non_numeric": 1, "unknown_id": 1}
    rejects = pq.read_table(work / R / "external/demo/rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["non_numeric", "unknown_id"]
    assert {r["source"] for r in rejects} == {str(scores)}
    table = pq.read_table(work / R / "scores/external-demo/scores.parquet").to_pydict()
    by_id = dict(zip(table["example_id"], table["score"]))
    assert set(by_id) == pool
    chosen = _ids(work / R / "selected/external-demo/s0/ids.parquet")
    assert len(chosen) == len(_ids(work / R / "selected/random/s0/ids.parquet"))
    rest = pool - set(chosen)
    assert min(by_id[i] for i in chosen) >= max(by_id[i] for i in rest)  # temperature 0: top-k
    # the user's file is an input of the arm: hashed into the scores' sidecar
    sidecar = json.loads((work / R / "scores/external-demo/scores.parquet.prov.json").read_text())
    assert str(scores) in json.dumps(sidecar)


def test_external_arm_is_trained_evaluated_and_compared_with_random(external_run):
    work, cfg, _ = external_run
    for f in ("ppl.json", "harness.json", "target-pds_target_eval.json"):
        assert (work / R / "eval/external-demo/s0" / f).is_file()
    assert (work / R / "models/external-demo/s0/model/model.safetensors").is_file()
    with (work / R / "eval/compare-external-demo.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows and {r["method"] for r in rows} == {"external-demo"}
    target = next(r for r in rows if r["metric"] == "target/pds_target_eval")
    assert float(target["ci_low"]) <= float(target["diff"]) <= float(target["ci_high"])
    assert target["verdict"]
    summary = (work / R / "eval/summary.tsv").read_text()
    assert "external-demo" in summary and "random" in summary
    assert planned_jobs(smk(work, cfg, "-n", "external")) == {}  # the target is what `all` built


def test_a_changed_score_file_reruns_only_the_arm(external_run, tmp_path):
    work, _, scores = external_run
    changed = tmp_path / "changed.tsv"
    lines = scores.read_text().splitlines()
    doc, value = lines[1].split("\t")
    changed.write_text("\n".join([lines[0], f"{doc}\t{float(value) + 100}", *lines[2:]]) + "\n")
    cfg = write_config(tmp_path / "c.yaml", _external_config(changed, missing="lowest"))
    jobs = planned_jobs(smk(work, cfg, "-n"))
    assert jobs.get("external_scores") == 1 and jobs.get("train_lm") == 1  # the arm's model, not random's


def test_the_leaderboard_includes_external_arms_when_bakeoff_runs(external_run, tmp_path):
    work, _, scores = external_run
    cfg = all_methods_config()
    cfg["methods"].append("external")
    cfg["external"] = {"demo": {"path": str(scores), "missing": "lowest"}}
    proc = smk(work, write_config(tmp_path / "b.yaml", cfg), "-n", "-p", f"{R}/bakeoff/leaderboard.tsv")
    command = next(ln for ln in proc.stdout.splitlines() if "eval leaderboard" in ln)
    assert "eval/external-demo/s1/ppl.json" in command and "eval/less_pool/s0/ppl.json" in command
    # one budget: an external arm's own ratio must be the bake-off's
    cfg["external"]["demo"]["select"] = {"ratio": 0.25}
    proc = smk(work, write_config(tmp_path / "b2.yaml", cfg), "-n", check=False)
    assert (
        proc.returncode != 0
        and "external.demo.select.ratio must equal select.random.ratio" in proc.stdout + proc.stderr
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c, s: c["external"].update({"Bad/Name": c["external"].pop("demo")}), "Bad/Name"),
        (lambda c, s: c["external"]["demo"].update(path=str(s) + ".nope"), "config key external.demo.path"),
        (lambda c, s: c["external"]["demo"].update(path=str(s.parent)), "config key external.demo.path"),
        (lambda c, s: c.pop("external"), "config key external is required"),
        (lambda c, s: c["external"]["demo"].update(missing="ignore"), "ignore"),
        (lambda c, s: c["external"]["demo"].update(select={"ratio": 0.0}), "ratio"),
    ],
    ids=["unsafe-name", "no-such-file", "a-folder", "no-block", "bad-missing", "bad-ratio"],
)
def test_bad_external_config_fails_at_parse_time(external_run, tmp_path, edit, message):
    work, _, scores = external_run
    cfg = _external_config(scores)
    edit(cfg, scores)
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout  # refused before any DAG was built


def test_a_suffix_of_unknown_format_needs_format(external_run, tmp_path):
    work, _, scores = external_run
    odd = tmp_path / "scores.dat"
    odd.write_text(scores.read_text())
    proc = smk(work, write_config(tmp_path / "o.yaml", _external_config(odd, missing="lowest")), "-n", check=False)
    assert proc.returncode != 0 and "config key external.demo.format" in proc.stdout + proc.stderr
    ok = write_config(tmp_path / "ok.yaml", _external_config(odd, missing="lowest", format="tsv"))
    assert planned_jobs(smk(work, ok, "-n")).get("external_scores") == 1
