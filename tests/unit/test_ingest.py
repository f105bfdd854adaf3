"""winnow.data.ingest: every kind of bad record in every input format, accounting, splits, CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tiny import offline_env

from winnow.data.ingest import RAW_KEEP, REASONS, IngestOptions, content_id, ingest, render_messages, split_of
from winnow.io.tables import DOCS, REJECTS, read_table
from winnow.params import schema_params

MAX_CHARS = 5000
OPTS = dict(id_field="id", max_chars=MAX_CHARS, split_seed=3)
ACC = "accepted"

# (line bytes, expected outcome) for the JSONL inputs; the record index is the line number.
JSONL_CASES: list[tuple[bytes, str]] = [
    (b'{"id": "p1", "text": "Plain text one.", "domain": "news", "source": "wiki"}', ACC),
    (b'{"id": "pr1", "prompt": "Q: two plus two?\\n", "response": "A: four."}', ACC),
    (
        b'{"id": "m1", "messages": [{"role": "system", "content": "Be brief."}, '
        b'{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}',
        ACC,
    ),
    (b'{"id": "bad", "text": "unterminated"', "invalid_json"),
    (b"", "invalid_json"),  # blank line
    (b"   \t", "invalid_json"),  # whitespace-only line
    (b'{"id": "u1", "text": "caf\xe9 au lait"}', "invalid_utf8"),  # latin-1 byte
    (b'{"id": "s1", "text": "lone \\ud800 surrogate"}', "invalid_utf8"),  # valid JSON, not UTF-8-able
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"null", "not_an_object"),
    (b'{"id": "mt", "body": "no text field"}', "missing_text"),
    (b'{"id": "ns", "text": 42}', "missing_text"),
    (b'{"id": "nl", "text": null}', "missing_text"),
    (b'{"id": "np", "prompt": "Q", "response": 7}', "missing_text"),
    (b'{"id": "e1", "text": "  \\n\\t "}', "empty_text"),
    (b'{"id": "e2", "prompt": "Q: ", "response": "   "}', "empty_text"),
    (
        b'{"id": "e3", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
        "empty_text",
    ),
    (b'{"id": "ol", "text": "' + b"x" * (MAX_CHARS + 1000) + b'"}', "over_length"),
    (b'{"id": "ok", "text": "' + b"y" * MAX_CHARS + b'"}', ACC),  # exactly max_chars is fine
    (b'{"id": "p1", "text": "duplicate of p1"}', "duplicate_id"),
    (
        b'{"id": "bm1", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}',
        "bad_messages",
    ),
    (b'{"id": "bm2", "messages": "not a list"}', "bad_messages"),
    (b'{"id": "bm3", "messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', "bad_messages"),
    (b'{"id": "bm4", "messages": []}', "bad_messages"),
    (
        b'{"id": "bm5", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}',
        "bad_messages",
    ),
    (b'{"text": "No id here, empty domain.", "domain": ""}', ACC),  # id: a hash of the text
    (b'{"text": "No id here, empty domain.", "domain": "other"}', "duplicate_text"),  # same text
    (b'{"id": "crlf", "text": "windows line ending"}\r', ACC),
]

MSG_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def tag_jsonl(cases, tag: str):
    """The cases with ids (and the id-less text) made unique to one input: ids are the records'
    own values, not the file's, so two inputs with the same records would be duplicates."""
    if not tag:
        return cases
    return [
        (line.replace(b'"id": "', f'"id": "{tag}-'.encode()).replace(b"No id here", f"{tag}: no id".encode()), o)
        for line, o in cases
    ]


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


NO_ID_ROW = "Parquet row without id or domain."

# Rows for the Arrow formats (parquet, save_to_disk): every column exists in every row; a null
# means "absent". (row, expected outcome)
ARROW_CASES: list[tuple[dict, str]] = [
    ({"id": "q1", "text": "Parquet plain.", "domain": "code"}, ACC),
    ({"id": "q2", "prompt": "Q? ", "response": "A."}, ACC),
    ({"id": "q3", "messages": _msgs(("user", "hello"), ("assistant", "hi back"))}, ACC),
    ({"id": "q4"}, "missing_text"),
    ({"id": "q5", "text": " \n "}, "empty_text"),
    ({"id": "q6", "text": "z" * (MAX_CHARS + 1)}, "over_length"),
    ({"id": "q1", "text": "duplicate of q1"}, "duplicate_id"),
    ({"id": "q8", "messages": _msgs(("user", "no reply"))}, "bad_messages"),
    ({"id": "q9", "messages": _msgs(("user", None), ("assistant", "y"))}, "bad_messages"),
    ({"text": NO_ID_ROW}, ACC),
]
ARROW_COLUMNS = {
    "id": pa.string(),
    "text": pa.string(),
    "domain": pa.string(),
    "prompt": pa.string(),
    "response": pa.string(),
    "messages": MSG_TYPE,
}

