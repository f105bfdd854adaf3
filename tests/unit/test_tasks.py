from __future__ import annotations

import re

import pyarrow as pa
import pytest
from _tiny import make_docs

from winnow.data.tasks import build_choice, build_lastword, read_jsonl, split_sentences, write_jsonl
from winnow.io.tables import DOCS


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return make_docs(n_per_domain=20, sentences=8)


def _by_id(docs):
    return {d["doc_id"]: d for d in docs}


def test_split_sentences_spans():
    text = '  First one. "Second?" he said!  Third\nline.  trailing fragment'
    got = [text[s.start : s.end] for s in split_sentences(text)]
    assert got == ["First one.", '"Second?"', "he said!", "Third\nline."]


def test_lastword_deterministic_and_order_independent(docs):
    a = build_lastword(docs, 15, seed=3)
    assert a == build_lastword(list(reversed(docs)), 15, seed=3)
    assert a == build_lastword(pa.Table.from_pylist(docs, schema=DOCS), 15, seed=3)
    assert a != build_lastword(docs, 15, seed=4)
    assert len(a) == 15


def test_lastword_items_are_valid(docs):
    by_id = _by_id(docs)
    items = build_lastword(docs, 100, seed=0)
    assert len({it["doc_id"] for it in items}) == len(items)  # at most one per document
    for it in items:
        ctx, target = it["context"], it["target"]
        assert target.startswith(" ") and target[1:].isalpha() and len(target) >= 4
        assert ctx == ctx.rstrip()
        word = target[1:]
        assert re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", ctx), (word, ctx)
        doc = by_id[it["doc_id"]]
        assert it["domain"] == doc["domain"]
        # The passage is a real piece of the document that ends at a sentence end.
        m = re.search(re.escape(ctx + target) + r"[.!?]", doc["text"])
        assert m is not None
        assert len(ctx + target) + 1 <= 600


def test_lastword_respects_max_chars_and_skips_docs_without_items():
    long_text = " ".join(f"Sentence number {i} mentions apples and apples." for i in range(60))
    docs = [
        {"doc_id": "long", "text": long_text, "domain": "x", "source": "s", "split": "test", "prompt": None},
        # No final word occurs earlier; one ends in a 2-letter word.
        {
            "doc_id": "none",
            "text": "Cats sleep. Dogs bark. We go.",
            "domain": "x",
            "source": "s",
            "split": "test",
            "prompt": None,
        },
    ]
    items = build_lastword(docs, 10, seed=0, max_chars=120)
    assert [it["doc_id"] for it in items] == ["long"]
    assert len(items[0]["context"] + items[0]["target"]) + 1 <= 120
    assert items[0]["target"] == " apples"


def test_lastword_split_filter_and_balance():
    docs = make_docs(n_per_domain=6)
    for d in docs[:3]:
        d["split"] = "train"
    items = build_lastword(docs, 100, seed=0, split="test")
    assert all(it["doc_id"] not in {d["doc_id"] for d in docs[:3]} for it in items)
    # Unbalanced domains: 10 farm, 2 sea documents -> round-robin puts both sea items first.
    docs = make_docs(n_per_domain=10)
    docs = [d for d in docs if d["domain"] == "farm" or d["doc_id"] in ("sea-000", "sea-001")]
    items = build_lastword(docs, 4, seed=0, balance_domains=True)
    assert sorted(it["domain"] for it in items) == ["farm", "farm", "sea", "sea"]


def test_choice_deterministic(docs):
    a = build_choice(docs, 20, seed=1)
    assert len(a) == 20
    assert a == build_choice(list(reversed(docs)), 20, seed=1)
    assert a != build_choice(docs, 20, seed=2)


def test_choice_items_are_valid(docs):
    by_id = _by_id(docs)
    items = build_choice(docs, 100, seed=0)
    assert len(items) == len(docs)
    labels = set()
    for it in items:
        doc = by_id[it["doc_id"]]
        choices, label = it["choices"], it["label"]
        assert len(choices) == 4 and len(set(choices)) == 4
        assert 0 <= label < 4
        labels.add(label)
        answer = choices[label]
        # True next sentence: context followed (after whitespace) by the answer in the document.
        assert re.search(re.escape(it["context"]) + r"\s+" + re.escape(answer), doc["text"])
        assert all(not c.startswith(" ") for c in choices)
        for j, c in enumerate(choices):
            if j == label:
                continue
            assert c not in doc["text"]  # not from this document ...
            sources = [d for d in docs if c in d["text"]]
            assert sources and all(d["domain"] == doc["domain"] for d in sources)  # ... but same domain
    assert labels == {0, 1, 2, 3}


def test_choice_needs_other_docs_of_same_domain():
    docs = make_docs(n_per_domain=4)
    # A lone document in its own domain has no distractor pool: skipped.
    docs = [d for d in docs if d["domain"] == "farm"] + [dict(docs[-1], domain="lonely")]
    items = build_choice(docs, 100, seed=0)
    assert {it["domain"] for it in items} == {"farm"}
    assert len(items) == 4


def test_write_jsonl_roundtrip(tmp_path, docs):
    items = build_choice(docs, 5, seed=0) + build_lastword(docs, 5, seed=0)
    path = tmp_path / "sub" / "items.jsonl"
    write_jsonl(path, items)
    assert read_jsonl(path) == items
    assert [p.name for p in path.parent.iterdir()] == ["items.jsonl"]  # no temp file left
