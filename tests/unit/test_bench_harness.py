"""benchmarks/run.py --quick --cpu: every benchmark's smoke mode runs and yields a full table.

No assertion on time: only that each benchmark wrote its rows, every row has a finite number,
and the printed table names every figure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_BENCHES = ("train", "scorer", "less", "mates", "pds", "score_pool")


@pytest.mark.slow
def test_run_quick_cpu_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "raw"), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run.py"), "--quick", "--cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("| bench | figure |") :]
    present = [p.stem.removesuffix("_quick") for p in out.glob("*_quick.json")]
    assert set(GPU_BENCHES) <= set(present)
    for name in present:
        doc = json.loads((out / f"{name}_quick.json").read_text())
        assert doc["bench"] and doc["env"] and doc["command"] and doc["rows"]
        for r in doc["rows"]:
            assert set(r) >= {"figure", "ours", "reference", "ratio", "limit", "unit", "target", "met"}
            assert isinstance(r["ours"], (int, float)) and math.isfinite(r["ours"]), r
            for k in ("reference", "ratio"):
                assert r[k] is None or math.isfinite(r[k]), r
            assert r["figure"].replace("|", "/") in table