# A parquet file whose text column is binary: bytes that are UTF-8 are text, others are rejected.
BINARY_CASES: list[tuple[bytes | None, str]] = [
    (b"valid bytes text", ACC),
    (b"caf\xe9", "invalid_utf8"),
    (None, "missing_text"),
    (b"   ", "empty_text"),
]


def tag_arrow(cases, tag: str):
    """Like :func:`tag_jsonl` for ARROW_CASES rows."""
    if not tag:
        return cases
    out = []
    for row, o in cases:
        row = dict(row)
        if "id" in row:
            row["id"] = f"{tag}-{row['id']}"
        if row.get("text") == NO_ID_ROW:
            row["text"] = f"{tag}: {NO_ID_ROW}"
        out.append((row, o))
    return out


def _arrow_table(cases) -> pa.Table:
    return pa.table({name: pa.array([row.get(name) for row, _ in cases], typ) for name, typ in ARROW_COLUMNS.items()})


def write_jsonl(path: Path, cases) -> None:
    data = b"\n".join(line for line, _ in cases) + b"\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def write_binary_parquet(path: Path) -> None:
    ids = [f"b{i}" for i in range(len(BINARY_CASES))]
    pq.write_table(pa.table({"id": ids, "text": pa.array([b for b, _ in BINARY_CASES], pa.binary())}), path)


