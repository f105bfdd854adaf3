"""Ingest on hostile inputs: clashing file names, renamed files, empty or fully rejected inputs,
truncated archives (issue 17, items 4, 5 and 7a)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _hostile import ROOT

from winnow.data.ingest import IngestOptions, ingest, split_of
from winnow.io.tables import REJECTS, read_table
from winnow.params import schema_params

FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def _jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def _ids_and_splits(res) -> dict[str, tuple[str, str]]:
    """text → (doc_id, split)"""
    return {d["text"]: (d["doc_id"], d["split"]) for d in res.docs.to_pylist()}


# ---------------------------------------------------------------- 4: ids do not depend on file names


def test_same_file_name_in_two_directories_keeps_every_document(tmp_path):
    a = _jsonl(tmp_path / "d1/data.jsonl", [{"text": f"first folder, document {i}"} for i in range(2)])
    b = _jsonl(tmp_path / "d2/data.jsonl", [{"text": f"second folder, document {i}"} for i in range(3)])
    res = ingest([a, b], IngestOptions(split_fractions=FRACTIONS))
    assert res.manifest["rejected"] == 0, res.rejects.to_pylist()
    assert res.manifest["accepted"] == res.docs.num_rows == 5
    assert len(set(res.docs["doc_id"].to_pylist())) == 5


def test_identical_texts_are_true_duplicates_and_say_so(tmp_path):
    """Without an id field the id is a hash of the content: a repeated text is a duplicate, wherever
    it comes from, and its reject says which record it repeats."""
    a = _jsonl(tmp_path / "d1/data.jsonl", [{"text": "the same words"}, {"text": "other words"}])
    b = _jsonl(tmp_path / "d2/data.jsonl", [{"text": "the same words"}])
    res = ingest([a, b], IngestOptions())
    assert res.docs.num_rows == 2
    (rej,) = res.rejects.to_pylist()
    assert rej["source"] == str(b) and rej["record"] == 0
    assert rej["reason"] == "duplicate_text"
    assert f"{a}#0" in rej["detail"]


@pytest.mark.parametrize("id_field", [None, "id"])
def test_renaming_an_input_changes_no_doc_id_and_no_split(tmp_path, id_field):
    records = [{"id": f"rec-{i}", "text": f"a document about item number {i}"} for i in range(40)]
    records.append({"text": "a record without its id"})  # with id_field: falls back to the content id
    first = _jsonl(tmp_path / "one/corpus.jsonl", records)
    renamed = tmp_path / "elsewhere/renamed_input.jsonl"
    renamed.parent.mkdir()
    shutil.copy(first, renamed)
    opts = dict(id_field=id_field, split_seed=7, split_fractions=FRACTIONS)
    before = _ids_and_splits(ingest([first], IngestOptions(**opts)))
    after = _ids_and_splits(ingest([renamed], IngestOptions(**opts)))
    assert len(before) == 41
    assert after == before
    if id_field:  # the record's own value is the id
        assert before["a document about item number 3"][0] == "rec-3"
    assert {s for _, s in before.values()} == {"train", "val", "test"}  # the splits were really drawn


def test_default_corpus_keeps_its_doc_ids():
    """The bundled corpus has an id field (doc_id): its documents keep exactly those ids."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())["corpus"]
    path = ROOT / cfg["inputs"][0]
    opts = IngestOptions(
        text_field=cfg["text_field"],
        domain_field=cfg["domain_field"],
        id_field=cfg["id_field"],
        max_chars=cfg["max_chars"],
        split_seed=cfg["split_seed"],
        split_fractions=cfg["split_fractions"],
    )
    res = ingest([path], opts)
    own = pq.read_table(path, columns=["doc_id"])["doc_id"].to_pylist()
    assert res.manifest["rejected"] == 0
    assert res.docs["doc_id"].to_pylist() == own
    assert res.docs["split"].to_pylist() == [split_of(d, cfg["split_seed"], cfg["split_fractions"]) for d in own]


# ---------------------------------------------------------------- 5: empty / fully rejected inputs


