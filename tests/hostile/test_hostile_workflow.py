"""Hostile configs through the real Snakemake (issue 17, items 5 and 7d): a corpus with nothing
to train on fails at ingest, and a batch size the micro-batches do not divide fails at parse time
(not when training starts, after ingest, tokenize and selection have run)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _hostile import wf

pytestmark = pytest.mark.slow


def _dry_run(tmp_path: Path, cfg: dict, *args: str):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return wf.smk(work, wf.write_config(tmp_path / "bad.yaml", cfg), "-n", *args, check=False)


@pytest.mark.parametrize(
    "block,batch,micro,args,keys",
    [
        ("train", 12, 5, (), ("train.batch_size", "train.micro_batch_size")),
        ("less", 8, 3, (), ("less.train.batch_size", "less.train.micro_batch_size")),
        # 2 GPUs for train_lm (a profile's set-resources): 12 sequences are not 2 × 4-sequence micro-batches
        ("train", 12, 4, ("--set-resources", "train_lm:gpu=2"), ("train.batch_size", "train.micro_batch_size")),
    ],
)
def test_a_batch_size_the_micro_batches_do_not_divide_fails_at_parse_time(tmp_path, block, batch, micro, args, keys):
    cfg = wf.tiny_config()
    target = cfg["train"] if block == "train" else cfg["less"]["train"]
    target["batch_size"], target["micro_batch_size"] = batch, micro
    proc = _dry_run(tmp_path, cfg, *args)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "ValueError" in text and all(k in text for k in keys), text[-3000:]
    assert "Job stats" not in text  # refused before any job was planned


def test_an_empty_corpus_fails_at_ingest_and_keeps_its_rejects(tmp_path):
    bad = tmp_path / "all_bad.jsonl"
    bad.write_text('{"text": "unterminated\n{"body": "no text here"}\n["not", "an", "object"]\n')
    cfg = wf.tiny_config()
    cfg["corpus"]["inputs"] = [str(bad)]
    work = tmp_path / "work"
    work.mkdir()
    proc = wf.smk(work, wf.write_config(tmp_path / "empty.yaml", cfg), "results/tiny/data/docs.parquet", check=False)
    assert proc.returncode != 0
    log = (work / "results/tiny/logs/ingest.log").read_text()
    assert "no document was accepted" in log and str(bad) in log, log[-3000:]
    assert "invalid_json 1" in log and "missing_text 1" in log and "not_an_object 1" in log, log[-3000:]
    kept = work / "results/tiny/logs/ingest-rejects.parquet"
    assert pq.read_table(kept).num_rows == 3
    assert not (work / "results/tiny/data/docs.parquet").exists()
    assert "ingest" in proc.stdout + proc.stderr
    json.dumps(cfg)  # the config stays plain data
