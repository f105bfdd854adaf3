"""The reproducibility audit on real sidecars: edited bytes, changed code, stale inputs, dirty trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import winnow.audit as audit_mod
from winnow.audit import audit, made_by_module
from winnow.provenance import write_sidecar


def _make(root: Path) -> dict[str, Path]:
    """Three artifacts: tokens ← ingest's docs, a model ← tokens, a table ← the model."""
    (root / "data").mkdir(parents=True)
    (root / "models").mkdir()
    docs = root / "data/docs.parquet"
    docs.write_bytes(b"docs v1")
    write_sidecar(docs, command="data ingest", params={"max_chars": 10})
    model = root / "models/model.safetensors"
    model.write_bytes(b"weights" * 100)
    write_sidecar(model, command="train lm", params={"steps": 3}, inputs=[docs], seed=0)
    table = root / "summary.tsv"
    table.write_text("a\tb\n1\t2\n")
    write_sidecar(table, command="eval table", params={}, inputs=[model])
    return {"docs": docs, "model": model, "table": table}


@pytest.fixture
def clean(tmp_path, monkeypatch):
    # A clean source tree, whatever the checkout running the tests is.
    monkeypatch.setattr("winnow.provenance.git_state", lambda: {"sha": "abc", "dirty": False})
    root = tmp_path / "results" / "run"
    return root, _make(root)


def test_a_fresh_run_passes(clean):
    root, _ = clean
    rows, summary = audit(root)
    assert summary["artifacts"] == 3 and summary["passed"], summary
    assert all(r["ok"] and r["sha256_now"] == r["sha256_recorded"] for r in rows)


def test_one_edited_byte_is_named(clean):
    root, files = clean
    data = bytearray(files["model"].read_bytes())
    data[17] ^= 1
    files["model"].write_bytes(bytes(data))
    _, summary = audit(root)
    assert summary["failed"]["bytes"] == ["models/model.safetensors"]
    # its consumer recorded the old hash of its input: stale, named as such
    assert summary["failed"]["inputs"] == ["summary.tsv"]
    assert not summary["passed"]


def test_a_missing_artifact_is_named(clean):
    root, files = clean
    files["docs"].unlink()
    _, summary = audit(root)
    assert summary["failed"]["missing"] == ["data/docs.parquet"]
    assert summary["failed"]["inputs"] == ["models/model.safetensors"]


def test_changed_code_names_exactly_the_artifacts_of_that_command(clean, monkeypatch):
    root, _ = clean
    real = audit_mod.command_hash
    monkeypatch.setattr(audit_mod, "command_hash", lambda c: "0" * 16 if c == "train lm" else real(c))
    rows, summary = audit(root)
    assert summary["failed"]["code"] == ["models/model.safetensors"]
    # and which module made what, from the recorded module lists
    assert made_by_module(rows, root, "winnow.train.trainer") == ["models/model.safetensors"]
    assert made_by_module(rows, root, "winnow.eval.table") == ["summary.tsv"]


def test_dirty_tree_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr("winnow.provenance.git_state", lambda: {"sha": "abc", "dirty": True})
    root = tmp_path / "results" / "run"
    _make(root)
    _, summary = audit(root)
    assert len(summary["failed"]["dirty"]) == 3


def test_cli_strict_exits_non_zero_after_writing(clean, tmp_path):
    from winnow.cli import main

    root, files = clean
    files["table"].write_text("tampered\n")
    out, summ = tmp_path / "a.tsv", tmp_path / "a.json"
    assert main(["audit", "verify", "--root", str(root), "--out", str(out), "--summary", str(summ)]) == 0
    with pytest.raises(SystemExit, match="audit failed"):
        main(["audit", "verify", "--root", str(root), "--out", str(out), "--summary", str(summ), "--strict"])
    assert json.loads(summ.read_text())["failed"]["bytes"] == ["summary.tsv"]
    assert "summary.tsv" in out.read_text()


def _scores(path: Path, values, deterministic: bool = True) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"example_id": [1, 2, 3], "score": pa.array(values, pa.float32())}), path)
    write_sidecar(path, command="scorer merge", params={}, extra={"deterministic": deterministic})


def test_compare_runs_identical_close_and_different(tmp_path, monkeypatch):
    from winnow.audit import compare_runs

    monkeypatch.setattr("winnow.provenance.git_state", lambda: {"sha": "abc", "dirty": False})
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        _scores(root / "scores/random.parquet", [0.5, 0.25, 1.0])
        (root / "report.json").write_text(json.dumps({"wall_s": 1.0 if root == a else 1.5}))  # timings differ
        write_sidecar(root / "report.json", command="eval table", params={})
    rows, summary = compare_runs(a, b)
    assert summary["passed"] and summary["identical"] == 1 and summary["judged"] == 1
    assert summary["unjudged_differing"] == ["report.json"]
    # a CPU (deterministic) step whose values moved by 1e-7: not identical, so a failure
    _scores(b / "scores/random.parquet", [0.5, 0.25, 1.0000001])
    _, summary = compare_runs(a, b)
    assert summary["failed"] == ["scores/random.parquet"]
    # the same step on a GPU (sidecar: not deterministic): within tolerance is a pass
    _scores(a / "scores/random.parquet", [0.5, 0.25, 1.0], deterministic=False)
    _scores(b / "scores/random.parquet", [0.5, 0.25, 1.0000001], deterministic=False)
    rows, summary = compare_runs(a, b)
    status = {r["artifact"]: r["status"] for r in rows}
    assert summary["passed"] and status["scores/random.parquet"] == "close"
    _scores(b / "scores/random.parquet", [0.5, 0.25, 2.0], deterministic=False)
    _, summary = compare_runs(a, b)
    assert summary["failed"] == ["scores/random.parquet"]
