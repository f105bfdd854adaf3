"""External score files: formats, doc_id vs example_id keys, rejects with reasons, duplicates,
the missing policies, and the demo heuristic's file read back through the same path."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.methods.external import align, detect_format, heuristic_score, read_records, write_scores_file

# A corpus of 3 docs / 6 examples; the pool is docs a and b (examples 0..3); doc c is outside it.
EXAMPLE_IDS = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
EXAMPLE_DOCS = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
POOL = np.array([3, 2, 1, 0], dtype=np.int64)


def _align(path, key="doc_id", missing="error", direction="higher", fmt="auto"):
    records, rejects = read_records(path, fmt, key, "score")
    return align(records, rejects, POOL, EXAMPLE_IDS, EXAMPLE_DOCS, key, missing, direction, "external.x")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "tsv", "csv"])
def test_every_format_gives_each_pool_example_its_documents_score(tmp_path, suffix):
    path = tmp_path / f"s.{suffix}"
    write_scores_file(path, ["a", "b", "c"], [0.5, 2.0, 9.0])
    out = _align(path)
    assert out.example_ids.tolist() == [0, 1, 2, 3]
    assert out.scores.tolist() == [0.5, 0.5, 2.0, 2.0]
    assert out.rejects == []
    assert out.report["coverage"] == 1.0 and out.report["outside_pool"] == 1  # doc c: real, not a candidate


def test_example_id_keys_score_single_examples_and_accept_integer_strings(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("example_id,score\n0,1\n1,2\n2,3\n 3 ,4\n")
    out = _align(path, key="example_id")
    assert out.scores.tolist() == [1, 2, 3, 4]


def test_gzipped_jsonl_and_explicit_format(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for d, s in (("a", 1), ("b", 2)):
            f.write(json.dumps({"doc_id": d, "score": s}) + "\n")
    assert detect_format(path) == "jsonl"
    assert _align(path).scores.tolist() == [1, 1, 2, 2]
    other = tmp_path / "scores.txt"
    other.write_text("doc_id\tscore\na\t1\nb\t2\n")
    with pytest.raises(ValueError, match="cannot tell its format"):
        detect_format(other)
    assert _align(other, fmt="tsv").scores.tolist() == [1, 1, 2, 2]


def test_bad_records_are_rejected_with_their_reason(tmp_path):
    path = tmp_path / "s.jsonl"
    lines = [
        {"doc_id": "a", "score": 1.0},
        {"doc_id": "b", "score": 2.0},
        {"doc_id": "zzz", "score": 3.0},  # unknown to the corpus
        {"doc_id": "a", "score": "high"},  # non-numeric (its doc still has the good row)
        {"doc_id": "b", "score": float("nan")},
        {"score": 1.0},
        {"doc_id": "b"},
        {"doc_id": "b", "score": True},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n[1, 2]\n")
    out = _align(path)
    reasons = [(r.index, r.reason) for r in out.rejects]
    assert reasons == [
        (2, "unknown_id"),
        (3, "non_numeric"),
        (4, "not_finite"),
        (5, "missing_key"),
        (6, "non_numeric"),
        (7, "non_numeric"),
        (8, "bad_record"),
        (9, "bad_record"),
    ]
    assert out.report["records"] == 10 and out.report["accepted"] == 2
    assert out.report["rejected"] == {
        "bad_record": 2,
        "missing_key": 1,
        "non_numeric": 3,
        "not_finite": 1,
        "unknown_id": 1,
    }
    assert out.scores.tolist() == [1, 1, 2, 2]
    assert json.loads(out.rejects[0].raw) == {"doc_id": "zzz", "score": 3.0}  # the record's own bytes


def test_a_duplicated_id_has_no_score_and_each_copy_is_rejected(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("doc_id\tscore\na\t1\nb\t2\nb\t5\n")
    with pytest.raises(ValueError, match=r"external\.x: 2 of 4 pool examples have no usable score"):
        _align(path)
    out = _align(path, missing="drop")
    assert [(r.index, r.reason) for r in out.rejects] == [(1, "duplicate_id"), (2, "duplicate_id")]
    assert out.scores[:2].tolist() == [1, 1] and np.isnan(out.scores[2:]).all()


def test_missing_policies(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("example_id,score\n0,-3\n1,7\n")
    with pytest.raises(ValueError, match=r"set external\.x\.missing"):
        _align(path, key="example_id")
    low = _align(path, key="example_id", missing="lowest")
    assert low.scores[2] == low.scores[3] < -3  # ranked last when higher is better
    assert low.report["missing_examples"] == 2 and low.report["coverage"] == 0.5
    high = _align(path, key="example_id", missing="lowest", direction="lower")
    assert high.scores[2] > 7  # ranked last when lower is better
    drop = _align(path, key="example_id", missing="drop")
    assert np.isnan(drop.scores[2:]).all() and drop.report["missing_score"] == "nan"


def test_example_ids_must_be_integers_and_the_columns_must_exist(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("example_id,score\n0,1\n1.5,2\nx,3\n1,1\n2,1\n3,1\n")
    out = _align(path, key="example_id")
    assert [(r.index, r.reason) for r in out.rejects] == [(1, "bad_key"), (2, "bad_key")]
    with pytest.raises(ValueError, match="no column 'doc_id'"):
        _align(path, key="doc_id")
    pq.write_table(pa.table({"id": ["a"], "score": [1.0]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="no column 'doc_id'"):
        _align(tmp_path / "p.parquet")


def test_nothing_usable_fails_even_when_missing_is_drop(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("doc_id,score\nc,1\n")
    with pytest.raises(ValueError, match="no pool example has a usable score"):
        _align(path, missing="drop")


def test_heuristic_cli_writes_a_file_the_external_reader_accepts(tmp_path):
    docs = pa.table({"doc_id": ["a", "b", "c"], "text": ["the the the the", "one two three four", ""]})
    pq.write_table(docs, tmp_path / "docs.parquet")
    out = tmp_path / "demo.tsv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "winnow",
            "select",
            "heuristic-scores",
            "--docs",
            str(tmp_path / "docs.parquet"),
            "--out",
            str(out),
        ],
        check=True,
    )
    scored = _align(out)
    assert scored.scores[0] == pytest.approx(heuristic_score("the the the the"))
    assert scored.scores[2] > scored.scores[0]  # no repeats beat one word repeated
    assert heuristic_score("") == 0.0
