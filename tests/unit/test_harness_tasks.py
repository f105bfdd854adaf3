"""eval.harness: lm-eval task names resolve, missing data is named, the shipped task is ARC's format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from _tiny import offline_env

from winnow.data.example_tasks import (
    OUT,
    OUT_LAMBADA,
    SPLIT_FRACTIONS,
    SPLIT_SEED,
    build_arc,
    build_lambada,
    corpus_docs,
)
from winnow.data.ingest import split_of
from winnow.eval.table import item_metrics, summary_rows
from winnow.eval.user_tasks import (
    check_config,
    check_data,
    resolve,
    task_manager,
    task_spec,
    write_datasets_cache,
)

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "data" / "tasks"
ARC_YAML = TASKS / "arc_corpus" / "arc_corpus.yaml"


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        offline_env(tmp_path_factory.mktemp("hf"), mp)
        yield


@pytest.fixture(scope="module")
def tm():
    """One TaskManager over lm-eval's tasks and data/tasks (indexing them takes seconds)."""
    return task_manager(TASKS, include_defaults=True)


def test_config_checks(tmp_path):
    project = [ROOT]
    assert check_config({"tasks": ["arc_corpus"], "include_path": str(TASKS)}, project) == []
    problems = check_config({"tasks": ["winnow_choice", "a b", "x", "x"]}, project)
    assert any("winnow_choice" in p and "Winnow's own" in p for p in problems)
    assert any("'a b'" in p for p in problems)
    assert any("twice" in p for p in problems)
    (tmp_path / "t").mkdir()
    outside = check_config({"tasks": ["t"], "include_path": str(tmp_path / "t")}, project)
    assert outside and "eval.harness.include_path" in outside[0] and "outside the project" in outside[0]
    missing = check_config({"tasks": ["t"], "include_path": str(ROOT / "no-such-dir")}, project)
    assert missing and "is not a folder" in missing[0]


def test_resolves_include_path_task(tm):
    spec = task_spec(tm, "arc_corpus")
    assert spec["yaml"] == str(ARC_YAML) and not spec["builtin"]
    # The relative data file is found next to the YAML, wherever the job's working directory is.
    assert spec["data_files"] == {"test": str(OUT)}
    assert check_data(tm, spec) == len(OUT.read_text().splitlines())
    assert task_spec(tm, "arc_easy")["builtin"]


def test_unknown_name_names_key_and_close_matches(tm):
    with pytest.raises(ValueError) as err:
        task_spec(tm, "arc_corpos")
    assert "eval.harness.tasks" in str(err.value) and "arc_corpos" in str(err.value)
    assert "arc_corpus" in str(err.value).split("close matches:")[1]


def test_missing_local_file_is_named(tmp_path):
    folder = tmp_path / "mytasks"
    folder.mkdir()
    shutil.copy(ARC_YAML, folder / "arc_corpus.yaml")  # the YAML without its data file
    with pytest.raises(FileNotFoundError) as err:
        resolve(["arc_corpus"], folder, tm=task_manager(folder, include_defaults=False))
    assert "arc_corpus" in str(err.value) and "'arc_corpus.jsonl' does not exist" in str(err.value)


def test_missing_hub_dataset_is_named_not_a_traceback(tm, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        resolve(["arc_easy"], TASKS, tmp_path, tm=tm)
    text = str(err.value)
    assert "'arc_easy'" in text and "'allenai/ai2_arc'" in text and "ARC-Easy" in text
    assert "not available offline" in text and str(tmp_path) in text


def test_builtin_task_by_name_from_a_local_datasets_cache(tm, tmp_path):
    """lm-eval's own arc_easy, unchanged, reads allenai/ai2_arc from a local datasets cache."""
    split_files = {s: OUT for s in ("train", "validation", "test")}  # arc_easy's YAML names all three
    write_datasets_cache(split_files, "allenai/ai2_arc", "ARC-Easy", tmp_path)
    out = resolve(["arc_easy"], TASKS, tmp_path, tm=tm)
    assert out["tasks"]["arc_easy"]["builtin"]
    assert out["tasks"]["arc_easy"]["n_docs"] == len(OUT.read_text().splitlines())


def test_example_task_has_arc_easy_format(tm):
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(ARC_YAML, resolve_func=False)
    arc = load_yaml(tm.task_index["arc_easy"].yaml_path, resolve_func=False)
    for key in ("output_type", "test_split", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list"):
        assert ours[key] == arc[key], key
    items = [json.loads(line) for line in OUT.read_text().splitlines()]
    assert len(items) >= 100
    for it in items:
        assert set(it) >= {"id", "question", "choices", "answerKey"}
        assert it["choices"]["label"] == ["A", "B", "C", "D"] and len(it["choices"]["text"]) == 4
        assert it["answerKey"] in it["choices"]["label"]
    # Same docs as lm-eval scores them: target is the answer key's index.
    task = tm.load([{**load_yaml(ARC_YAML), "dataset_kwargs": {"data_files": {"test": str(OUT)}}}])["tasks"]
    doc = next(iter(task.values())).eval_docs[0]
    assert next(iter(task.values())).doc_to_target(doc) == "ABCD".index(items[0]["answerKey"])


def test_lambada_example_has_lambada_format(tm):
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(TASKS / "lambada_corpus" / "lambada_corpus.yaml", resolve_func=False)
    lam = load_yaml(tm.task_index["lambada_openai"].yaml_path, resolve_func=False)
    for key in ("output_type", "test_split", "doc_to_text", "doc_to_target", "metric_list"):
        assert ours[key] == lam[key], key
    spec = task_spec(tm, "lambada_corpus")
    assert spec["data_files"] == {"test": str(OUT_LAMBADA)}
    assert check_data(tm, spec) == len(OUT_LAMBADA.read_text().splitlines())


def test_example_tasks_are_held_out_and_up_to_date():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["corpus"]
    assert (config["split_seed"], config["split_fractions"]) == (SPLIT_SEED, SPLIT_FRACTIONS)
    docs = corpus_docs()
    for path, build in ((OUT, build_arc), (OUT_LAMBADA, build_lambada)):
        items = [json.loads(line) for line in path.read_text().splitlines()]
        assert {split_of(it["doc_id"], SPLIT_SEED, SPLIT_FRACTIONS) for it in items} == {"test"}
        assert build(docs, len(items)) == items  # the checked-in file is what the generator makes


def test_table_reads_task_results(tmp_path):
    path = tmp_path / "eval" / "random" / "s0" / "harness-tasks.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "tasks": {"arc_corpus": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25}},
                "items": {"arc_corpus": {"ids": ["a", "b"], "values": {"acc": [1.0, 0.0]}}},
            }
        )
    )
    row = summary_rows([path])[0]
    assert row == {"method": "random", "seed": 0, "arc_corpus/acc": 0.5, "arc_corpus/acc_norm": 0.25}
    assert set(item_metrics(path)) == {"arc_corpus/acc"}