def write_int_parquet(path: Path) -> None:
    pq.write_table(pa.table({"id": ["i0", "i1"], "text": pa.array([7, None], pa.int64())}), path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """All inputs, plus the expected outcome of every record: {source: [outcome by record index]}."""
    root = tmp_path_factory.mktemp("corpus")
    mp = pytest.MonkeyPatch()
    offline_env(root, mp)
    import datasets
    from datasets.table import InMemoryTable

    inputs, expected = [], {}

    def add(path, outcomes, source=None):
        if str(path) not in inputs:
            inputs.append(str(path))
        expected[source or str(path)] = outcomes

    p = root / "lines.jsonl"
    write_jsonl(p, JSONL_CASES)
    add(p, [o for _, o in JSONL_CASES])
    p = root / "zipped.jsonl.gz"
    write_jsonl(p, tag_jsonl(JSONL_CASES, "z"))
    add(p, [o for _, o in JSONL_CASES])
    p = root / "truncated.jsonl.gz"
    write_jsonl(
        p,
        [(f'{{"id": "t{i}", "text": "record {i} of a file cut short {"x" * 40}"}}'.encode(), ACC) for i in range(300)],
    )
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    n_read = 0
    with gzip.open(p, "rb") as fh, pytest.raises(EOFError):
        for _ in fh:
            n_read += 1
    add(p, [ACC] * n_read + ["read_error"])
    p = root / "table.parquet"
    pq.write_table(_arrow_table(ARROW_CASES), p)
    add(p, [o for _, o in ARROW_CASES])
    p = root / "binary.parquet"
    write_binary_parquet(p)
    add(p, [o for _, o in BINARY_CASES])
    p = root / "ints.parquet"
    write_int_parquet(p)
    add(p, ["missing_text", "missing_text"])
    ds_path = root / "saved_ds"
    datasets.Dataset(InMemoryTable(_arrow_table(tag_arrow(ARROW_CASES, "s")))).save_to_disk(str(ds_path))
    add(ds_path, [o for _, o in ARROW_CASES])
    dd_path = root / "saved_dd"
    dd = datasets.DatasetDict(
        {
            # both splits use the same ids: a DatasetDict's splits are separate namespaces
            "train": datasets.Dataset(InMemoryTable(_arrow_table(ARROW_CASES[:3]))),
            "test": datasets.Dataset(InMemoryTable(_arrow_table([ARROW_CASES[0], ARROW_CASES[3]]))),
        }
    )
    dd.save_to_disk(str(dd_path))
    add(dd_path, [ACC, ACC, ACC], source=f"{dd_path}/train")
    add(dd_path, [ACC, "missing_text"], source=f"{dd_path}/test")
    result = ingest(inputs, IngestOptions(**OPTS))
    yield root, inputs, expected, result
    mp.undo()


def test_counts_add_up_per_input_and_overall(corpus):
    _, _, expected, res = corpus
    m = res.manifest
    assert m["records"] == sum(len(v) for v in expected.values())
    assert m["records"] == m["accepted"] + m["rejected"]
    assert m["accepted"] == res.docs.num_rows == sum(o == ACC for v in expected.values() for o in v)
    assert m["rejected"] == res.rejects.num_rows
    by_source = {p["source"]: p for p in m["inputs"]}
    assert set(by_source) == set(expected)
    for source, outcomes in expected.items():
        p = by_source[source]
        assert p["records"] == len(outcomes) == p["accepted"] + p["rejected"], source
        assert p["accepted"] == outcomes.count(ACC), source
        assert p["reasons"] == dict(Counter(o for o in outcomes if o != ACC)), source
    overall = Counter(o for v in expected.values() for o in v if o != ACC)
    assert m["reasons"] == dict(overall)
    assert set(m["reasons"]) <= set(REASONS)
    assert set(m["reasons"]) == set(REASONS)  # the corpus exercises every reason


def test_each_reject_has_right_reason_and_location(corpus):
    _, _, expected, res = corpus
    got = {(r["source"], r["record"]): r["reason"] for r in res.rejects.to_pylist()}
    want = {(s, i): o for s, outs in expected.items() for i, o in enumerate(outs) if o != ACC}
    assert got == want
    assert res.rejects.schema.equals(REJECTS)
    assert all(r["detail"] is not None for r in res.rejects.to_pylist())


@pytest.mark.parametrize("name,tag", [("lines.jsonl", ""), ("zipped.jsonl.gz", "z")])
def test_jsonl_rejects_keep_raw_bytes(corpus, name, tag):
    root, _, _, res = corpus
    source = str(root / name)
    raw = {r["record"]: r["raw"] for r in res.rejects.to_pylist() if r["source"] == source}
    for i, (line, outcome) in enumerate(tag_jsonl(JSONL_CASES, tag)):
        if outcome == ACC:
            continue
        assert raw[i] == line.rstrip(b"\r")[:RAW_KEEP], i
    over = next(i for i, (_, o) in enumerate(JSONL_CASES) if o == "over_length")
    assert len(raw[over]) == RAW_KEEP  # truncated, but kept
    bad_utf8 = next(i for i, (_, o) in enumerate(JSONL_CASES) if o == "invalid_utf8")
    assert b"caf\xe9" in raw[bad_utf8]  # the undecodable byte itself, not a replacement


def test_arrow_rejects_keep_the_record(corpus):
    root, _, _, res = corpus
    rows = {(r["source"], r["record"]): r for r in res.rejects.to_pylist()}
    r = rows[(str(root / "table.parquet"), 6)]  # duplicate q1
    assert r["reason"] == "duplicate_id" and json.loads(r["raw"])["text"] == "duplicate of q1"
    r = rows[(str(root / "binary.parquet"), 1)]
    assert r["reason"] == "invalid_utf8"
    assert json.loads(r["raw"])["text"] == repr(b"caf\xe9")  # recoverable: the bytes' repr


def _docs(res) -> dict[str, dict]:
    return {d["doc_id"]: d for d in res.docs.to_pylist()}


def test_accepted_docs_content(corpus):
    root, _, _, res = corpus
    docs = _docs(res)
    assert len(docs) == res.docs.num_rows  # doc ids unique
    assert res.docs.schema.equals(DOCS)

    plain = docs["p1"]  # the record's own id, whatever the file is called
    assert plain["text"] == "Plain text one." and plain["prompt"] is None
    assert plain["domain"] == "news" and plain["source"] == "wiki"  # record's own source wins
    assert docs["z-p1"]["text"] == "Plain text one."

    pr = docs["pr1"]
    assert pr["prompt"] == "Q: two plus two?\n"
    assert pr["text"] == "Q: two plus two?\nA: four."
    assert pr["domain"] == "lines"  # no domain field → the input's file stem
    assert pr["source"] == str(root / "lines.jsonl")

    chat = docs["m1"]
    prompt, response = render_messages(_msgs(("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!")))
    assert chat["prompt"] == prompt and chat["text"] == prompt + response
    assert chat["text"].startswith(chat["prompt"]) and chat["text"].endswith("Hello!")
    assert "Hi there" in chat["prompt"] and "Hello!" not in chat["prompt"]

    no_id = docs[content_id("No id here, empty domain.")]  # content-based id
    assert no_id["text"] == "No id here, empty domain." and no_id["domain"] == "lines"
    assert no_id["doc_id"].startswith("sha256-") and len(no_id["doc_id"]) == 7 + 32
    assert docs["crlf"]["text"] == "windows line ending"
    assert docs["ok"]["text"] == "y" * MAX_CHARS


@pytest.mark.parametrize("name,tag", [("table.parquet", ""), ("saved_ds", "s")])
def test_arrow_mixed_rows(corpus, name, tag):
    """Plain, prompt/response and messages rows in one table (nulls in the unused columns)."""
    _, _, _, res = corpus
    stem = name.removesuffix(".parquet")
    pre = f"{tag}-" if tag else ""
    docs = _docs(res)
    assert docs[f"{pre}q1"]["text"] == "Parquet plain." and docs[f"{pre}q1"]["domain"] == "code"
    assert docs[f"{pre}q2"]["prompt"] == "Q? " and docs[f"{pre}q2"]["text"] == "Q? A."
    chat = docs[f"{pre}q3"]
    assert chat["text"].startswith(chat["prompt"]) and chat["text"].endswith("hi back")
    assert chat["prompt"].endswith("<|assistant|>\n")
    no_id = tag_arrow([({"text": NO_ID_ROW}, ACC)], tag)[0][0]["text"]
    assert docs[content_id(no_id)]["domain"] == stem


def test_binary_text_column(corpus):
    _, _, _, res = corpus
    assert _docs(res)["b0"]["text"] == "valid bytes text"


def test_dataset_dict_splits_are_separate_namespaces(corpus):
    root, _, _, res = corpus
    dd = [d for d in res.docs.to_pylist() if d["source"].startswith(str(root / "saved_dd"))]
    assert len(dd) == 4  # 3 train + 1 test, none lost as a "duplicate" of the other split
    # the split name (part of the data, not the folder's name) keeps the record ids apart
    assert sorted(d["doc_id"] for d in dd) == ["test/q1", "train/q1", "train/q2", "train/q3"]
    assert {d["source"] for d in dd} == {f"{root}/saved_dd/train", f"{root}/saved_dd/test"}
    assert all(d["domain"] in ("saved_dd", "code") for d in dd)


def test_index_ids_of_dataset_dict_splits_do_not_collide(tmp_path, monkeypatch):
    offline_env(tmp_path, monkeypatch)
    import datasets

    dd = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"text": [f"{s} doc {i}" for i in range(3)]}) for s in ("train", "test")}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    res = ingest([tmp_path / "dd"], IngestOptions())  # no id field: ids from the texts
    assert res.rejects.num_rows == 0
    assert res.docs.num_rows == 6 and len(set(res.docs["doc_id"].to_pylist())) == 6


