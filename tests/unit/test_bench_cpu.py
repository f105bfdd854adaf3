"""benchmarks/bench_dag.py and bench_tokenize.py in --quick mode: complete, finite rows (never wall time)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"figure", "ours", "reference", "ratio", "limit", "unit", "target", "met"}


def _run(name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def _check(result: dict, bench: str) -> None:
    assert result["bench"] == bench
    assert result["command"].startswith("python benchmarks/")
    assert {"python", "cpu_count", "snakemake", "tokenizers"} <= set(result["env"])
    assert result["rows"]
    for row in result["rows"]:
        assert set(row) == KEYS, row
        assert isinstance(row["figure"], str) and row["figure"] and isinstance(row["unit"], str)
        assert isinstance(row["ours"], (int, float)) and math.isfinite(row["ours"]) and row["ours"] > 0
        for key in ("reference", "ratio"):
            assert row[key] is None or (isinstance(row[key], (int, float)) and math.isfinite(row[key]))
        assert row["limit"] is None or isinstance(row["limit"], (int, float, str))
        assert row["met"] is None or isinstance(row["met"], bool)


def test_bench_dag_quick(tmp_path):
    result = _run("dag", tmp_path)
    _check(result, "dag")
    figures = " ".join(r["figure"] for r in result["rows"])
    assert "10,000 shards" in figures and "finished workflow" in figures
    assert all(r["reference"] is not None for r in result["rows"] if r["figure"].startswith("dry run, 1"))


def test_bench_tokenize_quick(tmp_path):
    result = _run("tokenize", tmp_path)
    _check(result, "tokenize")
    assert all(r["reference"] and r["ratio"] for r in result["rows"])
    run = result["details"]["runs"][0]
    assert run["tokens_ours"] > 0 and run["tokens_ref"] > 0
