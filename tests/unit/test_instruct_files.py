"""LESS data from the user's files: formats, record styles, field mapping, rejects, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tiny import train_tokenizer

from winnow.data.instruct_files import build_from_files, check_path, detect_format

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "instruct"
PAIR = {
    "prompt": 'Define the word "cat".\nDefinition:',
    "response": " a small feline",
    "task": "define",
    "subtask": "noun",
}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Define dog."},
        {"role": "assistant", "content": "a canine"},
    ],
    "task": "define",
    "subtask": "noun",
}


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _files(tmp_path: Path, pool: list, target: list | None = None, ev: list | None = None) -> dict:
    return {
        "pool": str(_jsonl(tmp_path / "pool.jsonl", pool)),
        "target": str(_jsonl(tmp_path / "target.jsonl", target or [PAIR])),
        "eval": str(_jsonl(tmp_path / "eval.jsonl", ev or [CHAT])),
    }


def test_pair_and_chat_records_become_instruction_rows(tmp_path):
    inst, rejects, counts = build_from_files(_files(tmp_path, [PAIR, CHAT]))
    rows = inst.to_pylist()
    assert rejects.num_rows == 0 and counts["chat_template"] == "plain"
    pair, chat = rows[0], rows[1]
    # prompt/response verbatim: the loss falls on exactly the response
    assert pair["prompt"] == PAIR["prompt"] and pair["text"] == PAIR["prompt"] + PAIR["response"]
    assert chat["prompt"] == "System: Be brief.\nUser: Define dog.\nAssistant:"
    assert chat["text"] == chat["prompt"] + " a canine"
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert [r["split"] for r in rows if r["source"] == "pool"] == ["train", "train"]
    assert pair["task"] == pair["domain"] == "define" and pair["subtask"] == "noun"
    assert pair["doc_id"].startswith("pool/define/")


def test_ids_do_not_depend_on_file_names_or_order(tmp_path):
    a = build_from_files(_files(tmp_path, [PAIR, CHAT]))[0]
    other = tmp_path / "other"
    other.mkdir()
    b = build_from_files(_files(other, [CHAT, PAIR]))[0]
    ids = lambda t: sorted(t["doc_id"].to_pylist())  # noqa: E731
    assert ids(a) == ids(b)
    own = build_from_files(_files(tmp_path, [{**PAIR, "id": 7}]))[0]
    assert own["doc_id"][0].as_py() == "pool/define/7"


def test_parquet_and_save_to_disk_folders_are_read(tmp_path):
    import datasets

    pq.write_table(pa.Table.from_pylist([PAIR, {**PAIR, "response": " a pet"}]), tmp_path / "pool.parquet")
    datasets.Dataset.from_list([{"messages": CHAT["messages"]}]).save_to_disk(str(tmp_path / "eval_ds"))
    files = _files(tmp_path, [PAIR])
    files.update(pool=str(tmp_path / "pool.parquet"), eval=str(tmp_path / "eval_ds"))
    assert detect_format(files["eval"]) == "hf_disk" and detect_format(files["pool"]) == "parquet"
    inst, _, counts = build_from_files(files)
    assert counts["pool"]["accepted"] == 2 and counts["eval"]["accepted"] == 1
    ev = inst.filter(pa.compute.equal(inst["split"], "test")).to_pylist()
    assert ev[0]["task"] == "default" == ev[0]["subtask"]  # no task field: one default task


def test_field_mapping(tmp_path):
    rec = {"instruction": "Say hi.", "output": " hi", "category": "greet", "kind": "short", "uid": "x1"}
    chat = {"conversation": CHAT["messages"]}
    fields = {
        "prompt": "instruction",
        "response": "output",
        "task": "category",
        "subtask": "kind",
        "id": "uid",
        "messages": "conversation",
    }
    inst, rejects, _ = build_from_files(_files(tmp_path, [rec, chat], [rec], [chat]), fields=fields)
    assert rejects.num_rows == 0
    row = inst.to_pylist()[0]
    assert (row["prompt"], row["task"], row["subtask"], row["doc_id"]) == ("Say hi.", "greet", "short", "pool/greet/x1")
    assert inst.to_pylist()[1]["text"].endswith("Assistant: a canine")


def test_malformed_records_are_rejected_with_reasons(tmp_path):
    bad = [
        "{not json",
        {"prompt": "no response"},
        {"prompt": 3, "response": "x"},
        {"messages": [{"role": "user", "content": "alone"}]},
        {"messages": "hello"},
        {"prompt": "p", "response": "   "},
        PAIR,
        PAIR,  # the same content twice: the same id
    ]
    inst, rejects, counts = build_from_files(_files(tmp_path, bad))
    assert counts["pool"] == {"records": 8, "accepted": 1, "rejected": 7}
    got = rejects.to_pylist()
    assert [r["reason"] for r in got] == [
        "invalid_json",
        "no_usable_field",
        "bad_type",
        "bad_messages",
        "bad_messages",
        "empty_response",
        "duplicate_id",
    ]
    assert [r["record"] for r in got] == [0, 1, 2, 3, 4, 5, 7] and {r["source"] for r in got} == {"pool"}
    assert got[0]["raw"] == b"{not json\n" and "response" in got[1]["detail"]


def test_chat_template_is_used_configured_or_the_tokenizers_own(tmp_path):
    tok = train_tokenizer(["Define dog. a canine. Say hi."] * 20, vocab_size=280)
    files = _files(tmp_path, [PAIR, CHAT])
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    inst, _, counts = build_from_files(files, tokenizer=tok, chat_template=template)
    rows = inst.to_pylist()
    assert counts["chat_template"] == "configured"
    assert rows[0]["prompt"] == f"<|user|>{PAIR['prompt']}\n<|assistant|>" and rows[0]["text"].endswith(
        "a small feline"
    )
    assert rows[1]["prompt"] == "<|system|>Be brief.\n<|user|>Define dog.\n<|assistant|>"
    tok.chat_template = template  # a tokenizer that carries its own template: used when none is configured
    own, _, counts = build_from_files(files, tokenizer=tok)
    assert counts["chat_template"] == "tokenizer" and own["prompt"].to_pylist() == inst["prompt"].to_pylist()


def test_missing_or_empty_files_name_the_key(tmp_path):
    files = _files(tmp_path, [PAIR])
    with pytest.raises(ValueError, match="less.data.files.target"):
        build_from_files({**files, "target": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ValueError, match="less.data.files.eval"):
        build_from_files({k: v for k, v in files.items() if k != "eval"})
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"less.data.files.pool: .*no records"):
        build_from_files({**files, "pool": str(tmp_path / "empty.jsonl")})
    _jsonl(tmp_path / "useless.jsonl", [{"text": "a"}])
    with pytest.raises(ValueError, match=r"less.data.files.pool: .*no usable record .*no_usable_field"):
        build_from_files({**files, "pool": str(tmp_path / "useless.jsonl")})
    with pytest.raises(ValueError, match="config key less.data.files.pool: .* does not exist"):
        check_path("less.data.files.pool", tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="config key less.data.files.pool: .*unknown format"):
        check_path("less.data.files.pool", tmp_path / "data.csv")


def test_the_shipped_example_files(tmp_path):
    files = {
        k: str(EXAMPLE / f) for k, f in (("pool", "pool.jsonl"), ("target", "target.jsonl"), ("eval", "eval.parquet"))
    }
    inst, rejects, counts = build_from_files(files)
    assert sorted(rejects["reason"].to_pylist()) == ["bad_messages", "no_usable_field"]
    pool = inst.filter(pa.compute.equal(inst["split"], "train"))
    assert set(pool["task"].to_pylist()) == {"define", "continue", "saying"}
    assert len(set(pool["subtask"].to_pylist())) >= 6
    assert counts["target"]["accepted"] >= 8 and counts["eval"]["accepted"] >= 16
    assert sum(p.stat().st_size for p in EXAMPLE.iterdir()) < 200_000