def test_splits_follow_split_of(corpus):
    _, _, _, res = corpus
    for d in res.docs.to_pylist():
        assert d["split"] == split_of(d["doc_id"], OPTS["split_seed"], {"train": 0.9, "val": 0.05, "test": 0.05})
    assert res.manifest["splits"] == dict(sorted(Counter(res.docs["split"].to_pylist()).items()))
    assert res.manifest["domains"] == dict(sorted(Counter(res.docs["domain"].to_pylist()).items()))


def test_ingest_is_deterministic_and_default_domain(corpus):
    root, inputs, _, res = corpus
    again = ingest(inputs, IngestOptions(**OPTS))
    assert again.docs.equals(res.docs) and again.rejects.equals(res.rejects)
    assert again.manifest == res.manifest
    named = ingest([root / "lines.jsonl"], IngestOptions(**OPTS, default_domain="misc"))
    d = _docs(named)
    assert d["pr1"]["domain"] == "misc" and d["p1"]["domain"] == "news"
    no_field = ingest([root / "lines.jsonl"], IngestOptions(**{**OPTS, "domain_field": None}))
    assert set(no_field.docs["domain"].to_pylist()) == {"lines"}


def test_split_of_properties():
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    ids = [f"src/{i}" for i in range(4000)]
    a = [split_of(i, 0, fr) for i in ids]
    assert a == [split_of(i, 0, dict(reversed(list(fr.items())))) for i in ids]  # dict order irrelevant
    c = Counter(a)
    assert abs(c["train"] / 4000 - 0.8) < 0.03 and abs(c["val"] / 4000 - 0.1) < 0.02
    b = [split_of(i, 1, fr) for i in ids]
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 400  # the seed matters
    assert {split_of(i, 0, {"train": 1.0, "val": 0.0, "test": 0.0}) for i in ids} == {"train"}


