"""LESS on the user's own files (less.data.source: files), for real, on the tiny config."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, smk, tiny_config, write_config

pytestmark = pytest.mark.slow
R = "results/tiny"
EXAMPLE = ROOT / "tests" / "data" / "instruct"


def files_config() -> dict:
    cfg = tiny_config()
    cfg["methods"] = ["random", "less"]
    cfg["seeds"] = [0]
    cfg["less"]["arms"] = ["less", "random", "full"]
    # Relative paths: files of the user's project, next to its results/.
    cfg["less"]["data"] = {
        "source": "files",
        "files": {"pool": "mydata/pool.jsonl", "target": "mydata/target.jsonl", "eval": "mydata/eval.parquet"},
        "pool_size": 200,
        "target_per_subtask": 3,
        "eval_size": 16,
        "num_shards": 2,
        "seed": 0,
    }
    return cfg


@pytest.fixture(scope="module")
def files_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("less_files")
    work = base / "work"
    shutil.copytree(EXAMPLE, work / "mydata")
    cfg = write_config(base / "tiny-files.yaml", files_config())
    smk(work, cfg, f"{R}/less/compare.tsv")
    return work, cfg


def test_sets_come_from_their_files(files_run):
    work, _ = files_run
    d = work / R / "less/data"
    examples = pq.read_table(d / "examples.parquet").to_pandas().set_index("example_id")
    sets = {n: pq.read_table(d / f"{n}.parquet")["example_id"].to_numpy() for n in ("pool", "target", "eval")}
    assert set(examples.loc[sets["pool"], "doc_id"].str.split("/").str[0]) == {"pool"}
    assert set(examples.loc[sets["target"], "doc_id"].str.split("/").str[0]) == {"target"}
    assert set(examples.loc[sets["eval"], "doc_id"].str.split("/").str[0]) == {"eval"}
    assert set(examples.loc[sets["pool"], "domain"]) == {"define", "continue", "saying"}
    subtasks = pq.read_table(d / "subtasks.parquet").to_pandas().set_index("example_id")
    assert set(subtasks.loc[sets["target"], "subtask"]) == {"noun", "verb", "adj"}
    assert len(sets["target"]) == 9  # target_per_subtask × 3 subtasks
    rejects = pq.read_table(d / "rejects.parquet").to_pandas()
    assert sorted(rejects["reason"]) == ["bad_messages", "no_usable_field"]
    assert set(rejects["source"]) == {"pool"}
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["source"] == "files" and manifest["files"]["pool"]["rejected"] == 2
    assert manifest["n_choice"] == 0 and (d / "define-choice.jsonl").read_text() == ""


def test_pipeline_reaches_the_comparison_table(files_run):
    work, _ = files_run
    rows = list(csv.DictReader((work / R / "less/compare.tsv").open(), delimiter="\t"))
    assert {r["arm"] for r in rows} >= {"less", "full"}
    ev = json.loads((work / R / "less/less/s0/eval.json").read_text())
    # judged on the eval file's items only, by subtask; no define-choice task without the corpus
    assert ev["n_examples"] == 16 and ev["define_choice_acc"] is None
    assert set(ev["target_loss_by_subtask"]) <= {"noun", "verb", "adj", "adv"}
    match = json.loads((work / R / "less/s0/match.json").read_text())
    assert match  # matching ran against the target file's reference points


def test_a_missing_file_fails_at_parse_time_naming_the_key(tmp_path):
    cfg = files_config()
    cfg["less"]["data"]["files"]["target"] = "mydata/nope.jsonl"
    work = tmp_path / "work"
    shutil.copytree(EXAMPLE, work / "mydata")
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0 and "less.data.files.target" in proc.stdout + proc.stderr
    cfg["less"]["data"]["files"]["target"] = "results/tiny/target.jsonl"
    (work / "results/tiny").mkdir(parents=True)
    shutil.copy(EXAMPLE / "target.jsonl", work / "results/tiny/target.jsonl")
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0 and "under results/" in proc.stdout + proc.stderr