def _cli_ingest(tmp_path: Path, inputs: list[Path], *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    paths = {k: out / f"{k}.{ext}" for k, ext in (("docs", "parquet"), ("rejects", "parquet"), ("manifest", "json"))}
    cmd = [sys.executable, "-m", "winnow", "data", "ingest", "--inputs", *map(str, inputs), *extra]
    cmd += ["--params", schema_params("data ingest")]
    for k, p in paths.items():
        cmd += [f"--{k}", str(p)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HOME": str(tmp_path / "hf")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120), paths


def test_an_empty_corpus_is_refused_naming_every_input_and_its_reasons(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"text": "unterminated', {"body": "no text"}, {"text": "   "}])
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    failed = tmp_path / "logs/ingest-rejects.parquet"
    proc, paths = _cli_ingest(tmp_path, [bad, empty], "--failed-rejects", str(failed))
    assert proc.returncode != 0
    err = proc.stderr
    assert "no document was accepted" in err, err[-3000:]
    for name in (str(bad), str(empty)):
        assert name in err, err[-3000:]
    assert "invalid_json 1" in err and "missing_text 1" in err and "empty_text 1" in err, err[-3000:]
    assert not paths["docs"].exists()
    for p in (paths["rejects"], failed):  # the rejects are there to look at
        assert read_table(p, REJECTS).num_rows == 3
    assert str(failed) in err


def test_an_input_whose_records_are_all_rejected_gets_a_warning(tmp_path, caplog):
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "fine"}, {"text": "also fine"}])
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"text": "unterminated', {"text": 5}, {"text": 6}])
    with caplog.at_level(logging.WARNING, logger="winnow.data.ingest"):
        res = ingest([good, bad], IngestOptions())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(bad) in w and "invalid_json 1" in w and "missing_text 2" in w for w in warnings), warnings
    assert not any(str(good) in w for w in warnings), warnings
    by_source = {p["source"]: p for p in res.manifest["inputs"]}
    assert by_source[str(bad)]["all_rejected"] is True and by_source[str(good)]["all_rejected"] is False
    assert len(res.manifest["warnings"]) == 1 and str(bad) in res.manifest["warnings"][0]


# ---------------------------------------------------------------- 7a: truncated archives


def test_a_truncated_gzip_input_is_accounted_for_and_named(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"text": f"intact document {i}"} for i in range(3)])
    whole = _jsonl(tmp_path / "whole.jsonl.gz", [{"text": f"zipped document {i} " + "pad " * 50} for i in range(200)])
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    res = ingest([good, cut], IngestOptions())
    m = res.manifest
    assert m["records"] == m["accepted"] + m["rejected"]
    by_source = {p["source"]: p for p in m["inputs"]}
    assert by_source[str(good)]["accepted"] == 3  # the other input's records are kept
    cut_in = by_source[str(cut)]
    assert cut_in["reasons"] == {"read_error": 1}
    assert 0 < cut_in["accepted"] < 200  # what was read before the break is kept and counted
    (rej,) = res.rejects.to_pylist()
    assert rej["reason"] == "read_error" and rej["source"] == str(cut)
    assert rej["record"] == cut_in["accepted"]  # the break comes after the records read
    assert str(cut) in rej["detail"] and "EOFError" in rej["detail"]
    assert any(str(cut) in w and "read_error" in w for w in m["warnings"])


def test_a_file_that_is_not_gzip_at_all_is_a_read_error(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "fine"}])
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text('{"text": "plain text under a .gz name"}\n')
    res = ingest([good, fake], IngestOptions())
    (rej,) = res.rejects.to_pylist()
    assert rej["reason"] == "read_error" and str(fake) in rej["detail"]
    assert res.docs.num_rows == 1


def test_a_corrupt_parquet_input_is_a_read_error(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "fine"}])
    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), table)
    table.write_bytes(table.read_bytes()[:-40])  # the footer is gone
    res = ingest([good, table], IngestOptions())
    (rej,) = res.rejects.to_pylist()
    assert rej["reason"] == "read_error" and str(table) in rej["detail"]
    assert res.docs.num_rows == 1 and res.manifest["records"] == 2