def test_unsupported_input(tmp_path):
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="unsupported input"):
        ingest([tmp_path / "x.csv"], IngestOptions())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_ingest_writes_outputs_and_sidecars(tmp_path, monkeypatch):
    offline_env(tmp_path, monkeypatch)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, JSONL_CASES)
    out = tmp_path / "out"
    docs, rejects, manifest = out / "docs.parquet", out / "rejects.parquet", out / "manifest.json"
    cmd = [
        sys.executable, "-m", "winnow", "data", "ingest", "--inputs", str(src), "--params", schema_params(
            "data ingest", id_field="id", max_chars=MAX_CHARS, split_seed=3,
            split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        ),
        "--docs", str(docs), "--rejects", str(rejects), "--manifest", str(manifest),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(manifest.read_text())
    assert m["records"] == len(JSONL_CASES) == m["accepted"] + m["rejected"]
    assert m["accepted"] == sum(o == ACC for _, o in JSONL_CASES)
    d = read_table(docs, DOCS)
    assert d.num_rows == m["accepted"]
    assert read_table(rejects, REJECTS).num_rows == m["rejected"]
    fr = {"train": 0.5, "val": 0.25, "test": 0.25}
    assert all(r["split"] == split_of(r["doc_id"], 3, fr) for r in d.to_pylist())

    from winnow.provenance import command_hash

    for artifact in (docs, rejects, manifest):
        side = json.loads(Path(f"{artifact}.prov.json").read_text())
        assert side["sha256"] == _sha(artifact)
        assert side["bytes"] == artifact.stat().st_size
        assert side["command"] == "data ingest"
        assert side["inputs"] == {str(src): _sha(src)}
        assert side["seed"] == 3
        assert side["params"]["split_fractions"] == fr and side["params"]["id_field"] == "id"
        assert side["code"]["hash"] == command_hash("data ingest")
        assert "winnow.data.ingest" in side["code"]["modules"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}{s}" for n in ("docs.parquet", "rejects.parquet", "manifest.json") for s in ("", ".prov.json")]
    )  # no temp files left behind


def test_per_input_options_force_split_and_domain(tmp_path):
    """A target set (e.g. instruction data) comes in as split "target" with its own domain."""
    import json as _json

    from winnow.data.ingest import IngestOptions, ingest

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(_json.dumps({"text": f"plain document {i}", "domain": "web"}) + "\n" for i in range(20)))
    target = tmp_path / "lima.jsonl"
    target.write_text(
        "".join(
            _json.dumps({"prompt": f"Question {i}?\n", "response": f"Answer {i}.", "domain": "ignored"}) + "\n"
            for i in range(5)
        )
    )
    opts = IngestOptions(per_input={str(target): {"split": "target", "domain": "lima"}})
    res = ingest([str(corpus), str(target)], opts)
    rows = res.docs.to_pylist()
    tgt = [r for r in rows if r["source"] == str(target)]
    assert len(tgt) == 5 and all(r["split"] == "target" and r["domain"] == "lima" for r in tgt)
    assert all(r["prompt"] is not None and r["text"].startswith(r["prompt"]) for r in tgt)
    rest = [r for r in rows if r["source"] == str(corpus)]
    assert len(rest) == 20
    assert {r["split"] for r in rest} <= {"train", "val", "test"} and all(r["domain"] == "web" for r in rest)
    assert res.manifest["splits"]["target"] == 5
