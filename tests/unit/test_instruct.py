"""winnow.data.instruct: instruction examples from the bundled corpus, the define-choice task."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _tiny import offline_env

from winnow.data.ingest import split_of
from winnow.data.instruct import (
    CONTINUE_DOMAINS,
    TASKS,
    _parse_wordnet_line,
    _pos_of,
    build_define_choice,
    build_instructions,
    less_sets,
    target_subtasks,
)
from winnow.data.tasks import write_jsonl
from winnow.eval.harness import task_kind
from winnow.io.tables import DOCS, INSTRUCTIONS, read_table, write_table

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "default_corpus" / "corpus.parquet"
FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}
CAP = 400


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """The bundled corpus as ingest makes it (DOCS columns, ids kept, seeded splits)."""
    rows = pq.read_table(CORPUS, columns=["doc_id", "text", "domain", "source"]).to_pylist()
    return [{**r, "split": split_of(r["doc_id"], 0, FRACTIONS), "prompt": None} for r in rows]


@pytest.fixture(scope="module")
def docs_by_id(docs) -> dict[str, dict]:
    return {d["doc_id"]: d for d in docs}


@pytest.fixture(scope="module")
def inst(docs) -> pa.Table:
    return build_instructions(pa.Table.from_pylist(docs, schema=DOCS), seed=0, max_per_task=CAP)


@pytest.fixture(scope="module")
def rows(inst) -> list[dict]:
    return inst.to_pylist()


def _source_doc(item_id: str) -> str:
    return item_id.split("/", 1)[1].rsplit("/", 1)[0]


def test_schema_and_roundtrip(inst, tmp_path):
    assert inst.schema.equals(INSTRUCTIONS)
    assert INSTRUCTIONS.names[: len(DOCS)] == DOCS.names
    write_table(tmp_path / "inst.parquet", inst, INSTRUCTIONS)
    assert read_table(tmp_path / "inst.parquet", INSTRUCTIONS).equals(inst)


def test_every_task_in_every_split_within_cap(rows):
    counts = Counter((r["task"], r["split"]) for r in rows)
    for task in TASKS:
        for split in ("train", "val", "test"):
            assert 0 < counts[(task, split)] <= CAP, (task, split)
    assert all(counts[(t, "train")] == CAP for t in TASKS)  # the train split has plenty of each


def test_rows_are_valid_prompt_response_pairs(rows, docs_by_id):
    assert len({r["doc_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["task"] in TASKS and r["domain"] == r["task"]
        assert r["doc_id"].startswith(r["task"] + "/")
        assert r["doc_id"].rsplit("/", 1)[1].isdigit()
        src = docs_by_id[_source_doc(r["doc_id"])]
        assert r["split"] == src["split"]  # inherited: no source document spans two splits
        assert r["source"] == src["source"]
        prompt, text = r["prompt"], r["text"]
        assert prompt and text.startswith(prompt)
        response = text[len(prompt) :]
        assert response.strip(), r
        # A space after a ":"/quote-ending prompt, a non-space character right after a newline.
        assert response.startswith(" ") != prompt.endswith("\n"), r
        body = response[1:] if response.startswith(" ") else response
        assert not body[0].isspace() and response == response.rstrip(), r
        assert len(text) <= 500, r


def test_task_formats(rows, docs_by_id):
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for r in by_task["define"]:
        assert r["prompt"].startswith('Define the word "') and r["prompt"].endswith('".\nDefinition:')
    for r in by_task["usage"]:
        word = r["prompt"].split('"')[1]
        assert word.lower() in r["text"][len(r["prompt"]) :].lower()
    for r in by_task["synonym"]:
        assert r["prompt"].endswith('".\nSynonym:')
        assert r["text"][len(r["prompt"]) + 1 :].lower() != r["prompt"].split('"')[1].lower()
    for r in by_task["verse"]:
        assert r["prompt"].startswith("Quote ") and r["prompt"].endswith(".\nVerse:")
        src = docs_by_id[_source_doc(r["doc_id"])]
        verse_no = re.match(r"Quote .+ \d+:(\d+)\.\nVerse:$", r["prompt"]).group(1)
        assert f"\n{verse_no}{r['text'][len(r['prompt']) :]}" in "\n" + src["text"]
    for r in by_task["dialogue"]:
        assert r["prompt"].startswith("Continue the scene.\n") and r["prompt"].endswith(".\n")
    for r in by_task["saying"]:
        assert r["prompt"].startswith('Complete the saying: "') and r["text"].endswith('"')
    for r in by_task["continue"]:
        assert r["prompt"].startswith("Continue the text:\n")
        assert docs_by_id[_source_doc(r["doc_id"])]["domain"] == r["subtask"]


def test_subtasks(rows):
    define = Counter(r["subtask"] for r in rows if r["task"] == "define")
    assert len(define) >= 2 and set(define) <= {"noun", "verb", "adj", "adv"}
    for r in rows:
        if r["task"] == "define":
            assert r["subtask"] == _source_doc(r["doc_id"]).split("/")[1].split(".")[0]
    for split in ("train", "val", "test"):
        cont = {r["subtask"] for r in rows if r["task"] == "continue" and r["split"] == split}
        assert cont == set(CONTINUE_DOMAINS)
    for task in ("verse", "dialogue", "saying"):
        assert {r["subtask"] for r in rows if r["task"] == task} == {task}


def test_deterministic_and_row_order_independent(docs, inst):
    shuffled = list(docs)
    random.Random(7).shuffle(shuffled)
    assert build_instructions(shuffled, seed=0, max_per_task=CAP).equals(inst)
    small = build_instructions(docs, seed=0, max_per_task=5)
    assert small.num_rows == 5 * 3 * len(TASKS)
    assert not build_instructions(docs, seed=1, max_per_task=5).equals(small)
    # A smaller cap keeps a subset of a larger one (same seeded order).
    assert set(small["doc_id"].to_pylist()) <= set(inst["doc_id"].to_pylist())


def test_ignores_prompt_docs_and_other_domains(docs):
    wordnet = [d for d in docs if d["domain"] == "wordnet"][:5]
    extra = [
        {**wordnet[0], "doc_id": "x/1", "prompt": "Q:"},
        {**wordnet[1], "doc_id": "x/2", "domain": "lima"},
    ]
    with_extra = build_instructions(wordnet + extra, seed=0, max_per_task=50)
    assert with_extra.equals(build_instructions(wordnet, seed=0, max_per_task=50))
    with pytest.raises(ValueError, match="duplicate"):
        build_instructions(wordnet + wordnet[:1], seed=0, max_per_task=5)


def test_parse_wordnet_line():
    lemmas, gloss, ex = _parse_wordnet_line('flat: commercially inactive; "flat sales for the month"; "a flat market"')
    assert (lemmas, gloss, ex) == (["flat"], "commercially inactive", ["flat sales for the month", "a flat market"])
    line = 'stride: significant progress (especially in the phrase "make strides"); "they made big strides"'
    assert _parse_wordnet_line(line)[1:] == (
        'significant progress (especially in the phrase "make strides")',
        ["they made big strides"],
    )
    assert _parse_wordnet_line('a, b: impossible to avoid:"inescapable conclusion"')[1:] == (
        "impossible to avoid",
        ["inescapable conclusion"],
    )
    assert _parse_wordnet_line("no colon here") is None


@pytest.mark.parametrize(
    "doc_id, pos",
    [
        ("wordnet/adj.all/0005", "adj"),  # the bundled corpus's ids
        ("wordnet_noun.Tops_0001", "noun"),  # the test corpus's ids (underscores, capitals)
        ("wordnet/verb.body/0002", "verb"),
        ("kjv/Genesis/0001", None),
        ("wordnet_adjective_01", None),
    ],
)
def test_part_of_speech_from_the_doc_id(doc_id, pos):
    assert _pos_of(doc_id) == pos


def test_target_subtasks(inst, rows):
    got = target_subtasks(inst, "define", "val")
    want = {r["doc_id"]: r["subtask"] for r in rows if r["task"] == "define" and r["split"] == "val"}
    assert got == want and got
    assert target_subtasks(inst, "define", "nope") == {}


def test_define_choice(inst, rows, tmp_path):
    items = build_define_choice(inst, split="test", n=150, seed=0)
    assert len(items) == 150
    assert items == build_define_choice(inst, split="test", n=150, seed=0)
    assert items != build_define_choice(inst, split="test", n=150, seed=1)
    by_id = {r["doc_id"]: r for r in rows}
    test_glosses = {r["text"][len(r["prompt"]) + 1 :] for r in rows if r["task"] == "define" and r["split"] == "test"}
    for it in items:
        row = by_id[it["doc_id"]]
        assert row["task"] == "define" and row["split"] == "test"
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert 0 <= it["label"] < 4
        assert it["context"] == row["prompt"]
        # lm-eval scores context + " " + choice: exactly the instruction text for the truth.
        assert it["context"] + " " + it["choices"][it["label"]] == row["text"]
        assert all(not c.startswith(" ") for c in it["choices"])
        assert set(it["choices"]) <= test_glosses  # distractors from the same split only
    assert len(Counter(it["label"] for it in items)) == 4
    path = tmp_path / "define_choice.jsonl"
    write_jsonl(path, items)
    assert task_kind(path) == "choice"


def test_tokenized_loss_is_on_the_response(inst, tmp_path_factory):
    from winnow.data.tokenize import tokenize_shard
    from winnow.data.tokenizer import load, train_bpe

    mp = pytest.MonkeyPatch()
    try:
        offline_env(tmp_path_factory.mktemp("hf"), mp)
        mp.setenv("RAYON_NUM_THREADS", "1")
        sample = pa.concat_tables([inst.filter(pc.equal(inst["task"], t)).slice(0, 40) for t in TASKS])
        out = tmp_path_factory.mktemp("tok") / "tokenizer"
        train_bpe(sample["text"].to_pylist(), vocab_size=400, out_dir=out)
        tok = load(out)
        seq_len = 128
        tokens, examples, stats = tokenize_shard(sample.select(DOCS.names), tok, 0, 1, seq_len)
    finally:
        mp.undo()
    assert examples.num_rows == sample.num_rows and stats.get("dropped_pieces", 0) == 0
    texts = dict(zip(sample["doc_id"].to_pylist(), sample["text"].to_pylist(), strict=True))
    prompts = dict(zip(sample["doc_id"].to_pylist(), sample["prompt"].to_pylist(), strict=True))
    for ex in examples.to_pylist():
        assert 0 < ex["loss_start"] < ex["length"] <= seq_len
        piece = tokens[ex["offset"] : ex["offset"] + ex["length"]].tolist()
        response = tok.decode(piece[ex["loss_start"] : -1])  # drop the eos
        full = texts[ex["doc_id"]]
        if ex["length"] < seq_len:  # nothing cut: the loss region is exactly the response
            assert response == full[len(prompts[ex["doc_id"]]) :]
            assert tok.decode(piece[:-1]) == full


def _one_example_per_row(inst: pa.Table) -> pa.Table:
    """An EXAMPLES-like table: example i is instruction row i (what tokenize_shard gives short items)."""
    return pa.table(
        {
            "example_id": pa.array(range(inst.num_rows), pa.int64()),
            "doc_id": inst["doc_id"],
            "domain": inst["domain"],
            "split": inst["split"],
        }
    )


@pytest.mark.parametrize("from_files", [False, True])
def test_less_sets(inst, from_files):
    examples = _one_example_per_row(inst)
    cfg = {"seed": 0, "pool_size": 50, "target_per_subtask": 2, "eval_size": 8, "target_task": "define", "n_choice": 5}
    sets = less_sets(inst, examples, cfg, from_files=from_files)
    row = {r["example_id"]: r for r in examples.to_pylist()}
    sub = dict(zip(inst["doc_id"].to_pylist(), inst["subtask"].to_pylist(), strict=True))
    assert sets.subtasks["example_id"].to_pylist() == list(range(inst.num_rows))
    assert sets.subtasks["subtask"].to_pylist() == [sub[row[e]["doc_id"]] for e in range(inst.num_rows)]
    assert sets.pool.size == 50 and {row[e]["split"] for e in sets.pool.tolist()} == {"train"}
    assert {row[e]["split"] for e in sets.target.tolist()} == {"val"}
    assert {row[e]["split"] for e in sets.eval_ids.tolist()} == {"test"}
    assert max(Counter(sub[row[e]["doc_id"]] for e in sets.target.tolist()).values()) <= 2
    if from_files:  # every task is a target; no define-choice task
        assert sets.choice == [] and sets.summary["source"] == "files"
        assert sets.summary["target_task"] == sorted({r["domain"] for r in row.values() if r["split"] == "val"})
    else:
        assert {row[e]["domain"] for e in [*sets.target.tolist(), *sets.eval_ids.tolist()]} == {"define"}
        assert len(sets.choice) == 5 and sets.summary["target_task"] == "define"
    assert sets.summary["n_pool"] == 50 and sets.summary["n_choice"] == len(sets.choice)
    assert sum(sets.summary["pool_per_task"].values()) == 50
    again = less_sets(inst, examples, cfg, from_files=from_files)
    assert again.pool.tolist() == sets.pool.tolist() and again.target.tolist() == sets.target.tolist()


def test_less_sets_empty_set_is_an_error(inst):
    examples = _one_example_per_row(inst)
    cfg = {"seed": 0, "pool_size": 5, "target_per_subtask": 2, "eval_size": 8, "target_task": "nope", "n_choice": 5}
    with pytest.raises(ValueError, match="the target set is empty"):
        less_sets(inst, examples, cfg, from_files=False)
